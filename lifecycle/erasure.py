"""The erasure process, whole: confirmations in, `Purged` out, the deadline, ops' retries.

An erasure is complete when every service in `schemas.contract.ERASING_SERVICES` confirmed
it; the confirmation that completes it records `Purged` through the application. Confirmations
arrive from the consumer kit through `ErasureHandler`; ops' retry requests are kept by
`ErasureRetries`. Both tables live beside the event store; migrations create them
(lifecycle.migrations), so building an `ErasureProcess` runs no DDL.

A confirmation is verified, not believed. It is attributed to a service by the topic it came
on (each service's own, writable only by its principal under Kafka ACLs), never by its payload
or `ce_source`; and it is accepted only for an account that is withdrawing, produced after
that withdrawal. Anything else is refused: logged (ids and a reason, no values), counted per
service and reason in `erasure_refusals` (`lifecycle_erasure_confirmations_refused` on
/metrics) and marked handled, never dead-lettered. A refusal is the process working, not a
fault of the record we could fix: re-driving it would be refused again, and a forger must not
be able to fill ops' dead letters.

Once `Purged` is recorded, the process hands the account to its `receipts` (a signed erasure
receipt, see lifecycle.audit.receipt; the builder attaches it, as the receipt reads the hash
chain, a read model above this layer). The hand-over runs on every repeat of the completing
confirmation too, so a crash between the purge and the receipt is mended by the redelivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

from consumers.handler import Handler, HandlerResult, PoisonRecord
from consumers.store import insert_rows
from lifecycle.application import Accounts
from lifecycle.domain import Account, AccountStatus
from lifecycle.erasure_refusals import ErasureRefusals, Refused, check
from lifecycle.errors import AccountNotFoundError, ConcurrentUpdateError, LifecycleError
from lifecycle.logs import get_logger
from lifecycle.storage import Cursor, Database, lock_keys
from schemas.contract import ERASING_SERVICES, Envelope, ErasureConfirmedV1, TopicNames

CONFIRMED = "confirmed"
FAILED = "failed"
# The two tables beside the event store; the erasure read model joins them at query time.
CONFIRMATIONS_TABLE = "erasure_confirmations"
RETRIES_TABLE = "erasure_retries"
# Purges of one batch run side by side (their saves share group commits), this many at once:
# well below the application's connection pool (POSTGRES_POOL_SIZE, 10).
PURGE_WORKERS = 6

log = get_logger(__name__)


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
        deadline: timedelta = timedelta(hours=72),
        services: tuple[str, ...] = ERASING_SERVICES,
        receipts: PurgeReceipts | None = None,
    ) -> None:
        self.accounts = accounts
        self.database = accounts.database
        self.deadline = deadline
        self.services = services
        self.receipts = receipts
        self.table = self.database.table(CONFIRMATIONS_TABLE)
        self.retries = ErasureRetries(self.database)
        self.refusals = ErasureRefusals(self.database)

    def is_complete(self, confirmed: set[str]) -> bool:
        """What completes an erasure: every erasing service confirmed."""
        return confirmed == set(self.services)

    def handle(self, confirmation: Confirmation) -> bool:
        """Record one confirmation; returns True when this one completed the erasure."""
        return confirmation.account_id in self.handle_many([confirmation])

    def handle_many(
        self, confirmations: Sequence[Confirmation], *, verified: bool = False
    ) -> set[UUID]:
        """Record confirmations, then purge every erasure they completed; returns the accounts
        purged now. Each is `verified` first, unless the caller says it did that already.

        PostgreSQL: one transaction records them all and stays open while the purges run
        side by side (their saves share the application's group commit), so a poll's
        erasures cost one commit, not one each; a purge that fails undoes the batch's
        confirmations, and the kit's retry of each record alone finds the one at fault.
        SQLite has one writer at a time: each confirmation is recorded, then acted on, alone.
        """
        known = list(confirmations) if verified else self.verified(confirmations)
        if self.database.dialect == "postgres":
            return self._record_and_purge(known) if known else set()
        purged: set[UUID] = set()
        for confirmation in known:
            purged |= self._record_and_purge([confirmation])
        return purged

    def verified(self, confirmations: Sequence[Confirmation]) -> list[Confirmation]:
        """The confirmations that answer a withdrawal; each other one is refused (logged and
        counted). One load per account: the event store, not a read model, decides."""
        accepted: list[Confirmation] = []
        refused: list[tuple[Confirmation, str]] = []
        accounts: dict[UUID, Account | None] = {}
        for confirmation in confirmations:
            try:
                if confirmation.service not in self.services:
                    raise Refused("unknown_service")
                if confirmation.account_id not in accounts:
                    accounts[confirmation.account_id] = self._account(confirmation.account_id)
                check(confirmation.confirmed_at, accounts[confirmation.account_id])
            except Refused as refusal:
                refused.append((confirmation, refusal.reason))
            else:
                accepted.append(confirmation)
        if refused:
            self.refuse(refused)
        return accepted

    def refuse(self, refused: Sequence[tuple[Confirmation, str]]) -> None:
        """Log and count refusals (ids, service and reason only)."""
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
            return self.accounts.load_for_audit(account_id)
        except AccountNotFoundError:
            return None

    def _record_and_purge(self, confirmations: list[Confirmation]) -> set[UUID]:
        db = self.database
        inside = db.dialect == "postgres"
        with db.transaction() as cursor:
            if inside:
                # One erasure's confirmations are recorded one transaction at a time, so the
                # last of them sees all the others (none commits before its purge ran).
                lock_keys(db, cursor, {f"erasure:{c.account_id}" for c in confirmations})
            # A later 'confirmed' replaces an earlier 'failed'; a confirmation is never undone
            # (of repeats within the batch, the first counts, as one statement after another).
            first = {(c.account_id, c.service): c for c in reversed(confirmations)}
            insert_rows(
                db,
                cursor,
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

        if len(account_ids) > 1 and self.database.dialect == "postgres":
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

    def service_rows(self, account_id: UUID) -> dict[str, dict[str, Any]]:
        """Each service's recorded word on the account (services that said nothing are absent)."""
        db = self.database
        with db.transaction(commit=False) as cursor:
            rows = cursor.execute(
                "SELECT service, outcome, rows_removed, error_code, recorded_at, confirmation_id "
                f"FROM {self.table} WHERE account_id = %s",
                (db.id_param(account_id),),
            ).fetchall()
        return {
            service: {
                "outcome": outcome,
                "rows_removed": rows_removed,
                "error_code": error_code,
                "recorded_at": recorded_at,
                "confirmation_id": confirmation_id,
            }
            for service, outcome, rows_removed, error_code, recorded_at, confirmation_id in rows
        }

    def status(self, account_id: UUID, now: datetime | None = None) -> dict[str, Any]:
        """Requested, per-service confirmed / failed / pending, purged, overdue."""
        account: Account = self.accounts.load_for_audit(account_id)
        rows = self.service_rows(account_id)
        now = now or datetime.now(UTC)
        requested_at = account.withdrawn_at
        overdue = (
            account.status is AccountStatus.WITHDRAWING
            and requested_at is not None
            and now - requested_at > self.deadline
        )
        return {
            "account_id": str(account_id),
            "state": _state_of(account.status, requested_at),
            "requested_at": requested_at,
            "purged_at": account.purged_at,
            "deadline_at": requested_at + self.deadline if requested_at else None,
            "overdue": overdue,
            "services": {
                service: {
                    "state": rows[service]["outcome"] if service in rows else "pending",
                    "rows_removed": rows.get(service, {}).get("rows_removed"),
                    "error_code": rows.get(service, {}).get("error_code"),
                }
                for service in self.services
            },
        }


def _state_of(status: AccountStatus, requested_at: datetime | None) -> str:
    if status is AccountStatus.PURGED:
        return "purged"
    if requested_at is not None:
        return "requested"
    return "not_requested"


class ErasureHandler(Handler):
    """Confirmations in; `ErasureProcess` records them and purges once all services confirmed.

    Each confirmation is attributed to the service whose topic it came on (`topics`); on any
    other topic it is refused. With `legacy` (a rolling upgrade, off by default) the shared
    topic of earlier releases is read too, and a confirmation there is attributed by its
    payload: weaker, as anyone allowed to write that topic can confirm for any service.

    The process writes in transactions of its own (the purge goes through the event store), so
    it runs in `prepare_many`, once for a poll's confirmations; it is idempotent, so a repeat
    after a crash changes nothing.
    """

    def __init__(
        self, process: ErasureProcess, topics: TopicNames, *, legacy: bool = False
    ) -> None:
        self.process = process
        self.topics = topics
        self.legacy = legacy
        self._refused: set[str] = set()

    def commits_before_prepare(self, envelope: Envelope) -> bool:
        # PostgreSQL: a poll's confirmations are prepared, and their completions purged,
        # together (`ErasureProcess.handle_many` undoes them all if one fails). SQLite records
        # each before acting on it, so each is a run of its own and only the culprit fails.
        return self.process.database.dialect != "postgres"

    def prepare(self, envelope: Envelope) -> None:
        self.prepare_many([envelope])

    def prepare_many(self, envelopes: Sequence[Envelope]) -> None:
        confirmations: list[Confirmation] = []
        refused: list[tuple[Confirmation, str]] = []
        for envelope in envelopes:
            data = envelope.data
            if not isinstance(data, ErasureConfirmedV1):
                continue
            service = self.service_of(envelope.topic, data)
            confirmation = Confirmation(
                account_id=data.account_id,
                service=service or data.service,
                outcome=CONFIRMED,
                rows_removed=data.rows_removed,
                confirmation_id=envelope.id,
                confirmed_at=data.confirmed_at,
            )
            if service is None:
                refused.append((confirmation, "unattributed"))
            elif data.service != service:
                refused.append((confirmation, "service_mismatch"))
            else:
                confirmations.append(confirmation)
        if refused:
            self.process.refuse(refused)
        accepted = self.process.verified(confirmations)
        self._refused = {c.confirmation_id for c, _ in refused} | {
            c.confirmation_id for c in confirmations if c not in accepted
        }
        if not accepted:
            return
        try:
            self.process.handle_many(accepted, verified=True)
        except ConcurrentUpdateError:
            raise  # someone else's progress: retried
        except LifecycleError as error:
            # In a batch, the kit then prepares each record alone: only the culprit is poison.
            raise PoisonRecord(error.code) from None

    def service_of(self, topic: str | None, data: ErasureConfirmedV1) -> str | None:
        """The service a confirmation is from: its topic's; None when no topic vouches."""
        if topic is None:
            return None
        service = self.topics.service_of_confirmation_topic(topic)
        if service is None and self.legacy and topic == self.topics.legacy_erasure_confirmed:
            return data.service
        return service

    def handle(self, envelope: Envelope, cursor: Cursor) -> HandlerResult:
        if isinstance(envelope.data, ErasureConfirmedV1):
            if envelope.id in self._refused:
                return HandlerResult(outcome="confirmation_refused")
            return HandlerResult(outcome="confirmation_handled")
        return HandlerResult(outcome="ignored")


class ErasureRetries:
    """Ops' requests to ask a service again for an erasure. Not events of an account, so they
    are kept in a table of their own, beside the confirmations."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.table = database.table(RETRIES_TABLE)

    def request(self, account_id: UUID, service: str, now: datetime | None = None) -> int:
        """Record one more retry request; returns how many there have been."""
        db = self.database
        at = (now or datetime.now(UTC)).astimezone(UTC)
        when: datetime | str = at if db.dialect == "postgres" else at.isoformat()
        with db.transaction() as cursor:
            row = cursor.execute(
                f"INSERT INTO {self.table} AS saved (account_id, service, requested_at, attempts) "
                "VALUES (%s, %s, %s, 1) ON CONFLICT (account_id, service) DO UPDATE SET "
                "requested_at = excluded.requested_at, attempts = saved.attempts + 1 "
                "RETURNING attempts",
                (db.id_param(account_id), service, when),
            ).fetchone()
        assert row is not None
        return int(row[0])
