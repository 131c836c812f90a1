"""Operations: read models' positions, consumer-group lag, and dead letters (list, re-drive,
discard). Kafka is reached through `lifecycle.kafka.inspector`; without Kafka configured the
lists are empty. Group names in paths are the contract's (`mail`); the topics and group ids
they stand for carry the configured prefix."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel, Field

from lifecycle.api.deps import AccountsDep, KafkaDep, Limit
from lifecycle.api.problems import problem_responses, request_id_of
from lifecycle.api.tables import DeadLetterActions
from lifecycle.application import Accounts
from lifecycle.errors import ConflictError, InvalidCommandError
from lifecycle.kafka.inspector import DeadLetter, KafkaInspector
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


@router.get("/consumers", summary="Consumer-group lag per downstream service (Kafka)")
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
    summary="Mark one dead letter discarded (it leaves the list; retention removes it)",
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
