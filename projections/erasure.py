"""Erasures for ops: a read model of when each was requested and purged, and its query.

The read model keeps, per withdrawn account, when erasure was requested (and why) and when it
completed (`Purged`). Per-service state is not in the event log: it comes at query time from
the two tables the erasure process keeps (`lifecycle.erasure.records`). The status itself is
computed by `lifecycle.erasure.status.erasure_status`, as for the member route; this module
adds paging, filters and counts. The deadline is applied at query time, so changing it
changes what is overdue without a rebuild.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from lifecycle import event_names
from lifecycle.domain import Account
from lifecycle.erasure.records import CONFIRMATIONS_TABLE, ErasureRecords
from lifecycle.erasure.status import FAILED, ErasureStatus, erasure_status
from lifecycle.storage import Database, read_timestamp
from projections.base import ReadModel, Statement, as_uuid
from schemas.contract import ERASING_SERVICES

ErasureFilter = Literal["open", "pending", "errored", "overdue", "purged", "all"]
ERASURE_FILTERS: tuple[str, ...] = ("open", "pending", "errored", "overdue", "purged", "all")


class ErasureStatusView(ReadModel):
    """When each withdrawn account's erasure was requested, and when it was purged."""

    name = "erasure_status"
    topics = (event_names.WITHDRAWAL_REQUESTED, event_names.PURGED)
    tables = ("erasure_requests",)

    def create_statements(self) -> list[str]:
        db = self.database
        table = self.table("erasure_requests")
        return [
            f"CREATE TABLE IF NOT EXISTS {table} ("
            f"account_id {db.id_type} PRIMARY KEY, requested_at {db.timestamp_type} NOT NULL, "
            f"reason TEXT NOT NULL, purged_at {db.timestamp_type})",
            f"CREATE INDEX IF NOT EXISTS {self.name}_open{self.suffix} "
            f"ON {table} (purged_at, requested_at)",
        ]

    def changes(self, event: Any) -> Iterable[Statement]:
        table = self.table("erasure_requests")
        account_id = self.id(event.originator_id)
        if isinstance(event, Account.WithdrawalRequested):
            yield (
                f"INSERT INTO {table} (account_id, requested_at, reason) VALUES (%s, %s, %s)",
                (account_id, self.ts(event.timestamp), event.reason),
            )
        elif isinstance(event, Account.Purged):
            yield (
                f"UPDATE {table} SET purged_at = %s WHERE account_id = %s",
                (self.ts(event.timestamp), account_id),
            )


@dataclass(frozen=True)
class ErasureQuery:
    """Reads the read model with the erasure process's confirmations and retry requests."""

    model: ErasureStatusView
    deadline: timedelta
    services: tuple[str, ...] = ERASING_SERVICES

    @property
    def database(self) -> Database:
        return self.model.database

    def counts(self, now: datetime | None = None) -> dict[str, int]:
        """How many erasures are open, errored, overdue, and purged."""
        now = now or datetime.now(UTC)
        requests = self.model.table("erasure_requests")
        failed = self._failed_clause()
        with self.database.transaction(commit=False) as cursor:
            row = cursor.execute(
                "SELECT "
                "SUM(CASE WHEN purged_at IS NULL THEN 1 ELSE 0 END) AS open_, "
                "SUM(CASE WHEN purged_at IS NULL AND requested_at < %s THEN 1 ELSE 0 END) "
                "AS overdue, "
                "SUM(CASE WHEN purged_at IS NOT NULL THEN 1 ELSE 0 END) AS purged, "
                f"SUM(CASE WHEN purged_at IS NULL AND {failed} THEN 1 ELSE 0 END) AS errored "
                f"FROM {requests} r",
                (self.model.ts(now - self.deadline), FAILED),
            ).fetchone()
        open_, overdue, purged, errored = (int(value or 0) for value in row or (0, 0, 0, 0))
        return {"open": open_, "errored": errored, "overdue": overdue, "purged": purged}

    def page(
        self,
        state: str = "open",
        *,
        after: UUID | None = None,
        limit: int = 100,
        now: datetime | None = None,
    ) -> list[ErasureStatus]:
        """Erasures in account-id order; `state` is one of ERASURE_FILTERS."""
        now = now or datetime.now(UTC)
        failed = self._failed_clause()
        where: list[str] = []
        params: list[Any] = []
        if state in ("open", "pending", "errored", "overdue"):
            where.append("r.purged_at IS NULL")
        if state == "pending":
            where += ["r.requested_at >= %s", f"NOT {failed}"]
            params += [self.model.ts(now - self.deadline), FAILED]
        elif state == "errored":
            where.append(failed)
            params.append(FAILED)
        elif state == "overdue":
            where.append("r.requested_at < %s")
            params.append(self.model.ts(now - self.deadline))
        elif state == "purged":
            where.append("r.purged_at IS NOT NULL")
        if after is not None:
            where.append("r.account_id > %s")
            params.append(self.model.id(after))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self.database.transaction(commit=False) as cursor:
            rows = cursor.execute(
                "SELECT r.account_id, r.requested_at, r.reason, r.purged_at "
                f"FROM {self.model.table('erasure_requests')} r {clause}"
                "ORDER BY r.account_id LIMIT %s",
                (*params, limit),
            ).fetchall()
        return [self._status(row, now) for row in rows]

    def get(self, account_id: UUID, now: datetime | None = None) -> ErasureStatus | None:
        with self.database.transaction(commit=False) as cursor:
            row = cursor.execute(
                "SELECT account_id, requested_at, reason, purged_at "
                f"FROM {self.model.table('erasure_requests')} WHERE account_id = %s",
                (self.model.id(account_id),),
            ).fetchone()
        return None if row is None else self._status(row, now or datetime.now(UTC))

    def _failed_clause(self) -> str:
        """`r` has a failed confirmation (takes the outcome as its one parameter)."""
        return (
            f"EXISTS (SELECT 1 FROM {self.database.table(CONFIRMATIONS_TABLE)} c "
            "WHERE c.account_id = r.account_id AND c.outcome = %s)"
        )

    def _status(self, row: tuple[Any, ...], now: datetime) -> ErasureStatus:
        account_id = as_uuid(row[0])
        records = ErasureRecords(self.database)
        return erasure_status(
            account_id,
            requested_at=read_timestamp(row[1]),
            purged_at=read_timestamp(row[3]),
            reason=row[2],
            records=records.services_of(account_id),
            retries=records.retries_of(account_id),
            services=self.services,
            deadline=self.deadline,
            now=now,
        )
