"""Which confirmations the erasure process refuses (see `lifecycle.erasure`), and how many."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from lifecycle.account_terms import AccountStatus
from lifecycle.domain import Account
from lifecycle.storage import Database
from schemas.contract import ERASING_SERVICES

REFUSALS_TABLE = "erasure_refusals"
# How far a confirmation's own time may precede the withdrawal it answers (two clocks).
CLOCK_SKEW = timedelta(minutes=5)


class Refused(Exception):  # noqa: N818 - a verdict, caught where confirmations are checked
    """A confirmation the process does not believe; `reason` is a stable, data-free code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check(confirmed_at: datetime | None, account: Account | None) -> None:
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
