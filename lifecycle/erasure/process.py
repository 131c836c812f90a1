"""The erasure process: confirmations in, `Purged` out.

An erasure is complete when every service in `schemas.contract.ERASING_SERVICES` confirmed
it; the confirmation that completes it records `Purged` through the application. Confirmations
arrive from the consumer kit through `lifecycle.erasure.intake`; they are recorded in the
confirmations table (`lifecycle.erasure.records`), which migrations create, so building an
`ErasureProcess` runs no DDL.

A confirmation is verified, not believed. The intake attributes it to a service by the topic
it came on (each service's own, writable only by its principal under Kafka ACLs), never by its
payload or `ce_source`; and `verified` accepts it only for an account that is withdrawing,
produced after that withdrawal (`check_confirmation`). Anything else is refused:
logged (ids and a reason, no values), counted per service and reason in `erasure_refusals`
(`lifecycle_erasure_confirmations_refused` on /metrics) and marked handled, never
dead-lettered. A refusal is the process working, not a fault of the record we could fix:
re-driving it would be refused again, and a forger must not be able to fill ops' dead letters.

Once `Purged` is recorded, the process hands the account to its `receipts` (a signed erasure
receipt, see lifecycle.audit.receipt; the builder attaches it, as the receipt reads the hash
chain, a read model above this layer). The hand-over runs on every repeat of the completing
confirmation too, so a crash between the purge and the receipt is mended by the redelivery.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

from lifecycle.account_terms import AccountStatus
from lifecycle.application import Accounts
from lifecycle.domain import Account
from lifecycle.erasure.records import ErasureRecords, ErasureRefusals
from lifecycle.erasure.status import CONFIRMED
from lifecycle.errors import AccountNotFoundError
from lifecycle.logs import get_logger
from lifecycle.storage import Cursor, lock_keys
from schemas.contract import ERASING_SERVICES

# Purges of one batch run side by side (their saves share group commits), this many at once:
# well below the application's connection pool (LIFECYCLE_DATABASE_POOL_SIZE, 10).
PURGE_WORKERS = 6

log = get_logger(__name__)

# How far a confirmation's own time may precede the withdrawal it answers (two clocks).
CLOCK_SKEW = timedelta(minutes=5)
# Accounts whose withdrawal time `verified` remembers (the latest seen), so an account's later
# confirmations, mostly in later polls, do not load it again.
WITHDRAWALS_REMEMBERED = 10_000


class Refused(Exception):  # noqa: N818 - a verdict, caught where confirmations are checked
    """A confirmation the process does not believe; `reason` is a stable, data-free code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_confirmation(confirmed_at: datetime | None, account: Account | None) -> None:
    """Refused unless the account is withdrawing and the confirmation came after that
    withdrawal; a repeat once the account is purged passes (recording it changes nothing)."""
    if account is None:
        raise Refused("account_unknown")
    if account.status is AccountStatus.ACTIVE or account.withdrawn_at is None:
        raise Refused("account_not_withdrawing")
    if account.status is AccountStatus.PURGED:
        return
    if confirmed_at is not None and confirmed_at < account.withdrawn_at - CLOCK_SKEW:
        raise Refused("before_withdrawal")


@dataclass(frozen=True)
class Confirmation:
    """One downstream service's word on one account; `confirmation_id` makes repeats harmless."""

    account_id: UUID
    service: str
    outcome: str
    rows_removed: int
    confirmation_id: str
    error_code: str | None = None
    # When the service says it confirmed; checked against the withdrawal's time.
    confirmed_at: datetime | None = None


class PurgeReceipts(Protocol):
    """What is told of each purge: `issue` is idempotent (a repeat returns what was issued)."""

    def issue(self, account_id: UUID) -> object: ...


