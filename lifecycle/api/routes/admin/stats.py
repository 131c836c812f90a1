"""Statistics for ops, from the statistics read models (weeks and months in JST)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from lifecycle.api.deps import Limit, StateDep
from lifecycle.api.models import IsoDate
from projections.statistics import GiftClaims, ScoutsPerCompany, WithdrawalReasons

router = APIRouter(prefix="/admin/v1")


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


@router.get(
    "/stats/withdrawal-reasons",
    operation_id="getWithdrawalReasonStats",
    summary="Withdrawals per reason per week (JST)",
)
def withdrawal_reasons(
    api: StateDep,
    since: Annotated[IsoDate | None, Query(description="First week (inclusive).")] = None,
    until: Annotated[IsoDate | None, Query(description="End (exclusive).")] = None,
) -> list[WeeklyReasons]:
    rows = api.model(WithdrawalReasons).weekly(_iso(since), _iso(until))
    return [WeeklyReasons(**row) for row in rows]


@router.get(
    "/stats/gifts", operation_id="getGiftStats", summary="Gifts claimed per month and company (JST)"
)
def gift_statistics(
    api: StateDep,
    since: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$", description="YYYY-MM")] = None,
    until: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$", description="YYYY-MM")] = None,
) -> list[MonthlyGifts]:
    return [MonthlyGifts(**row) for row in api.model(GiftClaims).monthly(since, until)]


@router.get(
    "/stats/scouts",
    operation_id="getScoutStats",
    summary="Scouts per company, and to how many members",
)
def scout_statistics(
    api: StateDep, after: str | None = None, limit: Limit = 100
) -> list[CompanyScouts]:
    rows = api.model(ScoutsPerCompany).companies(limit=limit, after=after)
    return [CompanyScouts(**row) for row in rows]


def _iso(value: date | None) -> str | None:
    return None if value is None else value.isoformat()
