"""Erasures for ops: open, pending, errored, overdue or purged, per service, and retries."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, status
from pydantic import BaseModel, Field

from lifecycle.api.auth import OpsCaller
from lifecycle.api.deps import AccountId, ApiState, KafkaDep, Limit, StateDep
from lifecycle.api.models import ErasureStatusOut
from lifecycle.api.problems import problem_responses, request_id_of
from lifecycle.application import Accounts
from lifecycle.domain import Account
from lifecycle.erasure.status import CONFIRMED
from lifecycle.errors import AccountNotFoundError, ConflictError, InvalidCommandError
from lifecycle.logs import get_logger
from projections.base import facts_mapper
from projections.erasure import ERASURE_FILTERS, ErasureQuery, ErasureStatusView
from schemas.contract import ERASING_SERVICES, TopicNames

log = get_logger(__name__)

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
        description="The WithdrawalRequested record went to Kafka again (same ce_id): a "
        "service that never handled it does now; the others skip it as a duplicate."
    )


@router.get(
    "/erasures",
    operation_id="listErasures",
    summary="Erasures open, pending, errored, overdue or purged",
)
def list_erasures(
    api: StateDep,
    state: Annotated[
        Literal["open", "pending", "errored", "overdue", "purged", "all"],
        Query(description=f"One of {', '.join(ERASURE_FILTERS)}; `open`: not yet purged."),
    ] = "open",
    after: UUID | None = None,
    limit: Limit = 100,
) -> ErasurePage:
    query = _erasure_query(api)
    items = query.page(state, after=after, limit=limit)
    return ErasurePage(
        counts=ErasureCounts(**query.counts()),
        items=[ErasureStatusOut.model_validate(item.as_dict()) for item in items],
        next_after=items[-1].account_id if len(items) == limit else None,
    )


@router.get(
    "/erasures/{account_id}",
    operation_id="getErasure",
    summary="One account's erasure, per service",
    responses=problem_responses(404),
)
def get_erasure(account_id: AccountId, api: StateDep) -> ErasureStatusOut:
    found = _erasure_query(api).get(account_id)
    if found is None:
        raise AccountNotFoundError(detail="no erasure was requested for this account")
    return ErasureStatusOut.model_validate(found.as_dict())


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
    *,
    service: Annotated[
        str,
        Path(description="An erasing service.", json_schema_extra={"enum": [*ERASING_SERVICES]}),
    ],
    api: StateDep,
    kafka: KafkaDep,
    caller: OpsCaller,
    request: Request,
) -> RetryRequested:
    if service not in ERASING_SERVICES:
        raise InvalidCommandError("unknown_service", detail="not an erasing service")
    erasure = _erasure_query(api).get(account_id)
    if erasure is None:
        raise AccountNotFoundError(detail="no erasure was requested for this account")
    if erasure.purged_at is not None:
        raise ConflictError("erasure_complete", detail="the account is already purged")
    if erasure.services[service].state == CONFIRMED:
        raise ConflictError("service_confirmed", detail="this service already confirmed")
    attempts = api.erasure.records.request_retry(account_id, service)
    redelivered = False
    if kafka.configured:
        topic, key, headers, value = withdrawal_record(api.accounts, account_id, kafka.topics)
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
    accounts: Accounts, account_id: UUID, topics: TopicNames
) -> tuple[str, bytes, list[tuple[str, bytes]], bytes | None]:
    """The account's WithdrawalRequested record as the relay published it, under a retry id."""
    from lifecycle.relay import lifecycle_payload
    from schemas.contract import encode_record, retry_event_id

    mapper = facts_mapper(accounts.mapper)
    for stored in accounts.recorder.select_events(account_id, desc=True):
        event = mapper.to_domain_event(stored)
        if isinstance(event, Account.WithdrawalRequested):
            payload = lifecycle_payload(event)
            assert payload is not None
            record = encode_record(
                payload,
                ce_id=retry_event_id(account_id, event.originator_version),
                subject=str(account_id),
                time=event.timestamp,
            )
            return topics.lifecycle, record.key, record.headers, record.value
    raise ConflictError("erasure_not_requested", detail="withdrawal was never requested")


def _erasure_query(api: ApiState) -> ErasureQuery:
    deadline = timedelta(hours=api.settings.erasure_deadline_hours)
    return ErasureQuery(api.model(ErasureStatusView), deadline)
