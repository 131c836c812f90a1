"""Operations (role `ops`): accounts, erasures, statistics, projections, consumers, dead letters.

Everything here reads read models (`projections/`), never aggregates, except an account's
timeline, which reads its stored events through `FactsMapper` (no personal values). On the
embedded default (SQLite) nothing else runs the projections, so each read brings the read
model it uses up to date first; on PostgreSQL `lifecycle project` keeps them current and
`GET /projections` shows how far behind they are.

Kafka is reached through `KafkaInspector`, a small adapter over kafka-python's admin client
and consumer; without Kafka configured it answers with empty results.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal, Protocol, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, Field

from lifecycle.api.auth import OpsCaller, require_role
from lifecycle.api.problems import NotReadyError, problem_responses, request_id_of
from lifecycle.api.routes import AccountsDep
from lifecycle.api.routes.accounts import AccountId
from lifecycle.application import Accounts
from lifecycle.domain import Account, AccountStatus
from lifecycle.erasure import CONFIRMED, ErasureProcess
from lifecycle.errors import AccountNotFoundError, ConflictError, InvalidCommandError
from lifecycle.logs import get_logger
from lifecycle.settings import Settings
from lifecycle.storage import Database
from projections.base import SHADOW_SUFFIX, ReadModel, facts_mapper
from projections.directory import AccountDirectory
from projections.erasure import ERASURE_FILTERS, ErasureQuery, ErasureRetries, ErasureStatus
from projections.registry import read_model_classes
from projections.runner import Projector
from projections.statistics import GiftClaims, ScoutsPerCompany, WithdrawalReasons
from schemas.contract import ERASING_SERVICES, TopicNames

log = get_logger(__name__)
M = TypeVar("M", bound=ReadModel)

router = APIRouter(
    prefix="/admin/v1",
    tags=["admin"],
    dependencies=[Depends(require_role("ops"))],
    responses=problem_responses(401, 403),
)

DLQ_PREFIX = "dlq_"


# Shared parts, built once per app


class KafkaUnavailableError(NotReadyError):
    code = "kafka_unavailable"


@dataclass
class AdminState:
    """What the admin routes build once per app: live read models and their locks."""

    accounts: Accounts
    settings: Settings
    models: dict[str, ReadModel] = field(default_factory=dict)
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    erasure: ErasureProcess | None = None
    guard: threading.Lock = field(default_factory=threading.Lock)

    def model(self, model_class: type[M]) -> M:
        with self.guard:
            model = self.models.get(model_class.name)
            if model is None:
                model = model_class(self.accounts.database)
                model.create()
                self.models[model_class.name] = model
                self.locks[model_class.name] = threading.Lock()
        if self.settings.is_embedded:
            # Nothing else projects on the embedded default: bring it up to date first.
            with self.locks[model_class.name]:
                Projector(self.accounts, model).catch_up()
        assert isinstance(model, model_class)
        return model

    def erasure_process(self) -> ErasureProcess:
        with self.guard:
            if self.erasure is None:
                self.erasure = ErasureProcess(
                    self.accounts, timedelta(hours=self.settings.erasure_deadline_hours)
                )
                ErasureRetries(self.accounts.database).create_table()
        return self.erasure


_state_guard = threading.Lock()


def admin_state(request: Request, accounts: AccountsDep) -> AdminState:
    with _state_guard:
        found: AdminState | None = getattr(request.app.state, "admin", None)
        if found is None or found.accounts is not accounts:
            found = AdminState(accounts, request.app.state.settings)
            request.app.state.admin = found
    return found


AdminDep = Annotated[AdminState, Depends(admin_state)]


# Kafka


@dataclass(frozen=True)
class DeadLetter:
    group: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    headers: list[tuple[str, bytes]]
    value: bytes | None

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name and value is not None:
                return value.decode(errors="replace")
        return None


class KafkaInspector(Protocol):
    """What the admin routes need from Kafka; `NoKafka` when it is not configured."""

    configured: bool
    topics: TopicNames

    def check(self) -> None:
        """Raise when the brokers do not answer."""

    def group_lag(self) -> list[dict[str, Any]]: ...

    def dead_letters(self, group: str, limit: int, skip: set[tuple[int, int]]) -> list[DeadLetter]:
        """Records on the group's dead-letter topic, oldest first, except those in `skip`."""
        ...

    def dead_letter(self, group: str, partition: int, offset: int) -> DeadLetter | None: ...

    def publish(self, topic: str, key: bytes, headers: list[tuple[str, bytes]], value: Any) -> None:
        """Publish one record and wait for the broker's acknowledgement."""


