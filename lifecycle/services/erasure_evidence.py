"""Evidence of erasures, for auditors and ops (`lifecycle audit reshred|verify-receipt|
erasure-proof`): re-shred after a backup restore, check a signed receipt, prove one member is
gone everywhere. The tools are in `lifecycle.audit` (reshred, receipt, proof); this says what a
caller may ask and what comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from consumers.store import StoreConfigError, check_identifier
from lifecycle.application import Accounts
from lifecycle.audit.proof import Stores, erasure_proof
from lifecycle.audit.receipt import Receipts, verify_receipt
from lifecycle.audit.reshred import evidence
from lifecycle.erasure.queries import ErasureStatusQuery
from lifecycle.errors import AccountNotFoundError, InvalidCommandError
from lifecycle.kafka.security import KafkaSecurity
from lifecycle.storage import Database
from schemas.contract import ERASING_SERVICES, TopicNames, erasure_receipt_id

HEX = set("0123456789abcdef")
# A reference service's store, when it exists (looking creates none): service, schema or None.
StoreOf = Callable[[str, str | None], Database | None]


@dataclass(frozen=True)
class Reshredded:
    purges_recorded_again: int
    keys_destroyed: int
    receipts_issued_again: int
    receipts_refused: int


@dataclass(frozen=True)
class Broker:
    """Where the proof reads topics, when a broker is configured."""

    topics: TopicNames
    bootstrap: str | None = None
    security: KafkaSecurity | None = None


class ErasureEvidence:
    def __init__(
        self,
        accounts: Accounts,
        receipts: Receipts,
        status: ErasureStatusQuery,
        store_of: StoreOf | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.accounts = accounts
        self.receipts = receipts
        self.status = status
        # Without them the proof reaches the lifecycle database only (no service store, no topic).
        self.store_of: StoreOf = store_of or (lambda name, schema: None)
        self.broker = broker or Broker(TopicNames())

    def reshred(self, receipt_paths: Iterable[Path]) -> Reshredded:
        """After a restore: every account known purged (a receipt this service signed, or the
        destroyed-keys list; never a topic record) back to Purged without its key, and a
        receipt the restore lost signed again for the purge as now recorded."""
        found = evidence(self.accounts, receipt_paths, self.receipts.signer)
        result = self.accounts.reshred(found.known)
        issued = sum(self.receipts.get_or_issue(known)[1] for known in sorted(found.known))
        return Reshredded(
            result["purges_recorded_again"], result["keys_destroyed"], issued, found.refused
        )

    def receipt(self, receipt_id: UUID) -> dict[str, Any]:
        """A stored receipt, by its id."""
        found = self.receipts.get(receipt_id)
        if found is None:
            raise AccountNotFoundError("receipt_not_found", detail="no erasure receipt was issued")
        return found

    def receipt_of(self, account_id: UUID) -> dict[str, Any]:
        """A purged account's receipt (its id follows from the account's)."""
        return self.receipt(erasure_receipt_id(account_id))

    def receipt_key(self) -> dict[str, Any]:
        """The public key that signs new receipts, and every key that ever signed one."""
        return self.receipts.signer.public_key_document()

    def verify_receipt(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Its signature, its id, and the hash chain still holding the purge it states."""
        return verify_receipt(dict(document), self.receipts)

    def prove(
        self, account_id: UUID, digests: Iterable[str], schemas: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Walk the registry of resting places for the former values, given only as SHA-256
        hex digests; `schemas` names where a service keeps its tables (by default, at the
        schema named after it), and a store that does not exist is reported as not reached."""
        wanted = {d.strip().lower() for d in digests if d.strip()}
        if not wanted or any(len(d) != 64 or not set(d) <= HEX for d in wanted):
            raise InvalidCommandError(
                "digests_required", detail="give the former values as SHA-256 hex digests"
            )
        unknown = set(schemas or {}) - set(ERASING_SERVICES)
        if unknown:
            raise InvalidCommandError(
                "unknown_service",
                detail=f"{', '.join(sorted(unknown))}: not one of {', '.join(ERASING_SERVICES)}",
            )
        for schema in (schemas or {}).values():
            try:
                check_identifier(schema)
            except StoreConfigError as error:
                raise InvalidCommandError("invalid_schema", detail=str(error)) from None
        databases: dict[str, Database] = {"lifecycle": self.accounts.database}
        try:
            for name in ERASING_SERVICES:
                store = self.store_of(name, (schemas or {}).get(name) or None)
                if store is not None:
                    databases[name] = store
            broker = self.broker
            stores = Stores(databases, broker.topics, broker.bootstrap, broker.security)
            return erasure_proof(self.accounts, self.status, account_id, wanted, stores)
        finally:
            for name, database in databases.items():
                if name != "lifecycle":
                    database.close()
