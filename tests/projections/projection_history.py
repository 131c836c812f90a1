"""A known event history and helpers shared by the read-model tests (the `history` fixture is
in this folder's conftest)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any
from uuid import UUID, uuid4

from lifecycle.application import Accounts
from lifecycle.domain import Account
from lifecycle.storage import Database
from projections.base import ReadModel
from projections.runner import Projector

PERSONAL: dict[str, Any] = {
    "display_name": "Zephyrine Okonkwo",
    "phone": "+81-90-7741-3321",
    "job_title": "Quantum Pastry Architect",
    "work_history": [{"company": "Zanzibar Widgets KK", "role": "Glaze Lead"}],
}
COMMENT = "Please forget Zephyrine and her chrysanthemum collection"


@dataclass
class History:
    """Four members: active (scouted twice), gifted then withdrawn and purged, withdrawn
    without the gift (forfeited), and one never scouted."""

    active: UUID
    purged: UUID
    withdrawing: UUID
    quiet: UUID
    emails: list[str]

    def all(self) -> list[UUID]:
        return [self.active, self.purged, self.withdrawing, self.quiet]


def make_history(accounts: Accounts) -> History:
    emails = [f"member-{uuid4().hex[:10]}@example.jp" for _ in range(4)]

    def register(email: str, channel: str = "web") -> UUID:
        return accounts.register(
            email=email, consent_version="2026-04", channel=channel, **PERSONAL
        )

    active = register(emails[0], "app")
    accounts.receive_scout(active, scout_id="s-1", company_id="acme", job_id="j-1")
    accounts.receive_scout(active, scout_id="s-2", company_id="globex", job_id="j-2")
    accounts.edit_preferences(active, notifications={"scouts": False})

    purged = register(emails[1])
    accounts.receive_scout(purged, scout_id="s-3", company_id="acme", job_id="j-3")
    accounts.claim_gift(purged, company_id="acme", start_date=date(2026, 7, 1))
    accounts.request_withdrawal(purged, reason="hired_via_platform", comment=COMMENT)
    accounts.purge(purged)

    withdrawing = register(emails[2])
    accounts.receive_scout(withdrawing, scout_id="s-4", company_id="acme", job_id="j-4")
    accounts.request_withdrawal(withdrawing, reason="too_many_notifications")

    quiet = register(emails[3])
    return History(active, purged, withdrawing, quiet, emails)


def catch_up(accounts: Accounts, model: ReadModel, batch_size: int = 500) -> int:
    model.create()
    return Projector(accounts, model, batch_size=batch_size).catch_up()


def table_rows(database: Database, table: str, order: str) -> list[tuple[Any, ...]]:
    with database.transaction(commit=False) as cursor:
        return cursor.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()


def account(accounts: Accounts, account_id: UUID) -> Account:
    return accounts.load_for_audit(account_id)
