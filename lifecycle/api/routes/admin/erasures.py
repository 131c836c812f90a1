"""Erasures for ops: open, pending, errored, overdue or purged, per service, and retries."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query, status
from pydantic import BaseModel, Field

from lifecycle.api.deps import AccountId, ErasuresDep, Limit, OpsActor
from lifecycle.api.models import ErasureStatusOut
from lifecycle.api.problems import problem_responses
from projections.erasure import ERASURE_FILTERS
from schemas.contract import ERASING_SERVICES

router = APIRouter(prefix="/admin/v1")


class ErasureCounts(BaseModel):
    open: int
    errored: int
    overdue: int
    purged: int


class ErasurePage(BaseModel):
    counts: ErasureCounts
    items: list[ErasureStatusOut]
    next_after: UUID | None


class RetryRequested(BaseModel):
    account_id: UUID
    service: str
    attempts: int
    redelivered: bool = Field(
        description="The WithdrawalRequested record went to Kafka again, under a fresh retry "
        "`ce_id`: a service that never handled it erases now; the others confirm again."
    )


@router.get(
    "/erasures",
    operation_id="listErasures",
    summary="Erasures open, pending, errored, overdue or purged",
)
def list_erasures(
    erasures: ErasuresDep,
    state: Annotated[
        Literal["open", "pending", "errored", "overdue", "purged", "all"],
        Query(description=f"One of {', '.join(ERASURE_FILTERS)}; `open`: not yet purged."),
    ] = "open",
    after: UUID | None = None,
    limit: Limit = 100,
) -> ErasurePage:
    counts, items = erasures.page(state, after=after, limit=limit)
    return ErasurePage(
        counts=ErasureCounts(**counts),
        items=[ErasureStatusOut.model_validate(item.as_dict()) for item in items],
        next_after=items[-1].account_id if len(items) == limit else None,
    )


@router.get(
    "/erasures/{account_id}",
    operation_id="getErasure",
    summary="One account's erasure, per service",
    responses=problem_responses(404),
)
def get_erasure(account_id: AccountId, erasures: ErasuresDep) -> ErasureStatusOut:
    return ErasureStatusOut.model_validate(erasures.get(account_id).as_dict())


@router.post(
    "/erasures/{account_id}/services/{service}/retry",
    operation_id="retryErasure",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Ask one lagging service again to erase the account",
    description=(
        "Records the request (shown as `retry_requested` until the service confirms) and, "
        "with Kafka configured, publishes the account's WithdrawalRequested record again under "
        "a fresh `ce_id` (the original's with a random `:retry-...` suffix, so no record "
        "published before it, forged or not, can make it a duplicate): a service that never "
        "handled it (dead-lettered, or behind) erases and confirms; services that did erase "
        "nothing more and confirm again, which changes nothing."
    ),
    responses=problem_responses(404, 409, 422, 503),
)
def retry_erasure(
    account_id: AccountId,
    service: Annotated[
        str,
        Path(description="An erasing service.", json_schema_extra={"enum": [*ERASING_SERVICES]}),
    ],
    erasures: ErasuresDep,
    actor: OpsActor,
) -> RetryRequested:
    retried = erasures.retry(account_id, service, actor)
    return RetryRequested.model_validate(retried, from_attributes=True)
