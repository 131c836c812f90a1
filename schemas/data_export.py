"""The data-export contract: a member's copy of everything the platform holds about them.

Two payloads travel on Kafka, and neither carries a readable personal value:
- `account.export-requested.v1` on `account.export-requested.v1` (written by the lifecycle
  service only): an export's id, its account, and the export's X25519 public key;
- `account.export-part.v1` on `account.export-part.<service>.v1` (each service writes only its
  own, as with erasure confirmations): one chunk of the service's section of the document,
  sealed to that public key (`lifecycle.sealed_box`), or a failure code.

A service's section (its JSON, `ScoutSectionV1`/`ChatSectionV1`/`MailSectionV1` below) is split
into chunks of at most `CHUNK_BYTES` (a part must fit a Kafka record whatever the member holds);
the chunks of one answer share a `part_id` and are sealed one by one, each bound to the export,
the account, the service, the part and its place (`chunk` of `chunks`), so no chunk can be
replayed into another export, service, part or position. The assembled document,
`account.data-export.v1`, is what the member downloads; its JSON Schema is published beside the
payloads' (`schemas/v1/account.data-export.v1.json`).

This module imports nothing from the lifecycle service, so any consumer can depend on it.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from schemas.base import ContractModel

if TYPE_CHECKING:
    from schemas.contract import Record

EXPORT_REQUESTED_TOPIC = "account.export-requested.v1"
# Each service answers on a topic of its own, which only its principal may write (Kafka ACLs):
# the lifecycle service attributes a part by the topic it came from, never by its payload.
EXPORT_PART_TOPIC_PATTERN = "account.export-part.{service}.v1"
# The lifecycle service's group that takes the parts in.
EXPORT_GROUP = "lifecycle-export"
EXPORT_REQUEST_SOURCE = "/lifecycle/data-exports"
# Plaintext bytes per sealed chunk: with base64 and the envelope a record stays well under
# Kafka's default 1 MiB `max.message.bytes`.
CHUNK_BYTES = 256 * 1024
# base64url of 32 raw bytes, padded or not.
KEY_PATTERN = r"^[A-Za-z0-9_-]{43}=?$"
BASE64URL_PATTERN = r"^[A-Za-z0-9_-]*={0,2}$"
SERVICE_PATTERN = r"^[a-z][a-z0-9-]*$"


class ExportRequestedV1(ContractModel):
    """Each service addressed seals what it holds about the account to `public_key` and sends
    it back as `account.export-part.v1` on its own topic. `services` names who must answer
    (ops' retry of one service); absent, every exporting service answers."""

    event_name = "account.export-requested.v1"
    export_id: UUID
    account_id: UUID
    public_key: str = Field(
        pattern=KEY_PATTERN,
        description="The export's X25519 public key: 32 raw bytes, base64url.",
    )
    requested_at: AwareDatetime
    expires_at: AwareDatetime = Field(
        description="After this the export's private key is destroyed: a part sent later "
        "is never opened, so a service may drop the request."
    )
    services: list[str] | None = Field(
        default=None,
        description="The services that must answer; absent: every exporting service.",
    )

    def addresses(self, service: str) -> bool:
        return self.services is None or service in self.services


# Why a service could not produce its part: a fixed list, so ops can act on it and nothing
# free-form (which could carry a person's data) travels on the topic.
ExportFailureCode = Literal[
    "account_withdrawn",  # the service already erased the account: nothing left to export
    "dependency_unavailable",  # a system the service needs cannot be reached
    "data_locked",  # the data is in use and cannot be read consistently yet
    "internal_error",  # anything else; the service's own logs say more
]


class SealedBoxV1(BaseModel):
    """AES-256-GCM ciphertext under a key agreed by X25519 between a fresh ephemeral key and
    the export's public key (HKDF-SHA256); every field base64url."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ephemeral_public_key: str = Field(pattern=KEY_PATTERN)
    nonce: str = Field(pattern=BASE64URL_PATTERN, min_length=16, max_length=16)
    ciphertext: str = Field(pattern=BASE64URL_PATTERN, min_length=22)


class ExportPartV1(ContractModel):
    """One chunk of a service's section, sealed; or the service's failure to produce it."""

    event_name = "account.export-part.v1"
    export_id: UUID
    account_id: UUID
    service: str = Field(pattern=SERVICE_PATTERN)
    part_id: UUID = Field(description="Shared by the chunks of one answer of the service.")
    outcome: Literal["sealed", "failed"]
    failure_code: ExportFailureCode | None = Field(
        default=None, description="Why the service could not export; set exactly when failed."
    )
    chunk: int = Field(default=0, ge=0, description="This chunk's place, from 0.")
    chunks: int = Field(default=1, ge=1, description="How many chunks the part has.")
    sealed: SealedBoxV1 | None = Field(
        default=None, description="The chunk's bytes, sealed; set exactly when sealed."
    )
    part_version: int = Field(
        default=1, ge=1, description="The version of the service's section schema inside."
    )
    produced_at: AwareDatetime

    @model_validator(mode="after")
    def _consistent(self) -> ExportPartV1:
        if (self.outcome == "failed") != (self.failure_code is not None):
            raise ValueError("failure_code is required when failed, and only then")
        if (self.outcome == "sealed") != (self.sealed is not None):
            raise ValueError("sealed is required when sealed, and only then")
        if self.chunk >= self.chunks:
            raise ValueError("chunk must be below chunks")
        return self


EXPORT_MODELS: tuple[type[ContractModel], ...] = (ExportRequestedV1, ExportPartV1)


# Deterministic or unpredictable ids, like the erasure's (schemas.contract): each starts with
# the account id, as every id of the contract does.


def export_requested_event_id(account_id: UUID, export_id: UUID, retry: str | None = None) -> str:
    """A request's id; a retry (ops asking a service again) gets a fresh suffix, so it is
    never a duplicate of the first request."""
    base = f"{account_id}:export-requested:{export_id}"
    return f"{base}:retry-{retry}" if retry else base


def export_part_event_id(
    account_id: UUID, export_id: UUID, service: str, part_id: UUID, chunk: int
) -> str:
    """A part chunk's id: stable for a re-publish of the same chunk (the service's outbox keeps
    the record), unpredictable before the service chose its `part_id`."""
    return f"{account_id}:export-part:{export_id}:{service}:{part_id}:{chunk}"


def new_part_id() -> UUID:
    return uuid4()


def encode_export_requested(request: ExportRequestedV1, *, retry: str | None = None) -> Record:
    """The lifecycle service's request, for the request topic (key: the account id)."""
    from schemas.contract import encode_record  # the envelope imports this module

    return encode_record(
        request,
        ce_id=export_requested_event_id(request.account_id, request.export_id, retry),
        subject=str(request.account_id),
        time=request.requested_at,
        source=EXPORT_REQUEST_SOURCE,
    )