class NoKafka:
    configured = False
    topics = TopicNames()

    def check(self) -> None:
        return None

    def group_lag(self) -> list[dict[str, Any]]:
        return []

    def dead_letters(self, group: str, limit: int, skip: set[tuple[int, int]]) -> list[DeadLetter]:
        return []

    def dead_letter(self, group: str, partition: int, offset: int) -> DeadLetter | None:
        return None

    def publish(self, topic: str, key: bytes, headers: list[tuple[str, bytes]], value: Any) -> None:
        raise KafkaUnavailableError(detail="Kafka is not configured")


class KafkaAdapter:
    """kafka-python, one short-lived client per call: admin actions are rare."""

    configured = True

    def __init__(self, bootstrap: str, topics: TopicNames, timeout_s: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.timeout_ms = int(timeout_s * 1000)

    def _admin(self) -> Any:
        from kafka.admin import KafkaAdminClient

        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id="lifecycle-admin-api",
            request_timeout_ms=self.timeout_ms,
            bootstrap_timeout_ms=self.timeout_ms,
        )

    def _consumer(self) -> Any:
        from kafka import KafkaConsumer

        return KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="lifecycle-admin-api",
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=self.timeout_ms + 1000,
            bootstrap_timeout_ms=self.timeout_ms,
        )

    def check(self) -> None:
        from kafka.errors import KafkaError

        try:
            admin = self._admin()
        except KafkaError as error:
            raise KafkaUnavailableError(
                detail=f"Kafka unreachable ({type(error).__name__})"
            ) from None
        admin.close()

    def group_lag(self) -> list[dict[str, Any]]:
        from kafka.protocol.consumer.offsets import OffsetSpec

        groups = {f"{self.topics.prefix}{name}": name for name in self.topics.consumer_groups}
        admin = self._admin()
        try:
            committed: dict[str, dict[Any, Any]] = {}
            for group in groups:
                committed[group] = admin.list_group_offsets({group: None}).get(group, {})
            partitions = {tp for offsets in committed.values() for tp in offsets}
            ends = (
                admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
                if partitions
                else {}
            )
        finally:
            admin.close()
        result = []
        for group, service in groups.items():
            rows = []
            for tp, meta in sorted(committed[group].items()):
                end = int(ends[tp].offset) if tp in ends else None
                at = int(meta.offset)
                rows.append(
                    {
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "committed": at,
                        "end": end,
                        "lag": None if end is None or at < 0 else max(0, end - at),
                    }
                )
            result.append(
                {
                    "group": group,
                    "service": service,
                    "lag": sum(row["lag"] or 0 for row in rows),
                    "state": "ok" if rows else "no_committed_offsets",
                    "partitions": rows,
                }
            )
        return result

    def _partitions(self, consumer: Any, topic: str) -> list[Any]:
        from kafka import TopicPartition

        return [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]

    def _read(self, consumer: Any, partitions: list[Any], until: dict[Any, int]) -> Iterator[Any]:
        """Records up to the end offsets taken at the start, within the timeout."""
        import time

        deadline = time.monotonic() + self.timeout_ms / 1000
        remaining = {tp for tp in partitions if until[tp] > consumer.position(tp)}
        while remaining and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                for record in records:
                    if record.offset < until[tp]:
                        yield record
                if consumer.position(tp) >= until[tp]:
                    remaining.discard(tp)

    def dead_letters(self, group: str, limit: int, skip: set[tuple[int, int]]) -> list[DeadLetter]:
        topic = self.topics.dlq(group)
        consumer = self._consumer()
        try:
            partitions = self._partitions(consumer, topic)
            if not partitions:
                return []
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            ends = consumer.end_offsets(partitions)
            found: list[DeadLetter] = []
            for record in self._read(consumer, partitions, ends):
                if (record.partition, record.offset) in skip:
                    continue
                found.append(_dead_letter(group, record))
                if len(found) >= limit:
                    break
            return sorted(found, key=lambda d: (d.timestamp_ms or 0, d.partition, d.offset))
        finally:
            consumer.close()

    def dead_letter(self, group: str, partition: int, offset: int) -> DeadLetter | None:
        from kafka import TopicPartition

        topic = self.topics.dlq(group)
        consumer = self._consumer()
        try:
            if partition not in (consumer.partitions_for_topic(topic) or ()):
                return None
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            end = consumer.end_offsets([tp])[tp]
            first = consumer.beginning_offsets([tp])[tp]
            if not first <= offset < end:
                return None
            consumer.seek(tp, offset)
            for record in self._read(consumer, [tp], {tp: offset + 1}):
                if record.offset == offset:
                    return _dead_letter(group, record)
            return None
        finally:
            consumer.close()

    def publish(self, topic: str, key: bytes, headers: list[tuple[str, bytes]], value: Any) -> None:
        from lifecycle.kafka.producer import KafkaPublisher, PublishError

        publisher = KafkaPublisher(self.bootstrap, client_id="lifecycle-admin-api")
        try:
            publisher.publish(topic, key, headers, value)
            publisher.flush()
        except PublishError as error:
            raise KafkaUnavailableError(
                detail=f"Kafka refused the record ({error.cause})"
            ) from None
        finally:
            publisher.close()


