"""Counts for the business: why members leave, gifts claimed, scouts per company.

Weeks start on Monday and months begin, both in Japan time (JST, no daylight saving).
"""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

from lifecycle import event_names
from lifecycle.domain import Account
from lifecycle.storage import read_timestamp
from projections.base import (
    BatchCursor,
    Item,
    ReadModel,
    jst_month,
    jst_week_start,
    upsert_adding,
)

# (table, key columns, counts to add) for one event
Count = tuple[str, dict[str, Any], dict[str, int]]


class CountingReadModel(ReadModel):
    """Counts per key: a batch's counts are added up in memory first, then written as one
    upsert per key (all keys in one `executemany`), not one statement per event."""

    @abstractmethod
    def counts(self, event: Any) -> Iterable[Count]:
        """What one decoded event adds, per table and key."""

    def apply(self, cursor: BatchCursor, items: Sequence[Item]) -> None:
        totals: dict[tuple[str, tuple[tuple[str, Any], ...]], dict[str, int]] = {}
        for item in items:
            if item.event is None:
                continue
            for table, keys, counts in self.counts(item.event):
                total = totals.setdefault((table, tuple(keys.items())), dict.fromkeys(counts, 0))
                for name, value in counts.items():
                    total[name] += value
        cursor.run(
            upsert_adding(table, dict(keys), total) for (table, keys), total in totals.items()
        )


