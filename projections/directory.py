"""The account directory: one row per account with its status and dates, no personal values."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from lifecycle import event_names
from lifecycle.account_terms import AccountStatus
from lifecycle.domain import Account
from lifecycle.storage import read_timestamp
from projections.base import (
    ReadModel,
    Statement,
    as_uuid,
)

COLUMNS = (
    "account_id",
    "status",
    "registered_at",
    "channel",
    "consent_version",
    "version",
    "updated_at",
    "scouts_received",
    "gift_claimed_at",
    "withdrawn_at",
    "withdrawal_reason",
    "purged_at",
)
TIMESTAMPS = {"registered_at", "updated_at", "gift_claimed_at", "withdrawn_at", "purged_at"}


class AccountDirectory(ReadModel):
    name = "account_directory"
    topics = event_names.ACCOUNT_EVENTS
    tables = ("account_directory",)

    def create_statements(self) -> list[str]:
        db = self.database
        ts = db.timestamp_type
        table = self.table("account_directory")
        return [
            f"CREATE TABLE IF NOT EXISTS {table} ("
            f"account_id {db.id_type} PRIMARY KEY, status TEXT NOT NULL, "
            f"registered_at {ts} NOT NULL, channel TEXT NOT NULL, consent_version TEXT NOT NULL, "
            f"version BIGINT NOT NULL, updated_at {ts} NOT NULL, "
            "scouts_received INTEGER NOT NULL DEFAULT 0, "
            f"gift_claimed_at {ts}, withdrawn_at {ts}, withdrawal_reason TEXT, purged_at {ts})",
            f"CREATE INDEX IF NOT EXISTS {self.name}_by_status{self.suffix} "
            f"ON {table} (status, account_id)",
        ]

    def changes(self, event: Any) -> Iterable[Statement]:
        table = self.table("account_directory")
        account_id = self.id(event.originator_id)
        at = self.ts(event.timestamp)
        touch = "version = %s, updated_at = %s"
        moved = (event.originator_version, at)
        match event:
            case Account.Registered():
                yield (
                    f"INSERT INTO {table} (account_id, status, registered_at, channel, "
                    "consent_version, version, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        account_id,
                        AccountStatus.ACTIVE.value,
                        at,
                        event.channel,
                        event.consent_version,
                        *moved,
                    ),
                )
            case Account.ScoutReceived():
                yield (
                    f"UPDATE {table} SET {touch}, scouts_received = scouts_received + 1 "
                    "WHERE account_id = %s",
                    (*moved, account_id),
                )
            case Account.GiftClaimed():
                yield (
                    f"UPDATE {table} SET {touch}, gift_claimed_at = %s WHERE account_id = %s",
                    (*moved, at, account_id),
                )
            case Account.WithdrawalRequested():
                yield (
                    f"UPDATE {table} SET {touch}, status = %s, withdrawn_at = %s, "
                    "withdrawal_reason = %s WHERE account_id = %s",
                    (*moved, AccountStatus.WITHDRAWING.value, at, event.reason, account_id),
                )
            case Account.Purged():
                yield (
                    f"UPDATE {table} SET {touch}, status = %s, purged_at = %s "
                    "WHERE account_id = %s",
                    (*moved, AccountStatus.PURGED.value, at, account_id),
                )
            case _:
                yield (f"UPDATE {table} SET {touch} WHERE account_id = %s", (*moved, account_id))

    # Queries

    def counts_by_status(self) -> dict[str, int]:
        with self.database.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT status, COUNT(*) FROM {self.table('account_directory')} GROUP BY status"
            ).fetchall()
        found = {str(status): int(count) for status, count in rows}
        return {status.value: found.get(status.value, 0) for status in AccountStatus}

    def page(
        self, *, status: str | None = None, after: UUID | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Accounts in id order, from after `after`, optionally of one status."""
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = %s")
            params.append(status)
        if after is not None:
            where.append("account_id > %s")
            params.append(self.id(after))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self.database.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT {', '.join(COLUMNS)} FROM {self.table('account_directory')} "
                f"{clause}ORDER BY account_id LIMIT %s",
                (*params, limit),
            ).fetchall()
        return [self._row(row) for row in rows]

    def get(self, account_id: UUID) -> dict[str, Any] | None:
        with self.database.transaction(commit=False) as cursor:
            row = cursor.execute(
                f"SELECT {', '.join(COLUMNS)} FROM {self.table('account_directory')} "
                "WHERE account_id = %s",
                (self.id(account_id),),
            ).fetchone()
        return None if row is None else self._row(row)

    def _row(self, row: tuple[Any, ...]) -> dict[str, Any]:
        found = dict(zip(COLUMNS, row, strict=True))
        found["account_id"] = as_uuid(found["account_id"])
        for name in TIMESTAMPS:
            found[name] = read_timestamp(found[name])
        return found
