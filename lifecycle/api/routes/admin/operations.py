"""Operations: read models' positions, consumer-group lag, and dead letters (list, re-drive,
discard). The rules live in `lifecycle.services` (`read_models`, `dead_letters`); these are
their HTTP adapters. Group names in paths are the contract's (`mail`); the topics and group
ids they stand for carry the configured prefix."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from lifecycle.api.deps import DeadLettersDep, KafkaDep, Limit, OpsActor, ReadModelsDep
from lifecycle.api.problems import problem_responses
from lifecycle.kafka.inspector import DeadLetter
from lifecycle.services.dead_letters import Handled
from schemas.contract import CONSUMER_GROUPS

router = APIRouter(prefix="/admin/v1")


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

    @classmethod
    def of(cls, handled: Handled) -> DeadLetterAction:
        return cls.model_validate(handled, from_attributes=True)


@router.get(
    "/projections",
    operation_id="listProjections",
    summary="Read models' positions and lag behind the log",
)
def projections(read_models: ReadModelsDep) -> Projections:
    states = read_models.states()
    return Projections(
        head=states.head,
        projections=[
            ProjectionState.model_validate(s, from_attributes=True) for s in states.read_models
        ],
    )


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


@router.get(
    "/dead-letters/{group}",
    operation_id="listDeadLetters",
    summary="Dead letters of one consumer group, not yet re-driven or discarded",
    responses=problem_responses(422),
)
def dead_letters(
    group: GroupParam, service: DeadLettersDep, limit: Limit = 100
) -> list[DeadLetterOut]:
    return [DeadLetterOut.of(record) for record in service.waiting(group, limit)]


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
    group: GroupParam, partition: int, offset: int, service: DeadLettersDep, actor: OpsActor
) -> DeadLetterAction:
    return DeadLetterAction.of(service.redrive(group, partition, offset, actor))


@router.post(
    "/dead-letters/{group}/{partition}/{offset}/discard",
    operation_id="discardDeadLetter",
    summary="Mark one dead letter discarded (it leaves the list; retention removes it; it "
    "holds ids and the error only)",
    responses=problem_responses(404, 409, 422),
)
def discard_dead_letter(
    group: GroupParam, partition: int, offset: int, service: DeadLettersDep, actor: OpsActor
) -> DeadLetterAction:
    return DeadLetterAction.of(service.discard(group, partition, offset, actor))