def _dead_letter(group: str, record: Any) -> DeadLetter:
    return DeadLetter(
        group=group,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp if record.timestamp and record.timestamp > 0 else None,
        key=record.key,
        headers=list(record.headers or []),
        value=record.value,
    )


def kafka_inspector(request: Request) -> KafkaInspector:
    """The app's Kafka adapter (tests may set `app.state.kafka`), or NoKafka."""
    found: KafkaInspector | None = getattr(request.app.state, "kafka", None)
    if found is not None:
        return found
    settings: Settings = request.app.state.settings
    if not settings.kafka_bootstrap:
        return NoKafka()
    return KafkaAdapter(settings.kafka_bootstrap, TopicNames())


KafkaDep = Annotated[KafkaInspector, Depends(kafka_inspector)]


class DeadLetterActions:
    """What ops did with each dead letter: Kafka cannot delete one record, so a discarded or
    re-driven record stays on its topic (until retention) and is hidden from the list."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.table = database.table("dead_letter_actions")
        with database.ddl() as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                "topic TEXT NOT NULL, partition INTEGER NOT NULL, record_offset BIGINT NOT NULL, "
                f"action TEXT NOT NULL, acted_at {database.timestamp_type} NOT NULL "
                f"DEFAULT {database.now}, PRIMARY KEY (topic, partition, record_offset))"
            )

    def done(self, topic: str) -> set[tuple[int, int]]:
        with self.database.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT partition, record_offset FROM {self.table} WHERE topic = %s", (topic,)
            ).fetchall()
        return {(int(p), int(o)) for p, o in rows}

    def claim(self, topic: str, partition: int, offset: int, action: str) -> bool:
        """Record the action; False when this record was already handled."""
        with self.database.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO {self.table} (topic, partition, record_offset, action) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (topic, partition, offset, action),
            )
            return cursor.rowcount > 0

    def release(self, topic: str, partition: int, offset: int) -> None:
        with self.database.transaction() as cursor:
            cursor.execute(
                f"DELETE FROM {self.table} WHERE topic = %s AND partition = %s "
                "AND record_offset = %s",
                (topic, partition, offset),
            )


# Response models


class StatusCounts(BaseModel):
    active: int
    withdrawing: int
    purged: int


class DirectoryEntry(BaseModel):
    account_id: UUID
    status: str
    registered_at: datetime
    channel: str
    consent_version: str
    version: int
    updated_at: datetime
    scouts_received: int
    gift_claimed_at: datetime | None
    withdrawn_at: datetime | None
    withdrawal_reason: str | None
    purged_at: datetime | None


class AccountPage(BaseModel):
    counts: StatusCounts
    items: list[DirectoryEntry]
    next_after: UUID | None = Field(description="Pass as `after` for the next page.")


class TimelineEntry(BaseModel):
    version: int
    event: str
    timestamp: datetime
    facts: dict[str, Any] = Field(description="Lifecycle facts only, never personal values.")


class Timeline(BaseModel):
    account_id: UUID
    status: str
    events: list[TimelineEntry]


class ServiceErasure(BaseModel):
    state: str = Field(description="pending, confirmed, failed or retry_requested")
    rows_removed: int | None
    error_code: str | None
    recorded_at: datetime | None
    retries: int
    last_retry_at: datetime | None


class Erasure(BaseModel):
    account_id: UUID
    state: str = Field(description="requested or purged")
    reason: str
    requested_at: datetime
    deadline_at: datetime
    purged_at: datetime | None
    overdue: bool
    errored: bool
    services: dict[str, ServiceErasure]


class ErasureCounts(BaseModel):
    open: int
    errored: int
    overdue: int
    purged: int


class ErasurePage(BaseModel):
    counts: ErasureCounts
    items: list[Erasure]
    next_after: UUID | None


class RetryRequested(BaseModel):
    account_id: UUID
    service: str
    attempts: int
    redelivered: bool = Field(
        description="The WithdrawalRequested record went to Kafka again (same ce_id): a "
        "service that never handled it does now; the others skip it as a duplicate."
    )


class ProjectionState(BaseModel):
    name: str
    position: int
    lag: int
    rebuilding_position: int | None = Field(
        description="Position of a rebuild in progress (shadow tables), if any."
    )


class Projections(BaseModel):
    head: int
    projections: list[ProjectionState]


class DeadLetterOut(BaseModel):
    group: str
    topic: str
    partition: int
    offset: int
    timestamp: datetime | None
    key: str | None
    ce_id: str | None
    ce_type: str | None
    error_type: str | None
    error_code: str | None
    source_topic: str | None
    attempts: int | None
    value_bytes: int = Field(description="Size of the value; the value itself is never shown.")

    @classmethod
    def of(cls, record: DeadLetter) -> DeadLetterOut:
        attempts = record.header("dlq_attempts")
        return cls(
            group=record.group,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
            if record.timestamp_ms
            else None,
            key=record.key.decode(errors="replace") if record.key else None,
            ce_id=record.header("ce_id"),
            ce_type=record.header("ce_type"),
            error_type=record.header("dlq_error_type"),
            error_code=record.header("dlq_error_code"),
            source_topic=record.header("dlq_source_topic"),
            attempts=int(attempts) if attempts and attempts.isdigit() else None,
            value_bytes=len(record.value or b""),
        )


class DeadLetterAction(BaseModel):
    group: str
    partition: int
    offset: int
    action: Literal["redriven", "discarded"]
    republished_to: str | None


# Accounts


Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("/accounts", summary="Accounts by status (read model), a page at a time")
def list_accounts(
    admin: AdminDep,
    status_: Annotated[AccountStatus | None, Query(alias="status")] = None,
    after: UUID | None = None,
    limit: Limit = 100,
) -> AccountPage:
    directory = admin.model(AccountDirectory)
    items = directory.page(
        status=None if status_ is None else status_.value, after=after, limit=limit
    )
    return AccountPage(
        counts=StatusCounts(**directory.counts_by_status()),
        items=[DirectoryEntry(**item) for item in items],
        next_after=items[-1]["account_id"] if len(items) == limit else None,
    )


@router.get(
    "/accounts/{account_id}/timeline",
    summary="One account's events: versions, times and facts, no personal values",
    responses=problem_responses(404),
)
def account_timeline(account_id: AccountId, accounts: AccountsDep) -> Timeline:
    mapper = facts_mapper(accounts.mapper)
    stored = accounts.recorder.select_events(account_id)
    events: list[Any] = [mapper.to_domain_event(event) for event in stored]
    if not events or not isinstance(events[0], Account.Registered):
        raise AccountNotFoundError()
    status_ = AccountStatus.ACTIVE
    entries = []
    for event in events:
        if isinstance(event, Account.WithdrawalRequested):
            status_ = AccountStatus.WITHDRAWING
        elif isinstance(event, Account.Purged):
            status_ = AccountStatus.PURGED
        entries.append(
            TimelineEntry(
                version=event.originator_version,
                event=type(event).__name__,
                timestamp=event.timestamp,
                facts=timeline_facts(event),
            )
        )
    return Timeline(account_id=account_id, status=status_.value, events=entries)


def timeline_facts(event: Any) -> dict[str, Any]:
    match event:
        case Account.Registered():
            return {"channel": event.channel, "consent_version": event.consent_version}
        case Account.PreferencesEdited():
            return {"changed_parts": event.changed_parts}
        case Account.ScoutReceived():
            return {
                "scout_id": event.scout_id,
                "company_id": event.company_id,
                "job_id": event.job_id,
            }
        case Account.GiftClaimed():
            return {
                "company_id": event.company_id,
                "start_date": event.start_date,
                "gift_kind": event.gift_kind,
                "amount_jpy": event.amount_jpy,
            }
        case Account.WithdrawalRequested():
            return {
                "reason": event.reason,
                "gift_forfeited": event.gift_forfeited,
                "acknowledged_gift_loss": event.acknowledged_gift_loss,
                "comment_given": event.comment is not None,
            }
    return {}


# Erasures


@router.get("/erasures", summary="Erasures open, pending, errored, overdue or purged")
def list_erasures(
    admin: AdminDep,
    state: Annotated[
        Literal["open", "pending", "errored", "overdue", "purged", "all"],
        Query(description=f"One of {', '.join(ERASURE_FILTERS)}; `open`: not yet purged."),
    ] = "open",
    after: UUID | None = None,
    limit: Limit = 100,
) -> ErasurePage:
    query = _erasure_query(admin)
    items = query.page(state, after=after, limit=limit)
    return ErasurePage(
        counts=ErasureCounts(**query.counts()),
        items=[Erasure(**item) for item in items],
        next_after=items[-1]["account_id"] if len(items) == limit else None,
    )


@router.get(
    "/erasures/{account_id}",
    summary="One account's erasure, per service",
    responses=problem_responses(404),
)
def get_erasure(account_id: AccountId, admin: AdminDep) -> Erasure:
    found = _erasure_query(admin).get(account_id)
    if found is None:
        raise AccountNotFoundError(detail="no erasure was requested for this account")
    return Erasure(**found)


@router.post(
    "/erasures/{account_id}/services/{service}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Ask one lagging service again to erase the account",
    description=(
        "Records the request (shown as `retry_requested` until the service confirms) and, "
        "with Kafka configured, publishes the account's WithdrawalRequested record again with "
        "its original `ce_id`: a service that never handled it (dead-lettered, or behind) "
        "erases and confirms; services that did skip it as a duplicate."
    ),
    responses=problem_responses(404, 409, 422, 503),
)
def retry_erasure(
    account_id: AccountId,
    *,
    service: Annotated[str, Path(description=f"One of {', '.join(ERASING_SERVICES)}.")],
    admin: AdminDep,
    kafka: KafkaDep,
    caller: OpsCaller,
    request: Request,
) -> RetryRequested:
    if service not in ERASING_SERVICES:
        raise InvalidCommandError("unknown_service", detail=f"unknown service {service!r}")
    erasure = _erasure_query(admin).get(account_id)
    if erasure is None:
        raise AccountNotFoundError(detail="no erasure was requested for this account")
    if erasure["purged_at"] is not None:
        raise ConflictError("erasure_complete", detail="the account is already purged")
    if erasure["services"][service]["state"] == CONFIRMED:
        raise ConflictError("service_confirmed", detail=f"{service} already confirmed")
    attempts = ErasureRetries(admin.accounts.database).request(account_id, service)
    redelivered = False
    if kafka.configured:
        topic, key, headers, value = withdrawal_record(admin.accounts, account_id, kafka.topics)
        kafka.publish(topic, key, headers, value)
        redelivered = True
    log.info(
        "erasure.retry_requested",
        account_id=str(account_id),
        service=service,
        attempts=attempts,
        redelivered=redelivered,
        role=caller.role,
        request_id=request_id_of(request),
    )
    return RetryRequested(
        account_id=account_id, service=service, attempts=attempts, redelivered=redelivered
    )


def withdrawal_record(
    accounts: Accounts, account_id: UUID, topics: TopicNames | None = None
) -> tuple[str, bytes, list[tuple[str, bytes]], bytes | None]:
    """The account's WithdrawalRequested record exactly as the relay published it."""
    from lifecycle.relay import lifecycle_payload
    from schemas.contract import encode_record, lifecycle_event_id

    mapper = facts_mapper(accounts.mapper)
    for stored in accounts.recorder.select_events(account_id, desc=True):
        event = mapper.to_domain_event(stored)
        if isinstance(event, Account.WithdrawalRequested):
            payload = lifecycle_payload(event)
            assert payload is not None
            record = encode_record(
                payload,
                ce_id=lifecycle_event_id(account_id, event.originator_version),
                subject=str(account_id),
                time=event.timestamp,
            )
            return (topics or TopicNames()).lifecycle, record.key, record.headers, record.value
    raise ConflictError("erasure_not_requested", detail="withdrawal was never requested")