def encode_export_part(part: ExportPartV1) -> Record:
    """A service's part chunk, for its own part topic (key: the account id)."""
    from schemas.contract import encode_record  # the envelope imports this module

    return encode_record(
        part,
        ce_id=export_part_event_id(
            part.account_id, part.export_id, part.service, part.part_id, part.chunk
        ),
        subject=str(part.account_id),
        time=part.produced_at,
        source=f"/{part.service}/export",
    )


# The sections each service seals: what it really stores about the account.


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HeldScoutV1(_Section):
    scout_id: str
    company_id: str
    job_id: str
    received_at: AwareDatetime


class ScoutSectionV1(_Section):
    """The scout service: every scout it holds for the account (table `scouts`)."""

    scouts: list[HeldScoutV1]


class ChatMessageV1(_Section):
    message_id: str
    sender: str = Field(description="Who wrote it, as the chat service records it.")
    body: str
    sent_at: AwareDatetime


class ChatThreadV1(_Section):
    thread_id: str
    company_id: str
    opened_at: AwareDatetime
    messages: list[ChatMessageV1] = Field(description="Oldest first.")


class ChatSectionV1(_Section):
    """The chat service: threads with companies and their messages (`chat_threads`,
    `chat_messages`)."""

    threads: list[ChatThreadV1]


class MailContactV1(_Section):
    email: str
    display_name: str
    notifications: dict[str, bool]
    updated_at: AwareDatetime


NoticeStatus = Literal[
    "queued",  # waiting for delivery
    "sent",  # handed to the mail server
    "dropped",  # not sent: the member switched this kind of notice off
    "suppressed",  # not sent: the account was withdrawing, or the address was refused
]


class MailNoticeV1(_Section):
    notice_id: str
    kind: str
    subject: str
    body: str
    status: NoticeStatus
    queued_at: AwareDatetime
    sent_at: AwareDatetime | None = Field(
        default=None, description="When it was sent or suppressed; None while queued."
    )


class MailSectionV1(_Section):
    """The mail service: the contact data it keeps (`contacts`) and every notice queued, sent,
    dropped or suppressed, with dates."""

    contact: MailContactV1 | None
    notices: list[MailNoticeV1]


SECTION_MODELS: dict[str, type[BaseModel]] = {
    "scout": ScoutSectionV1,
    "chat": ChatSectionV1,
    "mail": MailSectionV1,
}


# The document the member downloads


class ExportedProfileV1(_Section):
    birth_year: int | None
    prefecture: str | None
    job_title: str | None


class ExportedWorkV1(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    company: str
    title: str
    from_: date = Field(alias="from")
    to: date | None = None


class ExportedDesiredV1(_Section):
    locations: list[str]
    industries: list[str]
    job_types: list[str]
    min_salary: int | None


class ExportedScoutV1(_Section):
    scout_id: str
    company_id: str
    job_id: str
    received_at: AwareDatetime


class ExportedGiftV1(_Section):
    kind: str
    amount_jpy: int
    company_id: str
    start_date: date
    claimed_at: AwareDatetime


class AccountSectionV1(_Section):
    """The account as the member sees it, from the lifecycle service's own events."""

    account_id: UUID
    email: str
    display_name: str
    phone: str | None
    profile: ExportedProfileV1
    work_history: list[ExportedWorkV1]
    desired: ExportedDesiredV1
    notifications: dict[str, bool]
    consent_version: str
    channel: Literal["web", "app"]
    registered_at: AwareDatetime
    scouts: list[ExportedScoutV1] = Field(description="Every scout received, oldest first.")
    gift: ExportedGiftV1 | None


class ServicesV1(_Section):
    scout: ScoutSectionV1
    chat: ChatSectionV1
    mail: MailSectionV1


class DataExportV1(ContractModel):
    """`account.data-export.v1`: the document `GET .../data-exports/{id}/download` returns."""

    event_name = "account.data-export.v1"
    export_id: UUID
    account_id: UUID
    requested_at: AwareDatetime
    ready_at: AwareDatetime
    account: AccountSectionV1
    services: ServicesV1


# Documents have a schema file but are no CloudEvent: not in MODELS, so never decoded off Kafka.
DOCUMENT_MODELS: tuple[type[ContractModel], ...] = (DataExportV1,)
