"""The lifecycle application: commands and queries on accounts, over the event store."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar, cast
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import (
    Aggregate,
    CanMutateProtocol,
    DomainEvent,
    DomainEventProtocol,
    MutableOrImmutableAggregate,
)
from eventsourcing.persistence import (
    ApplicationRecorder,
    InfrastructureFactory,
    IntegrityError,
    JSONTranscoder,
    Mapper,
    Recording,
    Transcoding,
)

from lifecycle.crypto import KeyVault, PersonalDataMapper, decode_master_key, derive_key, keyed_id
from lifecycle.domain import (
    REDACTED,
    Account,
    AccountStatus,
    EmailClaim,
    WithdrawalReason,
)
from lifecycle.errors import (
    AccountNotFoundError,
    AccountPurgedError,
    ConcurrentUpdateError,
    LifecycleError,
)
from lifecycle.group_commit import DEFAULT_MAX_BATCH, GroupCommitWriter
from lifecycle.recorders import PostgresKeyRecorder, recorder_topic
from lifecycle.storage import Database

T = TypeVar("T")
Savable = MutableOrImmutableAggregate[UUID] | DomainEventProtocol[UUID]

# A retry fails only when another writer committed to the same aggregate in between, so each
# failure is someone else's progress: N writers racing on one account need at most N attempts.
MAX_ATTEMPTS = 16


def _collect(objs: Iterable[Savable | None]) -> ProcessingEvent[UUID]:
    """`ProcessingEvent.collect_events`, with plain class checks for our own aggregates
    and events before the library's slower runtime protocol checks."""
    processing: ProcessingEvent[UUID] = ProcessingEvent()
    for obj in objs:
        if isinstance(obj, Aggregate):
            processing.events.extend(obj.collect_events())
            processing.aggregates[obj.id] = obj
        elif isinstance(obj, DomainEvent):
            processing.events.append(obj)
        elif obj is not None:
            processing.collect_events(obj)
    return processing


@dataclass(frozen=True)
class ScoutItem:
    """One scout of a bulk request; `account_id` None: the caller's id was no UUID."""

    account_id: UUID | None
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


class DateAsISO(Transcoding):
    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