class ErasureProcess:
    """Tracks per-service confirmations beside the event store and records `Purged`."""

    def __init__(
        self,
        accounts: Accounts,
        services: tuple[str, ...] = ERASING_SERVICES,
        receipts: PurgeReceipts | None = None,
    ) -> None:
        self.accounts = accounts
        self.database = accounts.database
        self.services = services
        self.receipts = receipts
        self.records = ErasureRecords(self.database)
        self.table = self.records.confirmations
        self.refusals = ErasureRefusals(self.database)
        # Account -> its withdrawal's time, once a load showed it withdrawing or purged: a
        # withdrawal is final and its time never changes, so a confirmation from after it is
        # believed without another load (one before it is loaded again, to refuse it).
        self._withdrawn: OrderedDict[UUID, datetime] = OrderedDict()

    def is_complete(self, confirmed: set[str]) -> bool:
        """What completes an erasure: every erasing service confirmed."""
        return confirmed == set(self.services)

    def handle(self, confirmation: Confirmation) -> bool:
        """Record one confirmation; returns True when this one completed the erasure."""
        return confirmation.account_id in self.handle_many([confirmation])

    def handle_many(
        self,
        confirmations: Sequence[Confirmation],
        *,
        verified: bool = False,
        after_purges: bool = True,
    ) -> set[UUID]:
        """Record confirmations, then purge every erasure they completed; returns the accounts
        purged now. Each is `verified` first, unless the caller says it did that already.
        Without `after_purges` the caller runs `Accounts.after_purges` itself (the intake:
        through the consumer kit, once the batch's offsets are committed).

        PostgreSQL: one transaction records them all and stays open while the purges run
        side by side (their saves share the application's group commit), so a poll's
        erasures cost one commit, not one each; a purge that fails undoes the batch's
        confirmations, and the kit's retry of each record alone finds the one at fault.
        SQLite has one writer at a time: each confirmation is recorded, then acted on, alone.
        """
        if verified:
            known = list(confirmations)
        else:
            known, refused = self.verified(confirmations)
            if refused:
                self.refuse(refused)
        if self.database.dialect.concurrent_writers:
            purged = self._record_and_purge(known) if known else set()
        else:
            purged = set()
            for confirmation in known:
                purged |= self._record_and_purge([confirmation])
        if purged and after_purges:
            # Once per batch, after its commit: no copy of the destroyed keys left behind.
            self.accounts.after_purges()
        return purged

    def verified(
        self, confirmations: Sequence[Confirmation]
    ) -> tuple[list[Confirmation], list[tuple[Confirmation, str]]]:
        """The confirmations that answer a withdrawal, and the others with the reason each is
        refused (for the caller to `refuse`, with any of its own, in one transaction). One
        load per account: the event store, not a read model, decides. An account this
        process saw withdrawing before is not loaded again to accept a confirmation
        (`_withdrawn`)."""
        accepted: list[Confirmation] = []
        refused: list[tuple[Confirmation, str]] = []
        accounts: dict[UUID, Account | None] = {}
        for confirmation in confirmations:
            account_id = confirmation.account_id
            try:
                if confirmation.service not in self.services:
                    raise Refused("unknown_service")
                if account_id not in accounts and self._after_withdrawal(confirmation):
                    accepted.append(confirmation)
                    continue
                if account_id not in accounts:
                    accounts[account_id] = self._account(account_id)
                check_confirmation(confirmation.confirmed_at, accounts[account_id])
            except Refused as refusal:
                refused.append((confirmation, refusal.reason))
            else:
                accepted.append(confirmation)
        return accepted, refused

    def _after_withdrawal(self, confirmation: Confirmation) -> bool:
        """True when the account was seen withdrawing and the confirmation came after it:
        what `check_confirmation` would accept after a load, whatever has happened since."""
        withdrawn_at = self._withdrawn.get(confirmation.account_id)
        if withdrawn_at is None:
            return False
        confirmed_at = confirmation.confirmed_at
        return confirmed_at is None or confirmed_at >= withdrawn_at - CLOCK_SKEW

    def refuse(self, refused: Sequence[tuple[Confirmation, str]]) -> None:
        """Log and count refusals (ids, service and reason only), in one transaction."""
        for confirmation, reason in refused:
            log.warning(
                "erasure.confirmation_refused",
                account_id=str(confirmation.account_id),
                service=confirmation.service,
                reason=reason,
            )
        self.refusals.count([(c.service, reason) for c, reason in refused])

    def _account(self, account_id: UUID) -> Account | None:
        try:
            account = self.accounts.load_for_audit(account_id)
        except AccountNotFoundError:
            return None
        if account.status is not AccountStatus.ACTIVE and account.withdrawn_at is not None:
            self._withdrawn[account_id] = account.withdrawn_at
            self._withdrawn.move_to_end(account_id)
            while len(self._withdrawn) > WITHDRAWALS_REMEMBERED:
                self._withdrawn.popitem(last=False)
        return account

    def _record_and_purge(self, confirmations: list[Confirmation]) -> set[UUID]:
        db = self.database
        inside = db.dialect.concurrent_writers
        with db.transaction() as cursor:
            if inside:
                # One erasure's confirmations are recorded one transaction at a time, so the
                # last of them sees all the others (none commits before its purge ran).
                lock_keys(db, cursor, {f"erasure:{c.account_id}" for c in confirmations})
            # A later 'confirmed' replaces an earlier 'failed'; a confirmation is never undone
            # (of repeats within the batch, the first counts, as one statement after another).
            first = {(c.account_id, c.service): c for c in reversed(confirmations)}
            cursor.insert_rows(
                self.table,
                (
                    ("account_id", "uuid"),
                    ("service", "text"),
                    ("outcome", "text"),
                    ("rows_removed", "int"),
                    ("confirmation_id", "text"),
                    ("error_code", "text"),
                ),
                [
                    (
                        db.id_param(c.account_id),
                        c.service,
                        c.outcome,
                        c.rows_removed,
                        c.confirmation_id,
                        c.error_code,
                    )
                    for c in first.values()
                ],
                suffix="ON CONFLICT (account_id, service) DO UPDATE SET "
                "outcome = excluded.outcome, rows_removed = excluded.rows_removed, "
                "confirmation_id = excluded.confirmation_id, error_code = excluded.error_code "
                f"WHERE {self.table}.outcome <> '{CONFIRMED}'",
            )
            confirmed = self._confirmed_services_of(
                cursor, list({c.account_id: c for c in confirmations})
            )
            complete = [a for a, done in confirmed.items() if self.is_complete(done)]
            purged = self._purge_all(complete) if inside else set()
        for confirmation in confirmations:
            log.info(
                "erasure.confirmation",
                account_id=str(confirmation.account_id),
                service=confirmation.service,
                outcome=confirmation.outcome,
                rows_removed=confirmation.rows_removed,
            )
        if not inside:
            purged = self._purge_all(complete)
        if self.receipts is not None:
            # Also on a repeat (already purged): a receipt lost to a crash is issued now.
            for account_id in complete:
                self.receipts.issue(account_id)
        return purged

    def _purge_all(self, account_ids: list[UUID]) -> set[UUID]:
        """`Accounts.purge` for each, side by side on PostgreSQL; the first error is raised
        after all have run (each purge is idempotent, so a retry repeats none of them)."""
        purged: set[UUID] = set()
        errors: list[BaseException] = []

        def purge(account_id: UUID) -> None:
            try:
                if self.accounts.purge(account_id):
                    purged.add(account_id)
                    log.info("erasure.purged", account_id=str(account_id))
            except Exception as error:
                errors.append(error)

        if len(account_ids) > 1 and self.database.dialect.concurrent_writers:
            with ThreadPoolExecutor(min(len(account_ids), PURGE_WORKERS)) as pool:
                list(pool.map(purge, account_ids))
        else:
            for account_id in account_ids:
                purge(account_id)
        if errors:
            raise errors[0]
        return purged

    def _confirmed_services_of(
        self, cursor: Cursor, account_ids: list[UUID]
    ) -> dict[UUID, set[str]]:
        db = self.database
        where, params = db.any_of("account_id", [db.id_param(a) for a in account_ids])
        rows = cursor.execute(
            f"SELECT account_id, service FROM {self.table} WHERE {where} AND outcome = %s",
            [*params, CONFIRMED],
        ).fetchall()
        confirmed: dict[UUID, set[str]] = {a: set() for a in account_ids}
        for account_id, service in rows:
            confirmed[db.to_uuid(account_id)].add(service)
        return confirmed
