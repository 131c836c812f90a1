"""Signed erasure receipts: what was erased, by whom, when, and where in the hash chain.

When `Purged` is recorded the erasure process asks `Receipts.issue` for one receipt per account:
the account id, requested and purged times, each service's confirmation with its counts, the
key's destruction, the hash-chain link of the `Purged` event (recomputed from the log when the
chain's read model lags) and when the last copy on the compacted profile topic is due to be
gone. It holds ids, times and counts only: nothing in it identifies the person.

It is signed with Ed25519 under the keyring's current `signing` version (lifecycle.keyring:
versions of its own, so a KEK rotation leaves it alone); the receipt names the key id, and
every version's public key stays published (`public_key_document`), so old receipts verify.
The receipt states the bound of the key's destruction: every KEK version that could have
wrapped the account's data key in some copy (a WAL segment, a backup) and the date by which
each is destroyed under the configured rotation and retention (`key.unrecoverable_by`).
The receipt's id follows from the account id alone (`schemas.contract.erasure_receipt_id`),
so the withdrawal-confirmation mail can give it. `verify_receipt` checks the signature and
that the chain still holds the purge: every link recomputes (`lifecycle.audit.verify`) and
the link at the receipt's position is the one it states.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lifecycle import event_names
from lifecycle.account_terms import AccountStatus
from lifecycle.application import Accounts
from lifecycle.audit.verify import chain_point, verify
from lifecycle.crypto import KEYS_TABLE
from lifecycle.domain import Account
from lifecycle.erasure.process import ErasureProcess
from lifecycle.erasure.status import CONFIRMED
from lifecycle.errors import AccountNotFoundError
from lifecycle.kafka.admin import TopicSettings
from lifecycle.keyring import KeyPolicy, Keyring
from lifecycle.logs import get_logger
from lifecycle.storage import read_timestamp
from projections.hashchain import HashChain
from schemas.contract import TopicNames, erasure_receipt_id

RECEIPTS_TABLE = "erasure_receipts"
SIGNING_PURPOSE = "lifecycle/erasure-receipt-signing"
ALGORITHM = "Ed25519"
KIND = "erasure-receipt"
VERSION = 1

log = get_logger(__name__)


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes that are signed: the receipt without its signature, keys sorted, compact."""
    body = {name: value for name, value in document.items() if name != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class ReceiptSigner:
    """The Ed25519 key pair of receipts (the current signing version), and the public keys of
    every version, by key id."""

    def __init__(self, seed: bytes, *, older_seeds: tuple[bytes, ...] = ()) -> None:
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._private.public_key()
        self.published: dict[str, Ed25519PublicKey] = {
            key_id_of(_raw(public)): public
            for public in (
                *(Ed25519PrivateKey.from_private_bytes(s).public_key() for s in older_seeds),
                self.public_key,
            )
        }

    @classmethod
    def of(cls, accounts: Accounts) -> ReceiptSigner:
        return cls.from_keyring(accounts.keyring)

    @classmethod
    def from_keyring(cls, keyring: Keyring) -> ReceiptSigner:
        current = keyring.current_version("signing")
        older = tuple(
            keyring.secret("signing", v.version)
            for v in keyring.versions("signing")
            if v.live and v.version != current
        )
        return cls(keyring.secret("signing", current), older_seeds=older)

    def public_bytes_of(self, key_id: str) -> bytes | None:
        public = self.published.get(key_id)
        return None if public is None else _raw(public)

    def signed(self, receipt: dict[str, Any]) -> bool:
        """Whether one of this service's published signing keys signed the receipt."""
        signature = receipt.get("signature")
        key_id = str(signature.get("key_id", "")) if isinstance(signature, dict) else ""
        public = self.public_bytes_of(key_id)
        return public is not None and signature_holds(receipt, public)

    @property
    def public_bytes(self) -> bytes:
        return self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_bytes)

    def sign(self, body: dict[str, Any]) -> dict[str, Any]:
        signature = self._private.sign(canonical(body))
        return {
            **body,
            "signature": {
                "algorithm": ALGORITHM,
                "key_id": self.key_id,
                "value": base64.b64encode(signature).decode(),
            },
        }

    def public_key_document(self) -> dict[str, Any]:
        """The current key, and every published key (older receipts name older ones)."""
        return {
            **_public_key(self.public_key),
            "signed_bytes": "the receipt without `signature`, as JSON with sorted keys, "
            "separators ',' and ':', UTF-8",
            "keys": [_public_key(public) for public in self.published.values()],
        }


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _public_key(public: Ed25519PublicKey) -> dict[str, str]:
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id_of(_raw(public)),
        "public_key": base64.b64encode(_raw(public)).decode(),
        "pem": public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode(),
    }


def key_id_of(public_bytes: bytes) -> str:
    return hashlib.sha256(public_bytes).hexdigest()[:16]


