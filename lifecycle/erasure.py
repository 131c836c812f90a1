"""The erasure process: downstream confirmations in, `Purged` out once every service confirmed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from lifecycle.application import Accounts
from lifecycle.domain import Account, AccountStatus
from lifecycle.logs import get_logger
from lifecycle.settings import Settings
from schemas.contract import ERASING_SERVICES

CONFIRMED = "confirmed"
FAILED = "failed"

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


class ErasureProcess:
    """Tracks per-service confirmations beside the event store and records `Purged`."""

    def __init__(
        self,
        accounts: Accounts,
        deadline: timedelta = timedelta(hours=72),
        services: tuple[str, ...] = ERASING_SERVICES,
    ) -> None:
        self.accounts = accounts
        self.database = accounts.database
        self.deadline = deadline
        self.services = services
        self.table = self.database.table("erasure_confirmations")
        self._create_table()

    def _create_table(self) -> None:
        db = self.database
        with db.ddl() as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                f"account_id {db.id_type} NOT NULL, service TEXT NOT NULL, "
                "outcome TEXT NOT NULL, rows_removed INTEGER NOT NULL, "
                "confirmation_id TEXT NOT NULL, error_code TEXT, "
                f"recorded_at {db.timestamp_type} NOT NULL DEFAULT {db.now}, "
                "PRIMARY KEY (account_id, service))"
            )

    def handle(self, confirmation: Confirmation) -> bool:
        """Record one confirmation; returns True when this one completed the erasure."""
        if confirmation.service not in self.services:
            log.warning("erasure.unknown_service", service=confirmation.service)
            return False
        db = self.database
        with db.transaction() as cursor:
            # A later 'confirmed' replaces an earlier 'failed'; a confirmation is never undone.
            cursor.execute(
                f"INSERT INTO {self.table} "
                "(account_id, service, outcome, rows_removed, confirmation_id, error_code) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (account_id, service) DO UPDATE SET "
                "outcome = excluded.outcome, rows_removed = excluded.rows_removed, "
                "confirmation_id = excluded.confirmation_id, error_code = excluded.error_code "
                f"WHERE {self.table}.outcome <> %s",
                (
                    db.id_param(confirmation.account_id),
                    confirmation.service,
                    confirmation.outcome,
                    confirmation.rows_removed,
                    confirmation.confirmation_id,
                    confirmation.error_code,
                    CONFIRMED,
                ),
            )
        log.info(
            "erasure.confirmation",
            account_id=str(confirmation.account_id),
            service=confirmation.service,
            outcome=confirmation.outcome,
            rows_removed=confirmation.rows_removed,
        )
        if self._confirmed_services(confirmation.account_id) != set(self.services):
            return False
        purged = self.accounts.purge(confirmation.account_id)
        if purged:
            log.info("erasure.purged", account_id=str(confirmation.account_id))
        return purged

    def _confirmed_services(self, account_id: UUID) -> set[str]:
        return {
            service
            for service, state in self._service_rows(account_id).items()
            if state["outcome"] == CONFIRMED
        }

    def _service_rows(self, account_id: UUID) -> dict[str, dict[str, Any]]:
        db = self.database
        with db.transaction(commit=False) as cursor:
            rows = cursor.execute(
                "SELECT service, outcome, rows_removed, error_code, recorded_at "
                f"FROM {self.table} WHERE account_id = %s",
                (db.id_param(account_id),),
            ).fetchall()
        return {
            service: {
                "outcome": outcome,
                "rows_removed": rows_removed,
                "error_code": error_code,
                "recorded_at": recorded_at,
            }
            for service, outcome, rows_removed, error_code, recorded_at in rows
        }

    def status(self, account_id: UUID, now: datetime | None = None) -> dict[str, Any]:
        """Requested, per-service confirmed / failed / pending, purged, overdue."""
        account: Account = self.accounts.load_for_audit(account_id)
        rows = self._service_rows(account_id)
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


def erasure_process(accounts: Accounts, settings: Settings) -> ErasureProcess:
    """The erasure process as configured: its deadline comes from settings."""
    return ErasureProcess(accounts, deadline=timedelta(hours=settings.erasure_deadline_hours))
