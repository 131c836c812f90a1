"""Bulk scouts: a company scouts hundreds of members in one request.

Every account's new events go to the store together (one transaction through the group-commit
writer); an item's own refusal touches no other item, and when the batch conflicts only the
accounts that conflicted are reloaded and tried again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from eventsourcing.domain import Aggregate, CanMutateProtocol, DomainEventProtocol
from eventsourcing.persistence import IntegrityError

from lifecycle.account_terms import AccountStatus
from lifecycle.domain import Account
from lifecycle.errors import AccountNotFoundError, ConcurrentUpdateError, LifecycleError

if TYPE_CHECKING:
    from lifecycle.application import Accounts


@dataclass(frozen=True)
class ScoutItem:
    """One scout of a bulk request."""

    account_id: UUID
    scout_id: str
    company_id: str
    job_id: str


# A bulk item's outcome: True recorded, False already recorded, else why it was refused.
ScoutOutcome = bool | LifecycleError


def _scout_outcome(account: Account, item: ScoutItem, received_at: datetime) -> ScoutOutcome:
    try:
        return account.receive_scout(
            scout_id=item.scout_id,
            company_id=item.company_id,
            job_id=item.job_id,
            received_at=received_at,
        )
    except LifecycleError as error:
        return error


class BulkScouts:
    """Records many scouts through one `Accounts` application."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    def receive(self, items: Sequence[ScoutItem]) -> list[ScoutOutcome]:
        """Each item as `receive_scout` would record it, in order; all durable on return.

        The new events of every account go to the store together (one transaction through
        the group-commit writer). An item's own refusal touches no other item; if the
        batch conflicts (another writer moved an account on), each account is saved alone
        and only those that conflicted are reloaded and tried again.
        """
        outcomes: list[ScoutOutcome] = [False] * len(items)
        pending: dict[UUID, list[int]] = {}
        for index, item in enumerate(items):
            pending.setdefault(item.account_id, []).append(index)
        received_at = datetime.now(UTC)
        for _ in range(self.accounts.max_attempts):
            if not pending:
                return outcomes
            changed: list[tuple[UUID, Account, Sequence[DomainEventProtocol[UUID]]]] = []
            loaded = self._load(list(pending))
            for account_id, indexes in pending.items():
                account = loaded[account_id]
                if isinstance(account, LifecycleError):
                    for index in indexes:
                        outcomes[index] = account
                    continue
                for index in indexes:
                    outcomes[index] = _scout_outcome(account, items[index], received_at)
                if events := account.collect_events():
                    changed.append((account_id, account, events))
            conflicted = self._save(changed, outcomes, pending)
            pending = {account_id: pending[account_id] for account_id in conflicted}
        for indexes in pending.values():
            for index in indexes:
                outcomes[index] = ConcurrentUpdateError()
        return outcomes

    def _load(self, account_ids: list[UUID]) -> dict[UUID, Account | LifecycleError]:
        """Each account as `get_account` gives it (or its error); on PostgreSQL all of them
        with their keys in one round trip instead of one each."""
        select_many = getattr(self.accounts.recorder, "select_events_of_many", None)
        if select_many is None:
            return {account_id: self._account_or_error(account_id) for account_id in account_ids}
        found: dict[UUID, list[Any]] = select_many(account_ids)
        loaded: dict[UUID, Account | LifecycleError] = {}
        for account_id in account_ids:
            account: Aggregate | None = None
            for stored in found.get(account_id, ()):
                # The library's projector, without its runtime protocol check per event.
                event = cast(
                    CanMutateProtocol[Aggregate], self.accounts.mapper.to_domain_event(stored)
                )
                account = event.mutate(account)
            if not isinstance(account, Account):
                loaded[account_id] = AccountNotFoundError()
            elif account.status is AccountStatus.PURGED:
                loaded[account_id] = self._account_or_error(account_id)  # as load_for_audit
            else:
                loaded[account_id] = account
        return loaded

    def _account_or_error(self, account_id: UUID) -> Account | LifecycleError:
        try:
            return self.accounts.get_account(account_id)
        except LifecycleError as error:
            return error

    def _save(
        self,
        changed: list[tuple[UUID, Account, Sequence[DomainEventProtocol[UUID]]]],
        outcomes: list[ScoutOutcome],
        pending: dict[UUID, list[int]],
    ) -> list[UUID]:
        """Save all, or else each alone; returns the accounts that conflicted (to retry).
        An account whose save failed with an error of ours refuses its items with it."""
        if len(changed) > 1:
            try:
                self.accounts.group_commit.save(
                    [event for _, _, events in changed for event in events],
                    [account for _, account, _ in changed],
                )
                return []
            except (IntegrityError, LifecycleError):
                pass  # Nothing of it was stored: each account alone finds out which failed.
        conflicted: list[UUID] = []
        for account_id, account, events in changed:
            try:
                self.accounts.group_commit.save(events, [account])
            except IntegrityError:
                conflicted.append(account_id)
            except LifecycleError as error:
                for index in pending[account_id]:
                    outcomes[index] = error
        return conflicted