class WithdrawalReasons(CountingReadModel):
    """Withdrawals per reason per week: why members leave."""

    name = "withdrawal_reasons"
    topics = (event_names.WITHDRAWAL_REQUESTED,)
    tables = ("withdrawal_reasons_weekly",)

    def create_statements(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table('withdrawal_reasons_weekly')} ("
            "week_start TEXT NOT NULL, reason TEXT NOT NULL, withdrawals INTEGER NOT NULL, "
            "gifts_forfeited INTEGER NOT NULL, PRIMARY KEY (week_start, reason))"
        ]

    def counts(self, event: Any) -> Iterable[Count]:
        if isinstance(event, Account.WithdrawalRequested):
            yield (
                self.table("withdrawal_reasons_weekly"),
                {"week_start": jst_week_start(event.timestamp), "reason": event.reason},
                {"withdrawals": 1, "gifts_forfeited": int(event.gift_forfeited)},
            )

    def weekly(self, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """Rows with week_start in [since, until), both YYYY-MM-DD, oldest first."""
        where, params = _range("week_start", since, until)
        with self.database.transaction(commit=False) as cursor:
            rows = cursor.execute(
                "SELECT week_start, reason, withdrawals, gifts_forfeited "
                f"FROM {self.table('withdrawal_reasons_weekly')} {where}"
                "ORDER BY week_start, reason",
                params,
            ).fetchall()
        return [
            {
                "week_start": week,
                "reason": reason,
                "withdrawals": int(count),
                "gifts_forfeited": int(forfeited),
            }
            for week, reason, count, forfeited in rows
        ]


class GiftClaims(CountingReadModel):
    """Gifts claimed per month and company, with the amount paid out."""

    name = "gift_claims"
    topics = (event_names.GIFT_CLAIMED,)
    tables = ("gift_claims_monthly",)

    def create_statements(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table('gift_claims_monthly')} ("
            "month TEXT NOT NULL, company_id TEXT NOT NULL, claims INTEGER NOT NULL, "
            "amount_jpy BIGINT NOT NULL, PRIMARY KEY (month, company_id))"
        ]

    def counts(self, event: Any) -> Iterable[Count]:
        if isinstance(event, Account.GiftClaimed):
            yield (
                self.table("gift_claims_monthly"),
                {"month": jst_month(event.timestamp), "company_id": event.company_id},
                {"claims": 1, "amount_jpy": int(event.amount_jpy)},
            )

    def monthly(self, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """Rows with month in [since, until), both YYYY-MM, oldest first."""
        where, params = _range("month", since, until)
        with self.database.transaction(commit=False) as cursor:
            rows = cursor.execute(
                "SELECT month, company_id, claims, amount_jpy "
                f"FROM {self.table('gift_claims_monthly')} {where}ORDER BY month, company_id",
                params,
            ).fetchall()
        return [
            {"month": month, "company_id": company, "claims": int(n), "amount_jpy": int(amount)}
            for month, company, n, amount in rows
        ]


class ScoutsPerCompany(ReadModel):
    """Scouts sent by each company, and to how many members."""

    name = "scouts_per_company"
    topics = (event_names.SCOUT_RECEIVED,)
    tables = ("scouts_per_company", "scouted_members")

    def create_statements(self) -> list[str]:
        db = self.database
        ts = db.timestamp_type
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table('scouts_per_company')} ("
            "company_id TEXT PRIMARY KEY, scouts INTEGER NOT NULL, members INTEGER NOT NULL, "
            f"first_scout_at {ts} NOT NULL, last_scout_at {ts} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self.table('scouted_members')} ("
            f"company_id TEXT NOT NULL, account_id {db.id_type} NOT NULL, "
            "PRIMARY KEY (company_id, account_id))",
        ]

    def apply(self, cursor: BatchCursor, items: Sequence[Item]) -> None:
        """A batch's scouts per company added up first: which members are new comes from
        one insert of the batch's (company, member) pairs, then one upsert per company."""
        scouts: dict[str, list[Any]] = {}  # company -> [scouts, first at, last at]
        pairs: dict[tuple[str, UUID | str], None] = {}
        for item in items:
            event = item.event
            if not isinstance(event, Account.ScoutReceived):
                continue
            at = self.ts(event.timestamp)
            seen = scouts.setdefault(event.company_id, [0, at, at])
            seen[0] += 1
            seen[2] = at
            pairs[(event.company_id, self.id(event.originator_id))] = None
        if not scouts:
            return
        new_members = self._insert_members(cursor, list(pairs))
        cursor.executemany(
            f"INSERT INTO {self.table('scouts_per_company')} AS saved "
            "(company_id, scouts, members, first_scout_at, last_scout_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (company_id) DO UPDATE SET "
            "scouts = saved.scouts + excluded.scouts, "
            "members = saved.members + excluded.members, "
            "last_scout_at = excluded.last_scout_at",
            [
                (company, count, new_members[company], first, last)
                for company, (count, first, last) in scouts.items()
            ],
        )

    def _insert_members(
        self, cursor: BatchCursor, pairs: list[tuple[str, UUID | str]]
    ) -> Counter[str]:
        """Adds the pairs not yet there; how many were new, per company."""
        table = self.table("scouted_members")
        values, params = self.database.dialect.rows(
            [("company_id", "text"), ("account_id", "uuid")], pairs
        )
        rows = cursor.execute(
            f"INSERT INTO {table} (company_id, account_id) {values} "
            "ON CONFLICT DO NOTHING RETURNING company_id",
            params,
        ).fetchall()
        return Counter(str(company) for (company,) in rows)

    def companies(self, limit: int = 100, after: str | None = None) -> list[dict[str, Any]]:
        where, params = ("WHERE company_id > %s ", [after]) if after else ("", [])
        with self.database.transaction(commit=False) as cursor:
            rows = cursor.execute(
                "SELECT company_id, scouts, members, first_scout_at, last_scout_at "
                f"FROM {self.table('scouts_per_company')} {where}ORDER BY company_id LIMIT %s",
                (*params, limit),
            ).fetchall()
        return [
            {
                "company_id": company,
                "scouts": int(scouts),
                "members": int(members),
                "first_scout_at": read_timestamp(first),
                "last_scout_at": read_timestamp(last),
            }
            for company, scouts, members, first, last in rows
        ]


def _range(column: str, since: str | None, until: str | None) -> tuple[str, list[str]]:
    where, params = [], []
    if since:
        where.append(f"{column} >= %s")
        params.append(since)
    if until:
        where.append(f"{column} < %s")
        params.append(until)
    return (f"WHERE {' AND '.join(where)} " if where else ""), params