class Accounts(Application[UUID]):
    """Owns every member account's life, from registration to erasure."""

    name = "Accounts"
    env = {"ORIGINATOR_ID_TYPE": "uuid"}  # noqa: RUF012 - the library's own class attribute

    def __init__(
        self, env: dict[str, str] | None = None, *, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        super().__init__(env)
        self.vault.create_schema()
        if isinstance(self.recorder, PostgresKeyRecorder):
            self.recorder.key_seen = self.vault.remember_wrapped
        self.group_commit = GroupCommitWriter(self._save_now, max_batch=max_batch)

    def save(
        self,
        *objs: MutableOrImmutableAggregate[UUID] | DomainEventProtocol[UUID] | None,
        **kwargs: Any,
    ) -> list[Recording[UUID]]:
        """Concurrent callers' saves share one transaction (see lifecycle.group_commit)."""
        if kwargs:
            return self._save_now(*objs, **kwargs)
        collected = _collect(objs)
        return self.group_commit.save(collected.events, list(collected.aggregates.values()))

    def _save_now(
        self,
        *objs: MutableOrImmutableAggregate[UUID] | DomainEventProtocol[UUID] | None,
        **kwargs: Any,
    ) -> list[Recording[UUID]]:
        # Application.save, without its second pass over the objects through runtime
        # protocol checks (about a third of a registration's Python time).
        processing = _collect(objs)
        processing.saved_kwargs.update(kwargs)
        recordings = self._record(processing)
        self._take_snapshots(processing)
        self._notify(recordings)
        self.notify(processing.events)  # The library's deprecated hook, as save calls it.
        return recordings

    def construct_mapper(self) -> Mapper[UUID]:
        self.database = Database.of(self.factory, self.name)
        master_key = decode_master_key(self.env.get("MASTER_KEY", ""))
        self.vault = KeyVault(self.database, master_key)
        self._claim_key = derive_key(master_key, "lifecycle/email-claim-id")
        return PersonalDataMapper(transcoder=self.construct_transcoder(), vault=self.vault)

    def construct_recorder(self) -> ApplicationRecorder:
        # New accounts' keys are written by the recorder, in the events' transaction.
        env = self.factory.env
        topic = recorder_topic(self.factory)
        if topic and not env.get(InfrastructureFactory.APPLICATION_RECORDER_TOPIC):
            env[InfrastructureFactory.APPLICATION_RECORDER_TOPIC] = topic
        return super().construct_recorder()

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())

    # Commands

    def register(self, **fields: Any) -> UUID:
        account_id = uuid4()
        attempts = 0

        def attempt() -> UUID:
            nonlocal attempts
            attempts += 1
            # Built afresh each time: a failed save has already taken the pending events.
            account = Account.register(account_id=account_id, **fields)
            claim_id = keyed_id(self._claim_key, account.email)
            # Most addresses were never claimed: the first attempt opens the claim without
            # looking (one round trip less); if it exists, opening it again conflicts on its
            # first version and the retry looks it up. The store's unique key decides races.
            claim = (self._find_claim(claim_id) if attempts > 1 else None) or EmailClaim.open(
                claim_id
            )
            claim.claim(account.id)
            self.save(account, claim)
            return account.id

        return self._retrying(attempt)

    def edit_preferences(self, account_id: UUID, **parts: Any) -> list[str]:
        def attempt() -> list[str]:
            account = self.get_account(account_id)
            changed = account.edit_preferences(**parts)
            self.save(account)
            return changed

        return self._retrying(attempt)

    def receive_scout(
        self, account_id: UUID, *, scout_id: str, company_id: str, job_id: str
    ) -> bool:
        def attempt() -> bool:
            account = self.get_account(account_id)
            recorded = account.receive_scout(
                scout_id=scout_id,
                company_id=company_id,
                job_id=job_id,
                received_at=datetime.now(UTC),
            )
            self.save(account)
            return recorded

        return self._retrying(attempt)

    def receive_scouts(self, items: Sequence[ScoutItem]) -> list[ScoutOutcome]:
        """Each item as `receive_scout` would record it, in order; all durable on return.

        The new events of every account go to the store together (one transaction through
        the group-commit writer). An item's own refusal touches no other item; if the
        batch conflicts (another writer moved an account on), each account is saved alone
        and only those that conflicted are reloaded and tried again.
        """
        outcomes: list[ScoutOutcome] = [False] * len(items)
        pending: dict[UUID, list[int]] = {}
        for index, item in enumerate(items):
            if item.account_id is None:
                outcomes[index] = AccountNotFoundError()
            else:
                pending.setdefault(item.account_id, []).append(index)
        received_at = datetime.now(UTC)
        for _ in range(MAX_ATTEMPTS):
            if not pending:
                return outcomes
            changed: list[tuple[UUID, Account, Sequence[DomainEventProtocol[UUID]]]] = []
            loaded = self._load_accounts(list(pending))
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
            conflicted = self._save_accounts(changed, outcomes, pending)
            pending = {account_id: pending[account_id] for account_id in conflicted}
        for indexes in pending.values():
            for index in indexes:
                outcomes[index] = ConcurrentUpdateError()
        return outcomes

    def _load_accounts(self, account_ids: list[UUID]) -> dict[UUID, Account | LifecycleError]:
        """Each account as `get_account` gives it (or its error); on PostgreSQL all of them
        with their keys in one round trip instead of one each."""
        select_many = getattr(self.recorder, "select_events_of_many", None)
        if select_many is None:
            return {account_id: self._account_or_error(account_id) for account_id in account_ids}
        found: dict[UUID, list[Any]] = select_many(account_ids)
        loaded: dict[UUID, Account | LifecycleError] = {}
        for account_id in account_ids:
            account: Aggregate | None = None
            for stored in found.get(account_id, ()):
                # The library's projector, without its runtime protocol check per event.
                event = cast(CanMutateProtocol[Aggregate], self.mapper.to_domain_event(stored))
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
            return self.get_account(account_id)
        except LifecycleError as error:
            return error

    def _save_accounts(
        self,
        changed: list[tuple[UUID, Account, Sequence[DomainEventProtocol[UUID]]]],
        outcomes: list[ScoutOutcome],
        pending: dict[UUID, list[int]],
    ) -> list[UUID]:
        """Save all, or else each alone; returns the accounts that conflicted (to retry).
        An account whose save failed with an error of ours refuses its items with it."""
        if len(changed) > 1:
            try:
                self.group_commit.save(
                    [event for _, _, events in changed for event in events],
                    [account for _, account, _ in changed],
                )
                return []
            except (IntegrityError, LifecycleError):
                pass  # Nothing of it was stored: each account alone finds out which failed.
        conflicted: list[UUID] = []
        for account_id, account, events in changed:
            try:
                self.group_commit.save(events, [account])
            except IntegrityError:
                conflicted.append(account_id)
            except LifecycleError as error:
                for index in pending[account_id]:
                    outcomes[index] = error
        return conflicted

    def claim_gift(self, account_id: UUID, *, company_id: str, start_date: date) -> None:
        def attempt() -> None:
            account = self.get_account(account_id)
            account.claim_gift(company_id=company_id, start_date=start_date)
            self.save(account)

        self._retrying(attempt)

    def request_withdrawal(
        self,
        account_id: UUID,
        *,
        reason: str,
        comment: str | None = None,
        acknowledge_gift_loss: bool = False,
    ) -> bool:
        def attempt() -> bool:
            account = self.get_account(account_id)
            requested = account.request_withdrawal(
                reason=reason, comment=comment, acknowledge_gift_loss=acknowledge_gift_loss
            )
            self.save(account)
            return requested

        return self._retrying(attempt)

    def purge(self, account_id: UUID) -> bool:
        """Record Purged, release the e-mail and destroy the key, all in one transaction."""

        def attempt() -> bool:
            account = self.load_for_audit(account_id)
            if not account.purge():
                return False
            claim = self._find_claim(keyed_id(self._claim_key, account.email))
            if claim is not None:
                claim.release(account.id)
            self.save(account, claim)
            return True

        purged = self._retrying(attempt)
        self.vault.forget(account_id)
        return purged

    def reshred(self, also_purged: Iterable[UUID] = ()) -> dict[str, int]:
        """After a restore: purge again what is known purged elsewhere, destroy every such key."""
        known = set(also_purged)
        recorded = 0
        for account_id in sorted(known):
            try:
                account = self.load_for_audit(account_id)
            except AccountNotFoundError:
                continue
            # A restore from between withdrawal and purge brings the account back withdrawing.
            if account.status is AccountStatus.WITHDRAWING and self.purge(account_id):
                recorded += 1
        destroyed = self.vault.destroy_keys_of_purged_accounts(known)
        # Each Purged recorded again took its key with it, through the same trigger.
        return {"purges_recorded_again": recorded, "keys_destroyed": recorded + destroyed}

    # Queries

    def get_account(self, account_id: UUID) -> Account:
        """The account as it stands; a purged account is gone for every caller but audit."""
        account = self.load_for_audit(account_id)
        if account.status is AccountStatus.PURGED:
            raise AccountPurgedError()
        return account

    def withdrawal_preview(self, account_id: UUID) -> dict[str, Any]:
        account = self.get_account(account_id)
        return {
            "status": account.status.value,
            "gift_claimed": account.gift is not None,
            "gift_eligible": account.gift_eligible,
            "gift_lost_on_withdrawal": account.gift_eligible,
            "scouts_received": len(account.scouts),
            "re_registration_starts_from_nothing": True,
            "reasons": [reason.value for reason in WithdrawalReason],
        }

    def load_for_audit(self, account_id: UUID) -> Account:
        """Any account, purged ones too (personal fields then read as redacted)."""
        account = self._load_once(account_id)
        if account.status is AccountStatus.PURGED and account.email != REDACTED:
            # Purged by another process while this one still had the key cached.
            self.vault.forget(account_id)
            account = self._load_once(account_id)
        return account

    def _load_once(self, account_id: UUID) -> Account:
        try:
            aggregate: object = self.repository.get(account_id)
        except AggregateNotFoundError:
            raise AccountNotFoundError() from None
        if not isinstance(aggregate, Account):
            raise AccountNotFoundError()
        return aggregate

    def _find_claim(self, claim_id: UUID) -> EmailClaim | None:
        try:
            claim: object = self.repository.get(claim_id)
        except AggregateNotFoundError:
            return None
        assert isinstance(claim, EmailClaim)
        return claim

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Optimistic concurrency: reload and retry a few times, then give up with 409."""
        for _ in range(MAX_ATTEMPTS):
            try:
                return attempt()
            except IntegrityError:
                continue
        raise ConcurrentUpdateError()
