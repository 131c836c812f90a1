"""The account directory: one row per account with its status and dates, no personal values."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from lifecycle import event_names
from lifecycle.account_terms import AccountStatus
from lifecycle.storage import read_timestamp
from lifecycle.stored_fold import Facts
from projections.base import BatchCursor, Item, ReadModel, Statement, as_uuid

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
# Columns an event sets once, from NULL (status aside, which only moves forward): a batch's
# UPDATE keeps what it does not set (COALESCE).
SET_ONCE = ("status", "gift_claimed_at", "withdrawn_at", "withdrawal_reason", "purged_at")


class _Row:
    """What a batch's events of one account change in its row."""

    __slots__ = ("registered", "scouts", "sets", "updated_at", "version")

    def __init__(self) -> None:
        self.registered: tuple[datetime, str, str] | None = None
        self.sets: dict[str, Any] = {}
        self.scouts = 0
        self.version = 0
        self.updated_at: datetime | None = None


# How each event changes its account's row, on the event's facts (a decoded event's __dict__
# when following the log, a stored state decoded by lifecycle.stored_fold in a rebuild): one
# table for both. Every event also moves `version` and `updated_at`.
def _registered(row: _Row, facts: Facts) -> None:
    row.registered = (facts["timestamp"], facts["channel"], facts["consent_version"])
    row.sets["status"] = AccountStatus.ACTIVE.value


def _touched(row: _Row, facts: Facts) -> None:
    return None


def _scout_received(row: _Row, facts: Facts) -> None:
    row.scouts += 1


def _gift_claimed(row: _Row, facts: Facts) -> None:
    row.sets["gift_claimed_at"] = facts["timestamp"]


def _withdrawal_requested(row: _Row, facts: Facts) -> None:
    row.sets["status"] = AccountStatus.WITHDRAWING.value
    row.sets["withdrawn_at"] = facts["timestamp"]
    row.sets["withdrawal_reason"] = facts["reason"]


def _purged(row: _Row, facts: Facts) -> None:
    row.sets["status"] = AccountStatus.PURGED.value
    row.sets["purged_at"] = facts["timestamp"]


CHANGES: dict[str, Callable[[_Row, Facts], None]] = {
    event_names.REGISTERED: _registered,
    event_names.PREFERENCES_EDITED: _touched,
    event_names.SCOUT_RECEIVED: _scout_received,
    event_names.GIFT_CLAIMED: _gift_claimed,
    event_names.WITHDRAWAL_REQUESTED: _withdrawal_requested,
    event_names.PURGED: _purged,
}


class AccountDirectory(ReadModel):
    name = "account_directory"
    topics = event_names.ACCOUNT_EVENTS
    tables = ("account_directory",)
    folds_streams = True

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

    def apply(self, cursor: BatchCursor, items: Sequence[Item]) -> None:
        cursor.run(
            self.fold_statements(
                (item.notification.topic, vars(item.event))
                for item in items
                if item.event is not None
            )
        )

    def fold_statements(self, events: Iterable[tuple[str, Facts]]) -> list[Statement]:
        """One statement per account, whatever number of its events the batch holds: an
        INSERT of the row the events fold into when they begin with Registered, else one
        UPDATE (the same SQL for every account, so the batch is one executemany)."""
        rows: dict[UUID, _Row] = {}
        for topic, facts in events:
            account_id: UUID = facts["originator_id"]
            row = rows.get(account_id)
            if row is None:
                row = rows[account_id] = _Row()
            CHANGES[topic](row, facts)
            row.version = facts["originator_version"]
            row.updated_at = facts["timestamp"]
        table = self.table("account_directory")
        insert = (
            f"INSERT INTO {table} ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(COLUMNS))})"
        )
        update = (
            f"UPDATE {table} SET version = %s, updated_at = %s, "
            "scouts_received = scouts_received + %s, "
            + ", ".join(f"{name} = COALESCE(%s, {name})" for name in SET_ONCE)
            + " WHERE account_id = %s"
        )
        inserts: list[Statement] = []
        updates: list[Statement] = []
        for account_id, row in rows.items():
            at = [
                self.ts(row.sets.get(name)) if name in TIMESTAMPS else row.sets.get(name)
                for name in SET_ONCE
            ]
            if row.registered is not None:
                registered_at, channel, consent_version = row.registered
                values = (
                    self.id(account_id),
                    row.sets.get("status", AccountStatus.ACTIVE.value),
                    self.ts(registered_at),
                    channel,
                    consent_version,
                    row.version,
                    self.ts(row.updated_at),
                    row.scouts,
                    *at[1:],
                )
                inserts.append((insert, values))
            else:
                moved = (row.version, self.ts(row.updated_at), row.scouts)
                updates.append((update, (*moved, *at, self.id(account_id))))
        return [*inserts, *updates]

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
