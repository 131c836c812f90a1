"""The tables the erasure process keeps beside the event store: each service's word on an
account (`erasure_confirmations`, written by `lifecycle.erasure.process`), ops' retry requests
(`erasure_retries`) and the count of confirmations refused (`erasure_refusals`). Not events of
an account, so tables of their own; migrations create them (lifecycle.migrations), so building
`ErasureRecords` or `ErasureRefusals` runs no DDL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from lifecycle.erasure.status import RetryRecord, ServiceRecord
from lifecycle.storage import Database, read_timestamp
from schemas.contract import ERASING_SERVICES

CONFIRMATIONS_TABLE = "erasure_confirmations"
RETRIES_TABLE = "erasure_retries"
REFUSALS_TABLE = "erasure_refusals"


class ErasureRecords:
    """Reads both tables for one account; records ops' retry requests."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.confirmations = database.table(CONFIRMATIONS_TABLE)
        self.retries = database.table(RETRIES_TABLE)

    def services_of(self, account_id: UUID) -> dict[str, ServiceRecord]:
        """Each service's recorded word on the account (services that said nothing are absent)."""
        db = self.database
        with db.transaction(commit=False) as cursor:
            rows = cursor.execute(
                "SELECT service, outcome, rows_removed, error_code, recorded_at, confirmation_id "
                f"FROM {self.confirmations} WHERE account_id = %s",
                (db.id_param(account_id),),
            ).fetchall()
        return {
            str(service): ServiceRecord(
                outcome=str(outcome),
                rows_removed=int(rows_removed),
                error_code=error_code,
                recorded_at=read_timestamp(recorded_at),
                confirmation_id=str(confirmation_id),
            )
            for service, outcome, rows_removed, error_code, recorded_at, confirmation_id in rows
        }

    def retries_of(self, account_id: UUID) -> dict[str, RetryRecord]:
        db = self.database
        with db.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT service, requested_at, attempts FROM {self.retries} WHERE account_id = %s",
                (db.id_param(account_id),),
            ).fetchall()
        return {
            str(service): RetryRecord(
                requested_at=read_timestamp(requested_at), attempts=int(attempts)
            )
            for service, requested_at, attempts in rows
        }

    def request_retry(self, account_id: UUID, service: str, now: datetime | None = None) -> int:
        """Record one more retry request; returns how many there have been."""
        db = self.database
        when = db.dialect.timestamp((now or datetime.now(UTC)).astimezone(UTC))
        with db.transaction() as cursor:
            row = cursor.execute(
                f"INSERT INTO {self.retries} AS saved "
                "(account_id, service, requested_at, attempts) VALUES (%s, %s, %s, 1) "
                "ON CONFLICT (account_id, service) DO UPDATE SET "
                "requested_at = excluded.requested_at, attempts = saved.attempts + 1 "
                "RETURNING attempts",
                (db.id_param(account_id), service, when),
            ).fetchone()
        assert row is not None
        return int(row[0])


class ErasureRefusals:
    """How many confirmations were refused, per service and reason: a few rows, counted up in
    place, so /metrics reads them without a scan (and every process's refusals add up). The
    table comes from a migration (lifecycle.migrations, version 3)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.table = database.table(REFUSALS_TABLE)

    def count(self, refusals: Sequence[tuple[str, str]]) -> None:
        totals: dict[tuple[str, str], int] = {}
        for service, reason in refusals:
            # A label from a forged payload must not grow the table: unknown services pool.
            key = (service if service in ERASING_SERVICES else "other", reason)
            totals[key] = totals.get(key, 0) + 1
        with self.database.transaction() as cursor:
            for (service, reason), refused in sorted(totals.items()):
                cursor.execute(
                    f"INSERT INTO {self.table} AS saved (service, reason, refused) "
                    "VALUES (%s, %s, %s) ON CONFLICT (service, reason) DO UPDATE SET "
                    "refused = saved.refused + excluded.refused",
                    (service, reason, refused),
                )

    def totals(self) -> dict[tuple[str, str], int]:
        with self.database.transaction(commit=False) as cursor:
            rows = cursor.execute(f"SELECT service, reason, refused FROM {self.table}").fetchall()
        return {(str(service), str(reason)): int(n) for service, reason, n in rows}