def _erasure_query(admin: AdminState) -> ErasureQuery:
    admin.erasure_process()
    return ErasureQuery(
        admin.model(ErasureStatus), timedelta(hours=admin.settings.erasure_deadline_hours)
    )


# Statistics


class WeeklyReasons(BaseModel):
    week_start: date = Field(description="Monday of the week, JST.")
    reason: str
    withdrawals: int
    gifts_forfeited: int


class MonthlyGifts(BaseModel):
    month: str = Field(description="YYYY-MM, JST.")
    company_id: str
    claims: int
    amount_jpy: int


class CompanyScouts(BaseModel):
    company_id: str
    scouts: int
    members: int
    first_scout_at: datetime
    last_scout_at: datetime


@router.get("/stats/withdrawal-reasons", summary="Withdrawals per reason per week (JST)")
def withdrawal_reasons(
    admin: AdminDep,
    since: Annotated[date | None, Query(description="First week (inclusive).")] = None,
    until: Annotated[date | None, Query(description="End (exclusive).")] = None,
) -> list[WeeklyReasons]:
    rows = admin.model(WithdrawalReasons).weekly(_iso(since), _iso(until))
    return [WeeklyReasons(**row) for row in rows]


@router.get("/stats/gifts", summary="Gifts claimed per month and company (JST)")
def gift_statistics(
    admin: AdminDep,
    since: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$", description="YYYY-MM")] = None,
    until: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$", description="YYYY-MM")] = None,
) -> list[MonthlyGifts]:
    return [MonthlyGifts(**row) for row in admin.model(GiftClaims).monthly(since, until)]


