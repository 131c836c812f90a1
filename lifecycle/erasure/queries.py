"""One account's erasure status read from the event store (the member route, the erasure proof):
the account's own events say when it was requested and purged, the process's tables say what
each service did. The ops API reads the same status from the read model (`projections.erasure`);
both compute it with `lifecycle.erasure.status.erasure_status`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from lifecycle.application import Accounts
from lifecycle.erasure.records import ErasureRecords
from lifecycle.erasure.status import ErasureStatus, erasure_status
from schemas.contract import ERASING_SERVICES


class ErasureStatusQuery:
    def __init__(
        self,
        accounts: Accounts,
        deadline: timedelta,
        services: tuple[str, ...] = ERASING_SERVICES,
    ) -> None:
        self.accounts = accounts
        self.records = ErasureRecords(accounts.database)
        self.deadline = deadline
        self.services = services

    def status(self, account_id: UUID, now: datetime | None = None) -> ErasureStatus:
        """Raises AccountNotFoundError for an account never registered."""
        account = self.accounts.load_for_audit(account_id)
        return erasure_status(
            account_id,
            requested_at=account.withdrawn_at,
            purged_at=account.purged_at,
            reason=(account.withdrawal or {}).get("reason"),
            records=self.records.services_of(account_id),
            retries=self.records.retries_of(account_id),
            services=self.services,
            deadline=self.deadline,
            now=now or datetime.now(UTC),
        )
