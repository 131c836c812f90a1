"""The lifecycle application: commands and queries on accounts, over the event store."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import (
    Aggregate,
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
from eventsourcing.utils import get_topic

from lifecycle import event_names, tracing
from lifecycle.account_terms import REDACTED, AccountStatus, WithdrawalReason
from lifecycle.bulk_scouts import BulkScouts, ScoutItem, ScoutOutcome
from lifecycle.crypto import KEYS_TABLE, KeyVault, PersonalDataMapper, keyed_id, keyring_from_env
from lifecycle.domain import Account
from lifecycle.email_claim import EmailClaim, legacy_holder
from lifecycle.errors import (
    AccountNotFoundError,
    AccountPurgedError,
    ConcurrentUpdateError,
    KeyDestroyedError,
    LifecycleError,
)
from lifecycle.group_commit import DEFAULT_MAX_BATCH, GroupCommitWriter
from lifecycle.hot_accounts import HotAccounts
from lifecycle.idempotency import DEFAULT_TTL_S, IdempotencyStore
from lifecycle.keyring import derive
from lifecycle.pipeline_metrics import WITHDRAWAL_TO_PURGED, observe_since
from lifecycle.recorders import PostgresKeyRecorder, recorder_topic
from lifecycle.storage import Database
from lifecycle.stored_fold import KINDS, StoredFold, UnknownTopicError
from lifecycle.transcoding import OrjsonTranscoder

__all__ = ["Accounts", "KnownErasure", "ScoutItem", "ScoutOutcome"]

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


class DateAsISO(Transcoding):
    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


@dataclass(frozen=True)
class KnownErasure:
    """What outlives a restore about one purged account (the lifecycle topic's records):
    the withdrawal's reason and time and the purge's time, each None when no longer known."""

    purged_at: datetime | None = None
    reason: str | None = None
    requested_at: datetime | None = None


def _not_before(moment: datetime | None, floor: datetime) -> datetime:
    """A re-recorded event's time: as known, but never before the event it follows."""
    return max(moment or datetime.now(UTC), floor)


class Accounts(Application[UUID]):
    """Owns every member account's life, from registration to erasure."""

    name = "Accounts"
    max_attempts = MAX_ATTEMPTS
    # Stored events parse with orjson (lifecycle.transcoding); encoding stays the library's.
    env = {  # noqa: RUF012 - the library's own class attribute
        "ORIGINATOR_ID_TYPE": "uuid",
        "TRANSCODER_TOPIC": get_topic(OrjsonTranscoder),
        # Tables come from migrations (lifecycle.migrations), never from a constructor.
        "CREATE_TABLE": "n",
    }

    def __init__(
        self, env: dict[str, str] | None = None, *, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        super().__init__(env)
        if isinstance(self.recorder, PostgresKeyRecorder):
            self.recorder.key_seen = self.vault.remember_wrapped
        self.group_commit = GroupCommitWriter(self._save_now, max_batch=max_batch)
        self.hot_accounts = HotAccounts(KeyVault.CACHE_SECONDS)
        self.bulk_scouts = BulkScouts(self)
        assert isinstance(self.mapper, PersonalDataMapper)
        self._stored_fold = StoredFold(self.mapper)

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
        # Keys live outside the database (lifecycle.keyring): KEKs wrap the data keys; the
        # claim key has versions of its own, so a KEK rotation leaves every claim id as it is.
        self.keyring = keyring_from_env(self.env)
        self.vault = KeyVault(self.database, self.keyring)
        self._claim_key = self.keyring.secret("claim", self.keyring.current_version("claim"))
        # Payload fingerprints of idempotency keys: an HMAC key of their own, from the claim key.
        self.idempotency = IdempotencyStore(
            self.database,
            derive(self._claim_key, "lifecycle/idempotency-fingerprint"),
            ttl_s=float(self.env.get("IDEMPOTENCY_TTL_S") or DEFAULT_TTL_S),
        )
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
            holder = self.vault.holder_token(account.id, claim_id, new=True)
            # Most addresses were never claimed: the first attempt opens the claim without
            # looking (one round trip less); if it exists, opening it again conflicts on its
            # first version and the retry looks it up. The store's unique key decides races.
            claim = (self._find_claim(claim_id) if attempts > 1 else None) or EmailClaim.open(
                claim_id
            )
            claim.claim(holder)
            self.save(account, claim)
            return account.id

        try:
            return self._retrying(attempt)
        finally:
            self.vault.drop_fresh(account_id)

    def edit_preferences(self, account_id: UUID, **parts: Any) -> list[str]:
        return self._command(account_id, lambda account: account.edit_preferences(**parts))

    def receive_scout(
        self, account_id: UUID, *, scout_id: str, company_id: str, job_id: str
    ) -> bool:
        return self._command(
            account_id,
            lambda account: account.receive_scout(
                scout_id=scout_id,
                company_id=company_id,
                job_id=job_id,
                received_at=datetime.now(UTC),
            ),
        )

    def receive_scouts(self, items: Sequence[ScoutItem]) -> list[ScoutOutcome]:
        """Each item as `receive_scout` would record it, in order; all durable on return
        (see lifecycle.bulk_scouts)."""
        return self.bulk_scouts.receive(items)

    def claim_gift(self, account_id: UUID, *, company_id: str, start_date: date) -> None:
        self._command(
            account_id,
            lambda account: account.claim_gift(company_id=company_id, start_date=start_date),
        )

    def request_withdrawal(
        self,
        account_id: UUID,
        *,
        reason: str,
        reason_details: list[str] | None = None,
        comment: str | None = None,
        acknowledge_gift_loss: bool = False,
    ) -> bool:
        return self._command(
            account_id,
            lambda account: account.request_withdrawal(
                reason=reason,
                reason_details=reason_details,
                comment=comment,
                acknowledge_gift_loss=acknowledge_gift_loss,
            ),
        )

    def _command(self, account_id: UUID, run: Callable[[Account], T]) -> T:
        """`run` on the account and save what it recorded: on the copy this process saved a
        moment ago when it has one (lifecycle.hot_accounts), trusted only once its events
        passed the store's version check; otherwise, or when that copy recorded nothing, was
        refused or conflicted, on a fresh load, retried on conflicts."""
        if (hot := self.hot_accounts.take(account_id)) is not None:
            expires, account = hot
            try:
                result = run(account)
                if account.pending_events:
                    self.save(account)
                    self.hot_accounts.put(account, expires)
                    return result
            except (IntegrityError, LifecycleError):
                pass  # maybe stale: a fresh load decides

        def attempt() -> T:
            # The copy kept lives no longer than the key read with this load stays cached.
            expires = time.monotonic() + self.hot_accounts.seconds
            account = self.get_account(account_id)
            result = run(account)
            self.save(account)
            self.hot_accounts.put(account, expires)
            return result

        return self._retrying(attempt)

    def purge(self, account_id: UUID) -> bool:
        """Record Purged, release the e-mail and destroy the key, all in one transaction.
        The caller runs `after_purges` once after its batch."""

        def attempt() -> bool:
            account = self.load_for_audit(account_id)
            if not account.purge():
                return False
            # Tracing on: Purged continues the withdrawal's trace (the last stored event's).
            withdrawal = self._last_stored_state(account) if tracing.enabled() else None
            with tracing.continuing(withdrawal, "Account purge", str(account_id)):
                self._save_purged(account)
            if account.withdrawn_at is not None:
                observe_since(WITHDRAWAL_TO_PURGED, account.withdrawn_at)
            return True

        purged = self._retrying(attempt)
        self.hot_accounts.forget(account_id)
        self.vault.forget(account_id)
        # Kept answers hold no value, but their payload fingerprints go with the account.
        self.idempotency.erase_account(account_id)
        return purged

    def after_purges(self) -> None:
        """Once after a batch of purges: the trigger deleted the key rows, so no copy of them
        is left in SQLite's WAL (the pages are zeroed by secure_delete), and the dead tuples
        are vacuumed on PostgreSQL."""
        self.database.after_erasure([KEYS_TABLE])

    def reshred(self, known: Mapping[UUID, KnownErasure] | Iterable[UUID] = ()) -> dict[str, int]:
        """After a restore: bring every account known purged elsewhere back to `Purged`,
        whatever state the backup caught it in, then destroy every such key.

        Purges are recorded first, while the keys still open the e-mail address, so each
        account's e-mail claim is released as on any purge."""
        facts = known if isinstance(known, Mapping) else dict.fromkeys(known, KnownErasure())
        recorded = sum(
            self._purge_again(account_id, facts[account_id]) for account_id in sorted(facts)
        )
        destroyed = self.vault.destroy_keys_of_purged_accounts(facts)
        self.after_purges()
        # Each Purged recorded again took its key with it, through the same trigger.
        return {"purges_recorded_again": recorded, "keys_destroyed": recorded + destroyed}

    def _purge_again(self, account_id: UUID, facts: KnownErasure) -> bool:
        """Record what the restore lost: the withdrawal (if caught active) and the purge, at
        their known times (never before the account's last event)."""

        def attempt() -> bool:
            try:
                account = self.load_for_audit(account_id)
            except AccountNotFoundError:
                return False  # registered after the backup: nothing of it was restored
            if account.status is AccountStatus.PURGED:
                return False
            if account.status is AccountStatus.ACTIVE:
                reason = facts.reason if facts.reason in tuple(WithdrawalReason) else None
                reason = reason or WithdrawalReason.OTHER.value
                account.request_withdrawal(
                    reason=reason,
                    # The command succeeded once, so what it demanded was given.
                    acknowledge_gift_loss=(
                        reason == WithdrawalReason.HIRED_VIA_PLATFORM and account.gift is None
                    ),
                    at=_not_before(facts.requested_at or facts.purged_at, account.modified_on),
                )
            account.purge(at=_not_before(facts.purged_at, account.modified_on))
            self._save_purged(account)
            return True

        recorded = self._retrying(attempt)
        self.hot_accounts.forget(account_id)
        self.vault.forget(account_id)
        return recorded

    def _last_stored_state(self, account: Account) -> bytes | None:
        """The stored state of the account's last event before the pending ones."""
        found = self.recorder.select_events(account.id, lte=account.version - 1, desc=True, limit=1)
        return found[0].state if found else None

    def _save_purged(self, account: Account) -> None:
        """Save a purge with its e-mail claim's release, in one transaction (the key goes
        with them, through the trigger on Purged)."""
        holders = [legacy_holder(account.id)]
        if account.email == REDACTED:  # key gone before the purge (an old reshred's doing)
            claims = self._claims_held_by(account.id)
        else:
            claim = self._find_claim(keyed_id(self._claim_key, account.email))
            claims = [] if claim is None else [claim]
            try:
                holders += [self.vault.holder_token(account.id, claim.id) for claim in claims]
            except KeyDestroyedError:
                # Loaded with its key, which a concurrent purge destroyed since: that purge
                # won; the retry reloads and finds it purged.
                raise IntegrityError("purged concurrently") from None
        for claim in claims:
            claim.release(*holders)
        self.save(account, *claims)

    def _claims_held_by(self, account_id: UUID) -> list[EmailClaim]:
        """Claims this account holds, found without its address: a walk over every claim
        event (rare: only an account whose key went before its purge needs it, and only its
        claims recorded before holders were sealed name it)."""
        topic, holder = event_names.EMAIL_CLAIMED, legacy_holder(account_id)
        found: set[UUID] = set()
        start = 1
        while True:
            page = self.recorder.select_notifications(start=start, limit=1000, topics=[topic])
            for notification in page:
                event = self.mapper.to_domain_event(notification)
                if isinstance(event, EmailClaim.Claimed) and event.holder == holder:
                    found.add(event.originator_id)
            if len(page) < 1000:
                break
            start = page[-1].id + 1
        claims = [self._find_claim(claim_id) for claim_id in sorted(found)]
        return [claim for claim in claims if claim is not None and claim.is_held_by(holder)]

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
        """The account folded from its stored events by the domain's own table
        (`lifecycle.stored_fold`, proved equal to the library's fold), without building the
        library's event objects (event, mapper and protocol checks: ~100 µs of CPU for a
        four-event account against ~34 µs folded so, about a tenth of an edit's CPU)."""
        stored = self.recorder.select_events(account_id)
        try:
            aggregate = self._stored_fold.aggregate(
                (account_id, s.originator_version, s.topic, s.state) for s in stored
            )
        except UnknownTopicError:
            if stored and stored[0].topic in KINDS:  # an account with an event unknown here
                raise  # (a newer release wrote it): not "not found"
            raise AccountNotFoundError() from None  # another kind of aggregate (an export)
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
