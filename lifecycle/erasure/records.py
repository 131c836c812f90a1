"""The two tables the erasure process keeps beside the event store: each service's word on an
account (`erasure_confirmations`, written by `lifecycle.erasure.process`) and ops' retry
requests (`erasure_retries`). Not events of an account, so tables of their own; migrations
create them (lifecycle.migrations), so building `ErasureRecords` runs no DDL."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from lifecycle.erasure.status import RetryRecord, ServiceRecord
from lifecycle.storage import Database, read_timestamp

CONFIRMATIONS_TABLE = "erasure_confirmations"
RETRIES_TABLE = "erasure_retries"


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
