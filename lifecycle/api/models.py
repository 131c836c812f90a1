"""Request and response bodies of the member-facing API, and their mapping to the domain.

The API nests `job_title` in `profile`; the domain keeps it as a part of its own, because
it is personal and sealed separately. Request models reject unknown fields.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from lifecycle.domain import (
    GIFT_AMOUNT_JPY,
    GIFT_KIND,
    MAX_COMMENT_LENGTH,
    REDACTED,
    Account,
    Channel,
    WithdrawalReason,
    default_notifications,
)

T = TypeVar("T")

MIN_BIRTH_YEAR = 1900
MAX_LIST_ITEMS = 50
MAX_SALARY_JPY = 1_000_000_000

# A simple plausibility check; the domain normalises the address (NFKC, case-folded).
EMAIL_PATTERN = r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
CONTROL_CHARACTERS_BUT_LINE_BREAKS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _single_line(value: str) -> str:
    if CONTROL_CHARACTERS.search(value):
        raise ValueError("control characters are not allowed")
    return value


def _multi_line(value: str) -> str:
    if CONTROL_CHARACTERS_BUT_LINE_BREAKS.search(value):
        raise ValueError("control characters other than tabs and line breaks are not allowed")
    return value


Email = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=254, pattern=EMAIL_PATTERN)
]
DisplayName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(_single_line),
]
Phone = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=24, pattern=r"^\+?[0-9][0-9 \-]{5,22}$"),
]
ShortText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(_single_line),
]
CompanyText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_single_line),
]
Prefecture = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=32),
    AfterValidator(_single_line),
]
Comment = Annotated[
    str, StringConstraints(max_length=MAX_COMMENT_LENGTH), AfterValidator(_multi_line)
]
ConsentVersion = Annotated[
    str, StringConstraints(max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
]
ExternalId = Annotated[str, StringConstraints(max_length=128, pattern=ID_PATTERN)]
Salary = Annotated[StrictInt, Field(ge=0, le=MAX_SALARY_JPY)]


def _not_in_the_future(year: int) -> int:
    if year > date.today().year:
        raise ValueError("birth_year must not be after this year")
    return year


BirthYear = Annotated[StrictInt, Field(ge=MIN_BIRTH_YEAR), AfterValidator(_not_in_the_future)]


def _reject_null(value: T | None) -> T | None:
    # Runs only on values the client sent; an omitted field keeps its default None.
    if value is None:
        raise ValueError("may be omitted, but not null")
    return value


# In a PATCH body: leave the field out to keep it; null is refused (it cannot be cleared).
Omittable = Annotated[T | None, AfterValidator(_reject_null)]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Shared pieces


class WorkHistoryItem(RequestModel):
    company: CompanyText
    title: CompanyText
    from_: date = Field(alias="from")
    to: date | None = None

    @model_validator(mode="after")
    def _ends_after_it_starts(self) -> WorkHistoryItem:
        if self.to is not None and self.to < self.from_:
            raise ValueError("`to` must not be before `from`")
        return self

    def to_domain(self) -> dict[str, Any]:
        return {
            "company": self.company,
            "title": self.title,
            "from": self.from_.isoformat(),
            "to": None if self.to is None else self.to.isoformat(),
        }


WorkHistory = Annotated[list[WorkHistoryItem], Field(max_length=MAX_LIST_ITEMS)]
Choices = Annotated[list[ShortText], Field(max_length=MAX_LIST_ITEMS)]


# Registration


class ProfileIn(RequestModel):
    birth_year: BirthYear | None = None
    prefecture: Prefecture | None = None
    job_title: ShortText | None = None


class DesiredIn(RequestModel):
    locations: Choices = Field(default_factory=list)
    industries: Choices = Field(default_factory=list)
    job_types: Choices = Field(default_factory=list)
    min_salary: Salary | None = None

    def to_domain(self) -> dict[str, Any]:
        return self.model_dump()


class NotificationsIn(RequestModel):
    scouts: StrictBool = True
    recommendations: StrictBool = True
    notices: StrictBool = True


class RegisterRequest(RequestModel):
    email: Email
    display_name: DisplayName
    phone: Phone | None = None
    profile: ProfileIn = Field(default_factory=ProfileIn)
    work_history: WorkHistory = Field(default_factory=list)
    desired: DesiredIn = Field(default_factory=DesiredIn)
    notifications: NotificationsIn = Field(default_factory=NotificationsIn)
    consent_version: ConsentVersion
    channel: Channel = Channel.WEB

    def to_domain(self) -> dict[str, Any]:
        """Keyword arguments for `Accounts.register`."""
        return {
            "email": self.email,
            "display_name": self.display_name,
            "phone": self.phone,
            "job_title": self.profile.job_title,
            "work_history": [item.to_domain() for item in self.work_history],
            "profile": {
                "birth_year": self.profile.birth_year,
                "prefecture": self.profile.prefecture,
            },
            "desired": self.desired.to_domain(),
            "notifications": self.notifications.model_dump(),
            "consent_version": self.consent_version,
            "channel": self.channel.value,
        }


class AccountCreated(BaseModel):
    account_id: UUID


# Editing preferences: each part given is merged into what the account holds now.


class ProfilePatch(RequestModel):
    birth_year: BirthYear | None = None
    prefecture: Prefecture | None = None
    job_title: Omittable[ShortText] = None


class DesiredPatch(RequestModel):
    locations: Omittable[Choices] = None
    industries: Omittable[Choices] = None
    job_types: Omittable[Choices] = None
    min_salary: Salary | None = None


class NotificationsPatch(RequestModel):
    scouts: Omittable[StrictBool] = None
    recommendations: Omittable[StrictBool] = None
    notices: Omittable[StrictBool] = None


# Parts of the API body, in the order changes are reported.
API_PARTS = ("profile", "work_history", "desired", "notifications")
# Domain part -> API part it is reported as.
API_PART_OF = {
    "profile": "profile",
    "job_title": "profile",
    "work_history": "work_history",
    "desired": "desired",
    "notifications": "notifications",
}


class PreferencesPatch(RequestModel):
    """Any subset of the parts. Within `profile`, `desired` and `notifications`, fields left
    out keep their value and `null` clears a field that may be empty (birth_year, prefecture,
    min_salary); lists such as `work_history` are replaced as a whole."""

    profile: Omittable[ProfilePatch] = None
    work_history: Omittable[WorkHistory] = None
    desired: Omittable[DesiredPatch] = None
    notifications: Omittable[NotificationsPatch] = None

    def domain_parts(self) -> dict[str, Any]:
        """Keyword arguments for `Accounts.edit_preferences`: only the fields sent.

        The domain merges them into the current parts inside the command, so concurrent
        edits of different fields do not undo each other.
        """
        parts: dict[str, Any] = {}
        if self.profile is not None:
            given = self.profile.model_dump(include=self.profile.model_fields_set)
            if "job_title" in given:
                parts["job_title"] = given.pop("job_title")
            if given:
                parts["profile"] = given
        if self.work_history is not None:
            parts["work_history"] = [item.to_domain() for item in self.work_history]
        if self.desired is not None:
            parts["desired"] = self.desired.model_dump(include=self.desired.model_fields_set)
        if self.notifications is not None:
            parts["notifications"] = self.notifications.model_dump(
                include=self.notifications.model_fields_set
            )
        return parts


class PreferencesChanged(BaseModel):
    changed: list[Literal["profile", "work_history", "desired", "notifications"]]


def api_parts(domain_parts: list[str]) -> list[str]:
    """Domain part names as the API reports them, each once, in the API's order."""
    reported = {API_PART_OF[part] for part in domain_parts}
    return [part for part in API_PARTS if part in reported]


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


