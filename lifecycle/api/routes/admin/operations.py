"""Operations: read models' positions, consumer-group lag, and dead letters (list, re-drive,
discard). Kafka is reached through `lifecycle.kafka.inspector`; without Kafka configured the
lists are empty. Group names in paths are the contract's (`mail`); the topics and group ids
they stand for carry the configured prefix.

A dead letter refers to its source record and carries no copy of it (`consumers.faults`):
re-drive reads the original at its source offset and publishes it again. When the source
topic's compaction or retention erased it, or the account is purged (or, for a profile
record, withdrawing; or superseded by a later profile record of the account), re-drive
answers 410 `dead_letter_source_gone` (`reason` says which): the member's values are gone, as
promised, and nothing brings them back. Discard only hides the reference."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel, Field

from lifecycle.api.deps import AccountsDep, KafkaDep, Limit
from lifecycle.api.problems import problem_responses, request_id_of
from lifecycle.api.tables import DeadLetterActions
from lifecycle.application import Accounts
from lifecycle.domain import AccountStatus
from lifecycle.errors import (
    AccountNotFoundError,
    ConflictError,
    DeadLetterSourceGoneError,
    InvalidCommandError,
)
from lifecycle.kafka.inspector import DeadLetter, KafkaInspector, SourceRecord
from lifecycle.logs import get_logger
from projections.base import SHADOW_SUFFIX, ReadModel
from projections.registry import read_model_classes
from schemas.contract import CONSUMER_GROUPS

log = get_logger(__name__)

router = APIRouter(prefix="/admin/v1")

DLQ_PREFIX = "dlq_"


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


class DeadLetterOut(BaseModel):
    group: str
    topic: str
    partition: int
    offset: int
    timestamp: datetime | None
    key: str | None
    ce_id: str | None
    ce_type: str | None
    ce_subject: str | None
    error_type: str | None
    error_code: str | None
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    attempts: int | None
    value_bytes: int = Field(
        description="Size of the dead letter's value: 0, as a dead letter refers to its source "
        "record and carries no copy (older ones may); a value is never shown."
    )

    @classmethod
    def of(cls, record: DeadLetter) -> DeadLetterOut:
        attempts = record.header("dlq_attempts")
        source = record.source()
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
            ce_subject=record.header("ce_subject"),
            error_type=record.header("dlq_error_type"),
            error_code=record.header("dlq_error_code"),
            source_topic=record.header("dlq_source_topic"),
            source_partition=source[1] if source else None,
            source_offset=source[2] if source else None,
            attempts=int(attempts) if attempts and attempts.isdigit() else None,
            value_bytes=record.value_bytes,
        )


class DeadLetterAction(BaseModel):
    group: str
    partition: int
    offset: int
    action: Literal["redriven", "discarded"]
    republished_to: str | None


@router.get(
    "/projections",
    operation_id="listProjections",
    summary="Read models' positions and lag behind the log",
)
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


@router.get(
    "/consumers",
    operation_id="listConsumerLag",
    summary="Consumer-group lag per downstream service (Kafka)",
)
def consumers(kafka: KafkaDep) -> list[GroupLag]:
    return [GroupLag(**group) for group in kafka.group_lag()]


# A consumer group named in a path: the enum documents the groups; the check refuses others.
GroupParam = Annotated[
    str, Path(description="A consumer group.", json_schema_extra={"enum": [*CONSUMER_GROUPS]})
]


def _known_group(group: str) -> str:
    if group not in CONSUMER_GROUPS:
        raise InvalidCommandError(
            "unknown_consumer_group", detail=f"expected one of {', '.join(CONSUMER_GROUPS)}"
        )
    return group


@router.get(
    "/dead-letters/{group}",
    operation_id="listDeadLetters",
    summary="Dead letters of one consumer group, not yet re-driven or discarded",
    responses=problem_responses(422),
)
def dead_letters(
    group: GroupParam, kafka: KafkaDep, accounts: AccountsDep, limit: Limit = 100
) -> list[DeadLetterOut]:
    _known_group(group)
    handled = DeadLetterActions(accounts.database).done(kafka.topics.dlq(group))
    return [DeadLetterOut.of(record) for record in kafka.dead_letters(group, limit, handled)]


def _handle_dead_letter(
    kafka: KafkaInspector,
    *,
    accounts: Accounts,
    group: GroupParam,
    partition: int,
    offset: int,
    action: Literal["redriven", "discarded"],
    request: Request,
) -> DeadLetterAction:
    _known_group(group)
    record = kafka.dead_letter(group, partition, offset)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such dead letter")
    actions = DeadLetterActions(accounts.database)
    source = record.source()
    original: SourceRecord | None = None
    if action == "redriven":
        if source is None:
            raise InvalidCommandError(
                "no_source_record", detail="the dead letter names no source record"
            )
        original = _source_to_redrive(kafka, accounts, record, source)
    if not actions.claim(record.topic, partition, offset, action):
        raise ConflictError("dead_letter_handled", detail="this dead letter was already handled")
    if original is not None:
        headers = [(k, v) for k, v in original.headers if not k.startswith(DLQ_PREFIX)]
        try:
            kafka.publish(original.topic, original.key or b"", headers, original.value)
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
        republished_to=original.topic if original is not None else None,
    )


def _source_to_redrive(
    kafka: KafkaInspector,
    accounts: Accounts,
    letter: DeadLetter,
    source: tuple[str, int, int],
) -> SourceRecord:
    """The original record, read at its source offset, when it may be published again.

    A dead letter's headers are only a claim (anyone who could write the topic could forge
    one): the source must be one of the group's own input topics, the record there must carry
    the `ce_id` the letter names, and the account is the one the original record names."""
    topic, partition, offset = source
    if topic not in kafka.topics.inputs_of(letter.group):
        raise ConflictError(
            "dead_letter_source_refused",
            detail="the dead letter names a source that is not one of its group's inputs",
        )
    ce_id = letter.header("ce_id")
    if ce_id is None:
        raise ConflictError(
            "dead_letter_source_refused",
            detail="the dead letter names no ce_id to check its source record against",
        )
    original = kafka.source_record(topic, partition, offset)
    if original is None:
        raise DeadLetterSourceGoneError(
            "source_record_erased",
            detail="the source record is gone (compaction or retention erased it)",
        )
    if original.header("ce_id") != ce_id:
        raise DeadLetterSourceGoneError(
            "source_record_erased", detail="the source offset holds another record"
        )
    status = _account_status(accounts, original)
    if status is AccountStatus.PURGED:
        raise DeadLetterSourceGoneError(
            "account_purged", detail="the account is purged: its records are not re-driven"
        )
    if topic == kafka.topics.profile:
        if status not in (None, AccountStatus.ACTIVE):
            # Published after the purge's tombstone, contact data would outlive compaction.
            raise DeadLetterSourceGoneError(
                "account_withdrawing",
                detail="the account is withdrawing: its contact data is not published again",
            )
        if kafka.superseded(original):
            # Published again, the older contact data would become the key's latest.
            raise DeadLetterSourceGoneError(
                "source_record_superseded",
                detail="a later profile record of the account replaced this one",
            )
    return original


def _account_status(accounts: Accounts, original: SourceRecord) -> AccountStatus | None:
    """The status of the account the original record names (its key or `ce_subject`), never
    what the dead letter says; None when it names none the service knows."""
    for text in (original.header("ce_subject"), (original.key or b"").decode(errors="replace")):
        try:
            account_id = UUID(text or "")
        except ValueError:
            continue
        try:
            return accounts.load_for_audit(account_id).status
        except AccountNotFoundError:
            return None
    return None


@router.post(
    "/dead-letters/{group}/{partition}/{offset}/redrive",
    operation_id="redriveDeadLetter",
    summary="Publish the record a dead letter refers to again, read from its source offset",
    description="410 `dead_letter_source_gone` when the source record is erased (compaction "
    "or retention) or belongs to a purged account; for a profile record also when the account "
    "is withdrawing or a later profile record replaced it (`reason` says which). 409 with "
    "reason `dead_letter_source_refused` when the letter names a source that is not one of "
    "its group's input topics, or names no `ce_id` to check the source record against (a "
    "letter's headers are a claim; the account is taken from the original record).",
    responses=problem_responses(404, 409, 410, 422, 503),
)
def redrive_dead_letter(
    group: GroupParam,
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
    operation_id="discardDeadLetter",
    summary="Mark one dead letter discarded (it leaves the list; retention removes it; it "
    "holds ids and the error only)",
    responses=problem_responses(404, 409, 422),
)
def discard_dead_letter(
    group: GroupParam,
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
