"""`AccountOut`: the account as a member sees it, from the aggregate's current state.

A personal value whose key is gone reads as `[redacted]` (lifecycle.account_terms.REDACTED),
whatever its type was: the view takes the marker in place of the value rather than failing
validation (which would answer 500).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from lifecycle.account_terms import REDACTED, Channel, WithdrawalReason, default_notifications
from lifecycle.api.models import Gift
from lifecycle.domain import Account

Redacted = Literal["[redacted]"]
REDACTED_OUT: Redacted = (
    "[redacted]"  # lifecycle.account_terms.REDACTED, as a type a schema can name
)


def is_redacted(value: object) -> bool:
    """The domain types a sealed value as what it was; after shredding it is the marker."""
    return value == REDACTED


# Normalised views of the account's parts (accounts registered elsewhere may lack keys).


def profile_of(account: Account) -> dict[str, Any]:
    return {
        "birth_year": account.profile.get("birth_year"),
        "prefecture": account.profile.get("prefecture"),
    }


def desired_of(account: Account) -> dict[str, Any]:
    return {
        "locations": list(account.desired.get("locations", [])),
        "industries": list(account.desired.get("industries", [])),
        "job_types": list(account.desired.get("job_types", [])),
        "min_salary": account.desired.get("min_salary"),
    }


def notifications_of(account: Account) -> dict[str, bool]:
    return {**default_notifications(), **account.notifications}


# The account as a member sees it


class ProfileOut(BaseModel):
    birth_year: int | None
    prefecture: str | None
    job_title: str | None


class WorkHistoryOut(BaseModel):
    company: str
    title: str
    from_: date = Field(alias="from")
    to: date | None = None


class DesiredOut(BaseModel):
    locations: list[str]
    industries: list[str]
    job_types: list[str]
    min_salary: int | None


class NotificationsOut(BaseModel):
    scouts: bool
    recommendations: bool
    notices: bool


class AccountGift(Gift):
    claimed_at: datetime


class WithdrawalOut(BaseModel):
    reason: WithdrawalReason
    requested_at: datetime


class AccountOut(BaseModel):
    account_id: UUID
    email: str
    display_name: str
    phone: str | None
    profile: ProfileOut
    work_history: list[WorkHistoryOut] | Redacted = Field(
        description="`[redacted]` when the account's key was destroyed."
    )
    desired: DesiredOut
    notifications: NotificationsOut
    consent_version: str
    channel: Channel
    status: str
    registered_at: datetime
    scouts_received: int
    gift: AccountGift | None
    withdrawal: WithdrawalOut | None

    @classmethod
    def of(cls, account: Account) -> AccountOut:
        gift = account.gift
        withdrawal = account.withdrawal
        return cls(
            account_id=account.id,
            email=account.email,
            display_name=account.display_name,
            phone=account.phone,
            profile=ProfileOut(job_title=account.job_title, **profile_of(account)),
            work_history=REDACTED_OUT
            if is_redacted(account.work_history)
            else [WorkHistoryOut.model_validate(item) for item in account.work_history],
            desired=DesiredOut(**desired_of(account)),
            notifications=NotificationsOut(**notifications_of(account)),
            consent_version=account.consent_version,
            channel=Channel(account.channel),
            status=account.status.value,
            registered_at=account.registered_at,
            scouts_received=len(account.scouts),
            gift=None
            if gift is None
            else AccountGift(
                kind=gift["gift_kind"],
                amount_jpy=gift["amount_jpy"],
                company_id=gift["company_id"],
                start_date=gift["start_date"],
                claimed_at=gift["claimed_at"],
            ),
            withdrawal=None
            if withdrawal is None or account.withdrawn_at is None
            else WithdrawalOut(reason=withdrawal["reason"], requested_at=account.withdrawn_at),
        )