# Scouts, gift, withdrawal


class ScoutRequest(RequestModel):
    scout_id: ExternalId
    company_id: ExternalId
    job_id: ExternalId


class ScoutRecorded(BaseModel):
    scout_id: str
    recorded: bool = Field(description="false when this scout id had already been recorded")


class GiftClaimRequest(RequestModel):
    company_id: ExternalId
    start_date: date


class Gift(BaseModel):
    kind: str = Field(examples=[GIFT_KIND])
    amount_jpy: int = Field(examples=[GIFT_AMOUNT_JPY])
    company_id: str
    start_date: date


class WithdrawalRequest(RequestModel):
    reason: WithdrawalReason
    comment: Comment | None = None
    acknowledge_gift_loss: StrictBool = False

    @field_validator("comment")
    @classmethod
    def _blank_comment_is_none(cls, value: str | None) -> str | None:
        return value if value is None or value.strip() else None


class WithdrawalAccepted(BaseModel):
    status: Literal["withdrawing"] = "withdrawing"
    erasure: str = Field(description="where the erasure of this account can be followed")


class ServiceErasure(BaseModel):
    state: Literal["pending", "confirmed", "failed"]
    rows_removed: int | None
    error_code: str | None


class ErasureStatus(BaseModel):
    account_id: UUID
    state: Literal["not_requested", "requested", "purged"]
    requested_at: datetime | None
    purged_at: datetime | None
    deadline_at: datetime | None
    overdue: bool
    services: dict[str, ServiceErasure]


class WithdrawalPreview(BaseModel):
    status: str
    gift_claimed: bool
    gift_eligible: bool
    gift_lost_on_withdrawal: bool
    scouts_received: int
    re_registration_starts_from_nothing: bool
    reasons: list[WithdrawalReason]


# The account as a member sees it. A personal value whose key is gone reads as `[redacted]`
# (lifecycle.domain.REDACTED), whatever its type was: a read view takes the marker in place of
# the value rather than failing validation (which would answer 500).

Redacted = Literal["[redacted]"]
REDACTED_OUT: Redacted = "[redacted]"  # lifecycle.domain.REDACTED, as a type a schema can name


def is_redacted(value: object) -> bool:
    """The domain types a sealed value as what it was; after shredding it is the marker."""
    return value == REDACTED


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
