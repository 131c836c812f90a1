"""Accounts for ops: the directory by status, a page at a time, and one account's timeline."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from lifecycle.account_terms import AccountStatus
from lifecycle.api.deps import AccountId, AuditReadsDep, Limit, StateDep
from lifecycle.api.problems import problem_responses
from projections.directory import AccountDirectory

router = APIRouter(prefix="/admin/v1")


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


@router.get(
    "/accounts",
    operation_id="listAccounts",
    summary="Accounts by status (read model), a page at a time",
)
def list_accounts(
    api: StateDep,
    status_: Annotated[AccountStatus | None, Query(alias="status")] = None,
    after: UUID | None = None,
    limit: Limit = 100,
) -> AccountPage:
    directory = api.model(AccountDirectory)
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
    operation_id="getAccountTimeline",
    summary="One account's events: versions, times and facts, no personal values",
    responses=problem_responses(404),
)
def account_timeline(account_id: AccountId, audit: AuditReadsDep) -> Timeline:
    return Timeline.model_validate(audit.timeline(account_id), from_attributes=True)