def signature_holds(receipt: dict[str, Any], public_bytes: bytes) -> bool:
    signature = receipt.get("signature")
    if not isinstance(signature, dict) or signature.get("algorithm") != ALGORITHM:
        return False
    try:
        value = base64.b64decode(str(signature.get("value", "")), validate=True)
        Ed25519PublicKey.from_public_bytes(public_bytes).verify(value, canonical(receipt))
    except (InvalidSignature, ValueError):
        return False
    return True


class Receipts:
    """Issues, stores and finds the signed receipts, in the lifecycle database."""

    def __init__(
        self,
        erasure: ErasureProcess,
        *,
        signer: ReceiptSigner | None = None,
        topics: TopicNames | None = None,
        topic_settings: TopicSettings | None = None,
        key_policy: KeyPolicy | None = None,
    ) -> None:
        self.erasure = erasure
        self.key_policy = key_policy or KeyPolicy()
        self.accounts = erasure.accounts
        self.database = erasure.database
        self._signer = signer
        self.topics = topics or TopicNames()
        self.topic_settings = topic_settings or TopicSettings()
        self.chain = HashChain(self.database)
        self.table = self.database.table(RECEIPTS_TABLE)

    @property
    def signer(self) -> ReceiptSigner:
        """The keyring's signing versions as they are now: a new version signs at once."""
        return self._signer or ReceiptSigner.of(self.accounts)

    def issue(self, account_id: UUID) -> dict[str, Any] | None:
        """The account's receipt, signed and stored once; None while it is not purged."""
        return self.get_or_issue(account_id)[0]

    def get_or_issue(self, account_id: UUID) -> tuple[dict[str, Any] | None, bool]:
        """The account's receipt, and whether this call signed it."""
        found = self.get(erasure_receipt_id(account_id))
        if found is not None:
            return found, False
        try:
            account = self.accounts.load_for_audit(account_id)
        except AccountNotFoundError:
            return None, False
        if account.status is not AccountStatus.PURGED or account.purged_at is None:
            return None, False
        receipt = self.signer.sign(self._body(account))
        db = self.database
        with db.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO {self.table} "
                "(receipt_id, account_id, chain_position, chain_link, body) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (
                    db.id_param(erasure_receipt_id(account_id)),
                    db.id_param(account_id),
                    receipt["hash_chain"]["position"],
                    receipt["hash_chain"]["link"],
                    json.dumps(receipt, sort_keys=True),
                ),
            )
        log.info(
            "erasure.receipt_issued",
            account_id=str(account_id),
            receipt_id=receipt["receipt_id"],
            chain_position=receipt["hash_chain"]["position"],
        )
        return self.get(erasure_receipt_id(account_id)), True

    def owed(self) -> list[UUID]:
        """Accounts every erasing service confirmed that have no receipt stored (a crash
        between the purge and its receipt); `issue` skips one not purged yet."""
        db = self.database
        services = list(self.erasure.services)
        where, params = db.any_of("c.service", services)
        with db.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT c.account_id FROM {self.erasure.table} AS c "
                f"WHERE c.outcome = %s AND {where} AND NOT EXISTS "
                f"(SELECT 1 FROM {self.table} AS r WHERE r.account_id = c.account_id) "
                "GROUP BY c.account_id HAVING COUNT(DISTINCT c.service) = %s",
                [CONFIRMED, *params, len(services)],
            ).fetchall()
        return [db.to_uuid(account_id) for (account_id,) in rows]

    def get(self, receipt_id: UUID) -> dict[str, Any] | None:
        db = self.database
        with db.transaction(commit=False) as cursor:
            row = cursor.execute(
                f"SELECT body FROM {self.table} WHERE receipt_id = %s", (db.id_param(receipt_id),)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def _body(self, account: Account) -> dict[str, Any]:
        account_id = account.id
        assert account.purged_at is not None
        position, version = self._purge_notification(account_id)
        # Without a running chain projection, the last receipt's link saves a walk from genesis.
        point = chain_point(
            self.chain, self.accounts.recorder, position, known=self._link_before(position)
        )
        assert point is not None, "the Purged event is stored, so the log has its notification"
        rows = self.erasure.records.services_of(account_id)
        bound = timedelta(
            milliseconds=self.topic_settings.profile_segment_ms
            + self.topic_settings.profile_max_compaction_lag_ms
        )
        return {
            "kind": KIND,
            "version": VERSION,
            "receipt_id": str(erasure_receipt_id(account_id)),
            "account_id": str(account_id),
            "requested_at": _iso(account.withdrawn_at),
            # A code (never the member's comment): what reshred re-records after a restore.
            "withdrawal_reason": (account.withdrawal or {}).get("reason"),
            "purged_at": _iso(account.purged_at),
            "issued_at": _iso(datetime.now(UTC)),
            "services": {
                service: {
                    "outcome": rows[service].outcome,
                    "rows_removed": rows[service].rows_removed,
                    "confirmation_id": rows[service].confirmation_id,
                    "recorded_at": _iso(rows[service].recorded_at),
                }
                for service in self.erasure.services
                if service in rows
            },
            "key": self._key_state(account_id, account.purged_at),
            "hash_chain": {
                "position": point.position,
                "originator_version": version,
                "link": point.link,
            },
            "profile_topic": {
                "topic": self.topics.profile,
                "bound_ms": int(bound.total_seconds() * 1000),
                "last_copy_gone_by": _iso(account.purged_at + bound),
            },
        }

    def _link_before(self, position: int) -> tuple[int, str] | None:
        """The nearest link an earlier receipt computed before `position`."""
        with self.database.transaction(commit=False) as cursor:
            row = cursor.execute(
                f"SELECT chain_position, chain_link FROM {self.table} WHERE chain_position < %s "
                "ORDER BY chain_position DESC LIMIT 1",
                (position,),
            ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def _purge_notification(self, account_id: UUID) -> tuple[int, int]:
        """The notification id and version of the account's stored `Purged` event."""
        db = self.database
        position = db.dialect.events_position
        with db.transaction(commit=False) as cursor:
            row = cursor.execute(
                f"SELECT {position}, originator_version FROM {db.events_table} "
                "WHERE originator_id = %s AND topic = %s",
                (db.id_param(account_id), event_names.PURGED),
            ).fetchone()
        assert row is not None, "called for purged accounts only"
        return int(row[0]), int(row[1])

    def _key_state(self, account_id: UUID, purged_at: datetime) -> dict[str, Any]:
        db = self.database
        with db.transaction(commit=False) as cursor:
            kept = cursor.execute(
                f"SELECT COUNT(*) FROM {db.table(KEYS_TABLE)} WHERE account_id = %s",
                (db.id_param(account_id),),
            ).fetchone()
            tombstone = cursor.execute(
                f"SELECT destroyed_at FROM {db.table('destroyed_keys')} WHERE account_id = %s",
                (db.id_param(account_id),),
            ).fetchone()
        # Every KEK version alive at the purge may have wrapped this key in some copy (the
        # current one in the database's WAL, older ones in backups from before a rotation).
        keyring = self.accounts.keyring
        alive = [
            v
            for v in keyring.versions("kek")
            if v.created_at <= purged_at and (v.destroyed_at is None or v.destroyed_at > purged_at)
        ]
        bounds = [self.key_policy.destroy_by(v) for v in alive]
        bound = None if None in bounds else max((b for b in bounds if b), default=None)
        wrapping = [
            {"version": v.version, "destroyed_by": _iso(b)}
            for v, b in zip(alive, bounds, strict=True)
        ]
        return {
            "destroyed": bool(tombstone) and not (kept and kept[0]),
            "destroyed_at": _iso(tombstone[0]) if tombstone else None,
            "wrapped_under": keyring.current_version("kek"),
            "wrapping_keys": wrapping,
            "unrecoverable_by": _iso(bound),
        }


def verify_receipt(receipt: dict[str, Any], receipts: Receipts) -> dict[str, Any]:
    """Signature, id, and the chain: every link recomputes and the purge is where it says."""
    problems: list[str] = []
    if not receipts.signer.signed(receipt):
        problems.append("signature does not verify with any of this service's receipt keys")
    try:
        account_id = UUID(str(receipt.get("account_id")))
        if str(erasure_receipt_id(account_id)) != receipt.get("receipt_id"):
            problems.append("receipt id does not follow from the account id")
        chain = receipt["hash_chain"]
        position, version, stated = (
            int(chain["position"]),
            int(chain["originator_version"]),
            str(chain["link"]),
        )
    except (KeyError, TypeError, ValueError):
        return {"ok": False, "problems": [*problems, "receipt is malformed"]}
    verification = verify(receipts.chain, receipts.accounts.recorder, keep=1)
    if not verification.ok:
        problems.append(f"hash chain broken: {verification.first[0].describe()}")
    point = chain_point(receipts.chain, receipts.accounts.recorder, position)
    if point is None:
        problems.append(f"notification {position} is no longer in the log")
    elif (point.originator_id, point.originator_version) != (str(account_id), version):
        problems.append(f"notification {position} is not this account's Purged event")
    elif point.link != stated:
        problems.append(f"the chain's link at notification {position} differs from the receipt")
    return {
        "ok": not problems,
        "receipt_id": receipt.get("receipt_id"),
        "account_id": str(account_id),
        "chain_position": position,
        "chain_checked": verification.checked,
        "problems": problems,
    }


def _iso(value: datetime | str | None) -> str | None:
    """UTC RFC 3339; SQLite hands timestamps back as naive UTC text."""
    moment = read_timestamp(value)
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
