"""Bulk scouts: a company scouts hundreds of members in one request.

Every account's new events go to the store together (one transaction through the group-commit
writer); an item's own refusal touches no other item, and when the batch conflicts only the
accounts that conflicted are reloaded and tried again.

A scout's rules need an account's status and the scouts it has seen, no personal value. So on
PostgreSQL the accounts are folded from their stored events with personal values left sealed
(`lifecycle.stored_fold`, `opened=False`: no key looked up, nothing decrypted, no library event
objects), and the state each account was saved at is kept (`SCOUT_STATES_SECONDS`; it holds
no personal value, so it may outlive the key cache). A kept state is never trusted as it is:
each request reads, in the one round trip a load would take, every event stored after the
version kept (usually none) and folds them in, so its rules see what a fresh load would; and
the store's version check still decides between that read and the save. These redacted
accounts serve this command only: they never reach the application's copies of accounts
(`Accounts.hot_accounts`) or snapshots.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast
from uuid import UUID

from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import IntegrityError

from lifecycle.account_terms import REDACTED, AccountStatus
from lifecycle.crypto import PersonalDataMapper
from lifecycle.domain import Account
from lifecycle.errors import (
    AccountNotFoundError,
    AccountPurgedError,
    ConcurrentUpdateError,
    LifecycleError,
)
from lifecycle.group_commit import conflicting_aggregate
from lifecycle.hot_accounts import HotAccounts
from lifecycle.stored_fold import KINDS, StoredFold, UnknownTopicError, fold

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


def _scout_outcome(
    account: Account, item: ScoutItem, received_at: datetime, recorded: list[Account.Event]
) -> ScoutOutcome:
    """`Account.receive_scout`, its event appended to `recorded` instead of pending."""
    try:
        if not account.scout_is_new(item.scout_id):
            return False
    except LifecycleError as error:
        return error
    facts = {
        "originator_id": account.id,
        "originator_version": account.version + 1,
        "timestamp": Account.ScoutReceived.create_timestamp(),
        "scout_id": item.scout_id,
        "company_id": item.company_id,
        "job_id": item.job_id,
        "received_at": received_at,
    }
    # What `trigger_event` does, without the library's constructor and per-event checks
    # (about a sixth of a bulk request's CPU): the domain's own fold, versions checked, and
    # the event as a shell holding the same attributes (the mapper builds its shells so too).
    fold(account, SCOUT_RECEIVED, facts)
    event = object.__new__(Account.ScoutReceived)
    object.__setattr__(event, "__dict__", facts)
    recorded.append(event)
    return True


SCOUT_RECEIVED = KINDS[Account.ScoutReceived.TOPIC]
# How long an account's state is kept after a bulk save (it holds no personal value), and
# how many accounts at most: each holds its scouts (about 0.4 KB apiece), so 10,000 accounts
# with 20 scouts each are about 80 MB per process.
SCOUT_STATES_SECONDS = 300.0
SCOUT_STATES_SIZE = 10_000


class BulkScouts:
    """Records many scouts through one `Accounts` application."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self.kept = HotAccounts(SCOUT_STATES_SECONDS, SCOUT_STATES_SIZE)
        self._fold = StoredFold(cast(PersonalDataMapper, accounts.mapper), opened=False)

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
            unchanged: list[Account] = []
            loaded = self._load(list(pending))
            for account_id, indexes in pending.items():
                account = loaded[account_id]
                if isinstance(account, LifecycleError):
                    for index in indexes:
                        outcomes[index] = account
                    continue
                events: list[Account.Event] = []
                for index in indexes:
                    outcomes[index] = _scout_outcome(account, items[index], received_at, events)
                if events:
                    changed.append((account_id, account, events))
                else:
                    unchanged.append(account)
            self._keep(unchanged)
            conflicted = self._save(changed, outcomes, pending)
            pending = {account_id: pending[account_id] for account_id in conflicted}
        for indexes in pending.values():
            for index in indexes:
                outcomes[index] = ConcurrentUpdateError()
        return outcomes

    def _load(self, account_ids: list[UUID]) -> dict[UUID, Account | LifecycleError]:
        """Each account as `get_account` gives it (or its error), its personal values left
        sealed; on PostgreSQL all of them in one round trip, each from its kept state on."""
        select_after = getattr(self.accounts.recorder, "select_events_after", None)
        if select_after is None:
            return {account_id: self._account_or_error(account_id) for account_id in account_ids}
        kept = self.kept.take_many(account_ids)
        found: dict[UUID, list[tuple[int, str, bytes]]] = select_after(
            [
                (account_id, kept[account_id].version if account_id in kept else 0)
                for account_id in account_ids
            ]
        )
        loaded: dict[UUID, Account | LifecycleError] = {}
        for account_id in account_ids:
            try:
                account = self._folded(account_id, kept.get(account_id), found.get(account_id, ()))
            except UnknownTopicError:
                rows = found.get(account_id, ())
                if kept.get(account_id) is not None or (rows and rows[0][1] in KINDS):
                    raise  # an account with an event unknown here (a newer release wrote it)
                account = None  # another kind of aggregate: not an account
            if not isinstance(account, Account):
                loaded[account_id] = AccountNotFoundError()
            elif account.status is AccountStatus.PURGED:
                loaded[account_id] = AccountPurgedError()
            else:
                loaded[account_id] = account
        return loaded

    def _folded(
        self, account_id: UUID, account: Aggregate | None, rows: Iterable[tuple[int, str, bytes]]
    ) -> Aggregate | None:
        for version, topic, state in rows:
            facts = self._fold.facts(account_id, version, topic, state)
            account = fold(account, KINDS[topic], facts)
        return account

    def _keep(self, accounts: Iterable[Account]) -> None:
        """Keep states as stored, only those whose personal values read as redacted: one
        loaded with them opened (SQLite's path) is not kept, nor one whose values were stored
        in clear (nothing personal may outlive the key cache here)."""
        self.kept.put_many(account for account in accounts if account.email == REDACTED)

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
        """Save all together; returns the accounts that conflicted (to retry). A conflict
        names the account it met (PostgreSQL's DETAIL): that one is set aside and the rest
        saved together again; otherwise (no account named, or an error of ours) each is
        saved alone, and one whose save failed with an error of ours refuses its items."""
        conflicted: list[UUID] = []
        while len(changed) > 1:
            try:
                # Events only: these accounts' personal values read as redacted, so they
                # must not become the application's copy of an account or a snapshot.
                self.accounts.group_commit.save(
                    [event for _, _, events in changed for event in events]
                )
            except (IntegrityError, LifecycleError) as error:
                # Nothing of it was stored.
                named = conflicting_aggregate(error)
                rest = [entry for entry in changed if entry[0] != named]
                if named is None or len(rest) == len(changed):
                    break
                conflicted.append(named)
                changed = rest
            else:
                self._keep(account for _, account, _ in changed)
                return conflicted
        for account_id, account, events in changed:
            try:
                self.accounts.group_commit.save(events)
            except IntegrityError:
                conflicted.append(account_id)
            except LifecycleError as error:
                for index in pending[account_id]:
                    outcomes[index] = error
            else:
                self._keep([account])
        return conflicted
