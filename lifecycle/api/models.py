"""Request and response bodies of the member-facing API, and their mapping to the domain.

The API nests `job_title` in `profile`; the domain keeps it as a part of its own, because
it is personal and sealed separately. Request models reject unknown fields. The account
itself, as `GET /v1/accounts/{id}` shows it, is `lifecycle.api.account_view.AccountOut`.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from lifecycle import addresses
from lifecycle.account_terms import (
    GIFT_AMOUNT_JPY,
    GIFT_KIND,
    MAX_COMMENT_LENGTH,
    WITHDRAWAL_REASON_DETAILS,
    Channel,
    WithdrawalReason,
)

T = TypeVar("T")

MIN_BIRTH_YEAR = 1900
MAX_LIST_ITEMS = 50
MAX_SALARY_JPY = 1_000_000_000

# What the schema can say: one @, no white space, controls, list, quoting or route characters.
# The full rule (lifecycle.addresses) runs after NFKC folding, so a full-width comma or at sign
# that folds into one of those is refused too (422).
_NOT_IN_EMAIL = r"@\s\x00-\x1f\x7f,;<>\"()\[\]\\:"
EMAIL_PATTERN = rf"^[^{_NOT_IN_EMAIL}]+@[^{_NOT_IN_EMAIL}]+\.[^{_NOT_IN_EMAIL}]+$"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"
# Rules in the schema itself (patterns), so the OpenAPI says what is accepted: single-line text
# has no control character and is not only white space; a comment may hold tabs and line breaks.
SINGLE_LINE = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
MULTI_LINE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_date_text(value: object) -> object:
    # JSON has no date type: a date is `YYYY-MM-DD` text, never a number read as a timestamp.
    if isinstance(value, date):
        return value
    if not (isinstance(value, str) and ISO_DATE.fullmatch(value)):
        raise ValueError("expected a date as YYYY-MM-DD")
    return value


# A calendar date, as the OpenAPI `format: date` says: only `YYYY-MM-DD` text is accepted.
IsoDate = Annotated[date, BeforeValidator(_iso_date_text)]


def _one_mailbox(value: str) -> str:
    addresses.single_mailbox(value)  # AddressError is a ValueError: a 422 naming the field
    return value


Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=254, pattern=EMAIL_PATTERN),
    AfterValidator(_one_mailbox),
]
DisplayName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=SINGLE_LINE)
]
Phone = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=24, pattern=r"^\+?[0-9][0-9 \-]{5,22}$"),
]
ShortText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=SINGLE_LINE)
]
CompanyText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=SINGLE_LINE)
]
Prefecture = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32, pattern=SINGLE_LINE)
]
Comment = Annotated[str, StringConstraints(max_length=MAX_COMMENT_LENGTH, pattern=MULTI_LINE)]
ConsentVersion = Annotated[
    str, StringConstraints(max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
]
ExternalId = Annotated[str, StringConstraints(max_length=128, pattern=ID_PATTERN)]
# A UUID in its canonical text form only, so the schema and the parser agree: pydantic's UUID
# type also takes braces, `urn:uuid:` and bare hex, which the OpenAPI `uuid` format refuses.
UuidText = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"),
    Field(json_schema_extra={"format": "uuid"}),
]
Salary = Annotated[StrictInt, Field(ge=0, le=MAX_SALARY_JPY)]


def _not_in_the_future(year: int) -> int:
    if year > date.today().year:
        raise ValueError("birth_year must not be after this year")
    return year


BirthYear = Annotated[StrictInt, Field(ge=MIN_BIRTH_YEAR), AfterValidator(_not_in_the_future)]


def omitted() -> Any:
    """A PATCH field that may be left out (it keeps its value). Its type has no null, so null
    is refused (it cannot be cleared) and the schema says so; the None default is internal."""
    return Field(default=None, json_schema_extra=_without_default)


def _without_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Shared pieces


class WorkHistoryItem(RequestModel):
    company: CompanyText
    title: CompanyText
    from_: IsoDate = Field(alias="from")
    to: IsoDate | None = None

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
    job_title: ShortText = omitted()


class DesiredPatch(RequestModel):
    locations: Choices = omitted()
    industries: Choices = omitted()
    job_types: Choices = omitted()
    min_salary: Salary | None = None


class NotificationsPatch(RequestModel):
    scouts: StrictBool = omitted()
    recommendations: StrictBool = omitted()
    notices: StrictBool = omitted()


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

    profile: ProfilePatch = omitted()
    work_history: WorkHistory = omitted()
    desired: DesiredPatch = omitted()
    notifications: NotificationsPatch = omitted()

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
    start_date: IsoDate


class Gift(BaseModel):
    kind: str = Field(examples=[GIFT_KIND])
    amount_jpy: int = Field(examples=[GIFT_AMOUNT_JPY])
    company_id: str
    start_date: IsoDate


# Every detail code of any reason (the domain's WITHDRAWAL_REASON_DETAILS), as one enum.
REASON_DETAILS = sorted({d for details in WITHDRAWAL_REASON_DETAILS.values() for d in details})
if TYPE_CHECKING:
    ReasonDetail = str
else:
    ReasonDetail = Literal[tuple(REASON_DETAILS)]  # built from the domain's list


class WithdrawalRequest(RequestModel):
    reason: WithdrawalReason
    reason_details: list[ReasonDetail] = Field(
        default_factory=list,
        max_length=5,
        description="Which parts of the reason weighed; each must belong to the reason.",
    )
    comment: Comment | None = None
    acknowledge_gift_loss: StrictBool = False

    @field_validator("comment")
    @classmethod
    def _blank_comment_is_none(cls, value: str | None) -> str | None:
        return value if value is None or value.strip() else None


class WithdrawalAccepted(BaseModel):
    status: Literal["withdrawing"] = "withdrawing"
    erasure: str = Field(description="where the erasure of this account can be followed")


class ServiceErasureOut(BaseModel):
    state: Literal["pending", "confirmed", "failed", "retry_requested"] = Field(
        description="pending: nothing heard yet; confirmed or failed: the service's last word; "
        "retry_requested: ops asked the service again since its last word"
    )
    rows_removed: int | None
    error_code: str | None
    recorded_at: datetime | None
    retries: int
    last_retry_at: datetime | None


class ErasureStatusOut(BaseModel):
    """One account's erasure (`lifecycle.erasure.status`), for members and ops alike."""

    account_id: UUID
    state: Literal["not_requested", "requested", "purged"]
    reason: str | None = Field(description="the withdrawal's reason code")
    requested_at: datetime | None
    deadline_at: datetime | None
    purged_at: datetime | None
    overdue: bool
    errored: bool = Field(description="not purged, and a service said it failed")
    services: dict[str, ServiceErasureOut]


class WithdrawalPreview(BaseModel):
    status: str
    gift_claimed: bool
    gift_eligible: bool
    gift_lost_on_withdrawal: bool
    scouts_received: int
    re_registration_starts_from_nothing: bool
    reasons: list[WithdrawalReason]
    data_export_ready: bool = Field(
        default=False, description="Whether a copy of the member's data is ready to download."
    )
    data_export: str | None = Field(
        default=None,
        description="The ready export's download link; withdrawing cancels every export.",
    )