@router.get("/stats/scouts", summary="Scouts per company, and to how many members")
def scout_statistics(
    admin: AdminDep, after: str | None = None, limit: Limit = 100
) -> list[CompanyScouts]:
    rows = admin.model(ScoutsPerCompany).companies(limit=limit, after=after)
    return [CompanyScouts(**row) for row in rows]


def _iso(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


# Projections, consumers, dead letters


@router.get("/projections", summary="Read models' positions and lag behind the log")
def projections(accounts: AccountsDep) -> Projections:
    return Projections(**projection_states(accounts))


def projection_states(accounts: Accounts) -> dict[str, Any]:
    head = accounts.recorder.max_notification_id() or 0
    states = []
    for model_class in read_model_classes():
        model = model_class(accounts.database)
        position = model.position() if model.exists() else 0
        states.append(
            {
                "name": model_class.name,
                "position": position,
                "lag": max(0, head - position),
                "rebuilding_position": _shadow_position(accounts, model_class),
            }
        )
    return {"head": head, "projections": states}


def _shadow_position(accounts: Accounts, model_class: type[ReadModel]) -> int | None:
    shadow = model_class(accounts.database, suffix=SHADOW_SUFFIX)
    return shadow.position() if shadow.exists() else None


class PartitionLag(BaseModel):
    topic: str
    partition: int
    committed: int
    end: int | None
    lag: int | None


class GroupLag(BaseModel):
    group: str
    service: str
    lag: int = Field(description="Records not yet consumed, summed over partitions.")
    state: Literal["ok", "no_committed_offsets"]
    partitions: list[PartitionLag]


@router.get("/consumers", summary="Consumer-group lag per downstream service (Kafka)")
def consumers(kafka: KafkaDep) -> list[GroupLag]:
    return [GroupLag(**group) for group in kafka.group_lag()]


def _group(group: str) -> str:
    if group not in TopicNames().consumer_groups:
        raise InvalidCommandError(
            "unknown_consumer_group",
            detail=f"expected one of {', '.join(TopicNames().consumer_groups)}",
        )
    return group


@router.get(
    "/dead-letters/{group}",
    summary="Dead letters of one consumer group, not yet re-driven or discarded",
    responses=problem_responses(422),
)
def dead_letters(
    group: str, kafka: KafkaDep, accounts: AccountsDep, limit: Limit = 100
) -> list[DeadLetterOut]:
    _group(group)
    topic = _dlq_topic(kafka, group)
    handled = DeadLetterActions(accounts.database).done(topic)
    return [DeadLetterOut.of(record) for record in kafka.dead_letters(group, limit, handled)]


def _dlq_topic(kafka: KafkaInspector, group: str) -> str:
    return kafka.topics.dlq(group)


def _handle_dead_letter(
    kafka: KafkaInspector,
    *,
    accounts: Accounts,
    group: str,
    partition: int,
    offset: int,
    action: Literal["redriven", "discarded"],
    request: Request,
) -> DeadLetterAction:
    _group(group)
    record = kafka.dead_letter(group, partition, offset)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such dead letter")
    actions = DeadLetterActions(accounts.database)
    source = record.header("dlq_source_topic")
    if action == "redriven" and not source:
        raise InvalidCommandError("no_source_topic", detail="the record names no source topic")
    if not actions.claim(record.topic, partition, offset, action):
        raise ConflictError("dead_letter_handled", detail="this dead letter was already handled")
    if action == "redriven":
        assert source is not None
        headers = [(k, v) for k, v in record.headers if not k.startswith(DLQ_PREFIX)]
        try:
            kafka.publish(source, record.key or b"", headers, record.value)
        except BaseException:
            actions.release(record.topic, partition, offset)
            raise
    log.info(
        "dead_letter." + action,
        group=group,
        partition=partition,
        offset=offset,
        ce_id=record.header("ce_id"),
        request_id=request_id_of(request),
    )
    return DeadLetterAction(
        group=group,
        partition=partition,
        offset=offset,
        action=action,
        republished_to=source if action == "redriven" else None,
    )


@router.post(
    "/dead-letters/{group}/{partition}/{offset}/redrive",
    summary="Publish one dead letter again to its source topic (without dlq_* headers)",
    responses=problem_responses(404, 409, 422, 503),
)
def redrive_dead_letter(
    group: str,
    *,
    partition: int,
    offset: int,
    kafka: KafkaDep,
    accounts: AccountsDep,
    request: Request,
) -> DeadLetterAction:
    return _handle_dead_letter(
        kafka,
        accounts=accounts,
        group=group,
        partition=partition,
        offset=offset,
        action="redriven",
        request=request,
    )


@router.post(
    "/dead-letters/{group}/{partition}/{offset}/discard",
    summary="Mark one dead letter discarded (it leaves the list; retention removes it)",
    responses=problem_responses(404, 409, 422),
)
def discard_dead_letter(
    group: str,
    *,
    partition: int,
    offset: int,
    kafka: KafkaDep,
    accounts: AccountsDep,
    request: Request,
) -> DeadLetterAction:
    return _handle_dead_letter(
        kafka,
        accounts=accounts,
        group=group,
        partition=partition,
        offset=offset,
        action="discarded",
        request=request,
    )
