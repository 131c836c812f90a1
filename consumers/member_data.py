"""The steps every service holding a member's data shares: erase, confirm, tombstone, export.

A service subclasses `MemberDataHandler`, names its `service` and its `personal_tables` (each
with an `account_id` column), implements `export(cursor, account_id)` (its section of a data
export) and handles its own records in `handle_records`. The kit's part, inside its transaction
(`consumers.kit`), for every run of records of one kind (`runs`):

- WithdrawalRequested: lock the accounts, `tombstone` them (their ids only, so later writes
  are refused), `erase` what they hold, and confirm on the service's own topic with the rows
  removed and the withdrawal it answers (`erase_and_confirm`);
- Purged: erase again whatever arrived since (a record still in flight at the withdrawal);
  a service's own record that only erases (`only_erases`) shares its runs;
- ExportRequested: the service's section, sealed to the export's key, as its part
  (`consumers.exporting`);
- anything else: the service's `handle_records`; a record its `kind_of` calls OTHER (not the
  service's) is `ignored`, with no statement.

A batch's records of different accounts commute (everything a service keeps is per account,
written under the account's lock), so `runs` groups the batch by kind, keeping each account's
records in their order: a poll of interleaved registrations, scouts, profiles and withdrawals
is a few runs of a few statements each, not one run per change of kind.

`erase` deletes the accounts' rows from `personal_tables` in one statement per table and
destroys their keys in the service's sealed store (`consumers.sealed`), so a value sealed
under them (an address, a chat message) is unreadable everywhere, backups included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar
from uuid import UUID

from pydantic import BaseModel

from consumers.exporting import EXPORT, answer_requests
from consumers.handler import AccountWithdrawnError, Handler, HandlerResult
from consumers.sealed import SealedValues
from consumers.store import Outgoing
from lifecycle.storage import Cursor, Database, lock_keys
from schemas.contract import (
    Envelope,
    ErasureConfirmedV2,
    ErasureFailureCode,
    PurgedV1,
    TopicNames,
    WithdrawalRequestedV1,
    encode_erasure_confirmed,
)
from schemas.data_export import ExportRequestedV1

WITHDRAWAL = "withdrawal"
PURGED = "purged"
OTHER = "other"


class MemberDataHandler(Handler):
    """The kit's part of a downstream service's handler; see the module docstring."""

    service: ClassVar[str]
    # The table whose rows say "withdrawn: refuse new data" (account ids only).
    tombstone_table: ClassVar[str] = "withdrawn_accounts"
    # Kinds (`kind_of`) whose runs may name one account more than once (inserts that do not
    # read each other); any other run is cut where an account repeats.
    repeatable_kinds: ClassVar[frozenset[str]] = frozenset()
    # The version of the service's section model (`schemas.data_export.SECTION_MODELS`).
    section_version: ClassVar[int] = 1

    def __init__(
        self, database: Database, topics: TopicNames, sealed: SealedValues | None = None
    ) -> None:
        self.database = database
        self.topics = topics
        self.sealed = sealed
        self.tombstones = Tombstones(database, self.service, self.tombstone_table)

    # What a service may override

    def kind_of(self, envelope: Envelope) -> str:
        """The kind of record, for runs: the kit's own kinds, else the service's."""
        return OTHER

    def export(self, cursor: Cursor, account_id: UUID) -> BaseModel:
        """Everything the service holds about the account, as its section of a data export
        (read in the kit's transaction, the account locked). Raise `ExportFailedError` when
        it cannot be produced."""
        raise NotImplementedError(f"{type(self).__name__} does not export")

    def handle_records(
        self, cursor: Cursor, kind: str, envelopes: Sequence[Envelope]
    ) -> list[HandlerResult]:
        """The service's own records: a run of one kind, in order (the accounts locked)."""
        return [HandlerResult(outcome="ignored") for _ in envelopes]

    def on_withdrawals(self, cursor: Cursor, envelopes: Sequence[Envelope]) -> list[HandlerResult]:
        """A run of withdrawals (distinct accounts, locked): tombstone, erase and confirm."""
        versions = {_account(e): withdrawal_version_of(e) for e in envelopes}
        self.tombstone(cursor, list(versions))
        confirmed = self.erase_and_confirm(cursor, versions)
        return [confirmed[_account(e)] for e in envelopes]

    def record_erasure(self, cursor: Cursor, removed: dict[UUID, int]) -> dict[UUID, int]:
        """Rows each confirmation reports (by default those just removed): a service that
        erased in several steps adds the earlier ones here."""
        return removed

    def tombstone(self, cursor: Cursor, account_ids: Sequence[UUID]) -> None:
        """Refuse new data for these accounts from now on (their ids only are kept)."""
        self.tombstones.add(cursor, account_ids)

    # The shared steps

    def lock(self, cursor: Cursor, account_ids: Sequence[UUID]) -> None:
        self.tombstones.lock(cursor, account_ids)

    def withdrawn_among(self, cursor: Cursor, account_ids: Sequence[UUID]) -> set[UUID]:
        return self.tombstones.among(cursor, account_ids)

    def erase(self, cursor: Cursor, account_ids: Sequence[UUID]) -> dict[UUID, int]:
        """Delete what the accounts hold, and their sealed keys (one statement on PostgreSQL);
        the rows removed of each."""
        removed = dict.fromkeys(account_ids, 0)
        if not removed:
            return removed
        db = self.database
        where, params = db.any_of("account_id", [str(a) for a in removed])
        tables = [db.table(table) for table in self.personal_tables]
        keys = [] if self.sealed is None else [self.sealed.table]  # `SealedValues.destroy`'s
        for account in db.dialect.delete_accounts(
            cursor, [*tables, *keys], where, params, counted=len(tables)
        ):
            removed[UUID(account)] += 1
        return removed

    def erase_and_confirm(
        self, cursor: Cursor, versions: dict[UUID, int | None]
    ) -> dict[UUID, HandlerResult]:
        """Erase, then each account's confirmation naming the withdrawal it answers."""
        totals = self.record_erasure(cursor, self.erase(cursor, list(versions)))
        return {
            account_id: HandlerResult(
                (
                    erasure_confirmation(
                        self.topics, account_id, self.service, totals[account_id], version
                    ),
                ),
                outcome="erased",
            )
            for account_id, version in versions.items()
        }

    # The handler the kit calls

    def handle(self, envelope: Envelope, cursor: Cursor) -> HandlerResult:
        return self.handle_many([envelope], cursor)[0]

    def handle_many(self, envelopes: Sequence[Envelope], cursor: Cursor) -> list[HandlerResult]:
        """The accounts locked, then `handle_runs`."""
        self.lock(cursor, self.written_accounts(envelopes))
        return self.handle_runs(envelopes, cursor)

    def written_accounts(self, envelopes: Sequence[Envelope]) -> list[UUID]:
        """The accounts of the records not ignored: those `handle_runs` may write about."""
        return [_account(e) for e in envelopes if self._kind(e) != OTHER]

    def handle_runs(self, envelopes: Sequence[Envelope], cursor: Cursor) -> list[HandlerResult]:
        """Runs of one kind (`runs`), each in a few statements, the accounts locked by the
        caller; the results in the order of `envelopes`."""
        kinds = [self._kind(e) for e in envelopes]
        results: list[HandlerResult | None] = [None] * len(envelopes)
        for kind, indexes in runs(kinds, [_account(e) for e in envelopes], self.repeatable_kinds):
            run = [envelopes[i] for i in indexes]
            if kind == OTHER:
                done = [HandlerResult(outcome="ignored") for _ in run]
            elif kind == WITHDRAWAL:
                done = self.on_withdrawals(cursor, run)
            elif kind == PURGED:
                removed = self.erase(cursor, [_account(e) for e in run])
                done = [self.erased(e, removed[_account(e)]) for e in run]
            elif kind == EXPORT:
                done = answer_requests(self, cursor, run)
            else:
                done = self.handle_records(cursor, kind, run)
            for index, result in zip(indexes, done, strict=True):
                results[index] = result
        handled = [result for result in results if result is not None]
        assert len(handled) == len(envelopes), "every record is in one run"
        return handled

    def only_erases(self, envelope: Envelope) -> bool:
        """True for a record of the service's own that erases what the account holds and
        nothing else (mail: the profile's tombstone): it shares Purged's runs."""
        return False

    def erased(self, envelope: Envelope, rows_removed: int) -> HandlerResult:
        """The result of a record of Purged's runs (`only_erases`), given the rows removed."""
        return HandlerResult(outcome="purged")

    def _kind(self, envelope: Envelope) -> str:
        if isinstance(envelope.data, WithdrawalRequestedV1):
            return WITHDRAWAL
        if isinstance(envelope.data, PurgedV1) or self.only_erases(envelope):
            return PURGED
        if isinstance(envelope.data, ExportRequestedV1):
            return EXPORT
        return self.kind_of(envelope)


def runs(
    kinds: Sequence[str], accounts: Sequence[UUID], repeatable: frozenset[str] = frozenset()
) -> list[tuple[str, list[int]]]:
    """The records (by index) in runs of one kind, to be handled in the order given: each
    account's records stay in their order, a run names an account at most once unless its
    kind is `repeatable`, and OTHER records (ignored) are one run, ordering nothing.

    Each record joins the first run of its kind after its account's last record (the run of
    that record itself when both are of one repeatable kind), else starts a run at the end:
    never more runs than cutting the batch at every change of kind.
    """
    found: list[tuple[str, list[int]]] = []
    ignored = [index for index, kind in enumerate(kinds) if kind == OTHER]
    last: dict[UUID, int] = {}  # account -> the run of its latest record
    for index, (kind, account) in enumerate(zip(kinds, accounts, strict=True)):
        if kind == OTHER:
            continue
        after = last.get(account, -1)
        if after >= 0 and not (found[after][0] == kind and kind in repeatable):
            after += 1
        at = next((i for i in range(max(after, 0), len(found)) if found[i][0] == kind), None)
        if at is None:
            at = len(found)
            found.append((kind, []))
        found[at][1].append(index)
        last[account] = at
    return [(OTHER, ignored), *found] if ignored else found


@dataclass(frozen=True)
class Tombstones:
    """A service's withdrawn accounts (ids only) and its per-account lock: what every write
    path checks before keeping anything new about an account."""

    database: Database
    service: str
    table: str = "withdrawn_accounts"

    def lock(self, cursor: Cursor, account_ids: Sequence[UUID]) -> None:
        """Serialise every write about these accounts in this service until the commit."""
        lock_keys(self.database, cursor, [f"{self.service}:{a}" for a in account_ids])

    def among(self, cursor: Cursor, account_ids: Sequence[UUID]) -> set[UUID]:
        """Which of these accounts are withdrawn."""
        if not account_ids:
            return set()
        where, params = self.database.any_of("account_id", [str(a) for a in account_ids])
        rows = cursor.execute(
            f"SELECT account_id FROM {self.database.table(self.table)} WHERE {where}", params
        ).fetchall()
        return {UUID(account) for (account,) in rows}

    def check_not_withdrawn(self, cursor: Cursor, account_id: UUID) -> None:
        """Lock the account and refuse (AccountWithdrawnError) if it is withdrawn."""
        self.lock(cursor, [account_id])
        if self.among(cursor, [account_id]):
            raise AccountWithdrawnError()

    def add(self, cursor: Cursor, account_ids: Sequence[UUID]) -> None:
        if account_ids:
            cursor.insert_rows(
                self.database.table(self.table),
                (("account_id", "text"),),
                [(str(a),) for a in dict.fromkeys(account_ids)],
                suffix="ON CONFLICT DO NOTHING",
            )


def _account(envelope: Envelope) -> UUID:
    return envelope.account_id


# The records a service sends the lifecycle service


def erasure_confirmation(
    topics: TopicNames,
    account_id: UUID,
    service: str,
    rows_removed: int,
    withdrawal_version: int | None = None,
) -> Outgoing:
    """The record that tells the lifecycle service this one holds nothing more (ids only), on
    the service's own confirmation topic: only its principal may write there, and the erasure
    process believes a confirmation for the topic it came on, not for what it says. Version 2
    (`erased`, naming the withdrawal it answers); the lifecycle service reads version 1 too."""
    return _on_own_topic(
        topics,
        ErasureConfirmedV2(
            account_id=account_id,
            service=service,
            rows_removed=rows_removed,
            confirmed_at=datetime.now(UTC),
            withdrawal_version=withdrawal_version,
        ),
    )


def erasure_failure(
    topics: TopicNames,
    account_id: UUID,
    service: str,
    failure_code: ErasureFailureCode,
    withdrawal_version: int | None = None,
) -> Outgoing:
    """The record that tells the lifecycle service this one could not erase, and why (a code
    from the contract's fixed list): ops see the erasure as errored and may ask again; send
    `erasure_confirmation` once the data is gone."""
    return _on_own_topic(
        topics,
        ErasureConfirmedV2(
            account_id=account_id,
            service=service,
            rows_removed=0,
            confirmed_at=datetime.now(UTC),
            outcome="failed",
            failure_code=failure_code,
            withdrawal_version=withdrawal_version,
        ),
    )


def _on_own_topic(topics: TopicNames, payload: ErasureConfirmedV2) -> Outgoing:
    """A confirmation or failure, on the confirmation topic of the service it names."""
    return Outgoing(topics.erasure_confirmed(payload.service), encode_erasure_confirmed(payload))


def withdrawal_version_of(envelope: Envelope) -> int | None:
    """The account's version at a lifecycle record (its `ce_id` is `<account_id>:<version>`,
    a retry's with a suffix after it)."""
    return version_in(envelope.id)


def version_in(ce_id: str) -> int | None:
    """The version in a lifecycle record's `ce_id` (`<account_id>:<version>[:suffix]`)."""
    parts = ce_id.split(":")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
