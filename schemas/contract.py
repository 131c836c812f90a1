"""The public contract on Kafka: topic names, payload models and the CloudEvents envelope.

Every record is a CloudEvent in binary content mode (CloudEvents 1.0, Kafka protocol binding):
the attributes travel as `ce_*` headers, the payload as the JSON value, `content-type` names
its media type, and a record without data is a tombstone. Keys and headers carry ids, types
and times only; personal values appear in one place alone, the compacted profile topic.

This module imports nothing from the lifecycle service, so any consumer can depend on it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal, NamedTuple
from uuid import UUID, uuid4, uuid5

from pydantic import AwareDatetime, Field, ValidationError, model_validator

from schemas import base
from schemas.data_export import (
    DOCUMENT_MODELS,
    EXPORT_GROUP,
    EXPORT_MODELS,
    EXPORT_PART_TOPIC_PATTERN,
    EXPORT_REQUESTED_TOPIC,
    ExportPartV1,
    ExportRequestedV1,
)

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
LIFECYCLE_SOURCE = "/lifecycle/accounts"

LIFECYCLE_TOPIC = "account.lifecycle.v1"
PROFILE_TOPIC = "account.profile.v1"
# Each erasing service confirms on a topic of its own, which only its principal may write
# (Kafka ACLs): the erasure process attributes a confirmation by the topic it came from.
ERASURE_CONFIRMED_TOPIC_PATTERN = "account.erasure-confirmed.{service}.v1"
# The shared topic of earlier releases: anyone with write access could confirm for any service.
# Read only while `LIFECYCLE_ERASURE_LEGACY_CONFIRMATIONS` is on (a rolling upgrade).
LEGACY_ERASURE_CONFIRMED_TOPIC = "account.erasure-confirmed.v1"
# The one list of services that hold personal data and must confirm erasure before `Purged`.
ERASING_SERVICES: tuple[str, ...] = ("scout", "chat", "mail")
# The services that seal a part of a member's data export (schemas.data_export): the same
# services, since what a service must erase is what it must disclose.
EXPORTING_SERVICES: tuple[str, ...] = ERASING_SERVICES
# The lifecycle service's own group, which turns their confirmations into `Purged`.
ERASURE_GROUP = "lifecycle-erasure"
# The mail service's second group, its suppression fast lane over the lifecycle topic
# (consumers.withdrawal_mail.SuppressionLane): no outputs, no dead letters of its own.
SUPPRESSION_GROUP = "mail-suppression"
# Consumer groups are named after the consuming service; the lifecycle service has two (its
# export group takes the parts in: schemas.data_export.EXPORT_GROUP).
CONSUMER_GROUPS: tuple[str, ...] = (*ERASING_SERVICES, ERASURE_GROUP, EXPORT_GROUP)


# The base of every payload lives in schemas.base (shared with schemas.data_export); named here
# too, its historical home, where consumers import it from.
ContractModel = base.ContractModel


class ContractError(ValueError):
    """A record that does not follow this contract; consumers send it to their dead letters."""


@dataclass(frozen=True)
class TopicNames:
    """The topics of the contract; a prefix keeps tests (or tenants) apart on a shared broker."""

    prefix: str = ""
    consumer_groups: tuple[str, ...] = CONSUMER_GROUPS

    @property
    def lifecycle(self) -> str:
        return self.prefix + LIFECYCLE_TOPIC

    @property
    def profile(self) -> str:
        return self.prefix + PROFILE_TOPIC

    def erasure_confirmed(self, service: str) -> str:
        """The topic one erasing service confirms on (only its principal writes it)."""
        return self.prefix + ERASURE_CONFIRMED_TOPIC_PATTERN.format(service=service)

    @property
    def confirmations(self) -> dict[str, str]:
        """Each erasing service's confirmation topic, by service."""
        return {service: self.erasure_confirmed(service) for service in ERASING_SERVICES}

    @property
    def legacy_erasure_confirmed(self) -> str:
        """The shared confirmation topic of earlier releases (read only during an upgrade)."""
        return self.prefix + LEGACY_ERASURE_CONFIRMED_TOPIC

    @property
    def export_requested(self) -> str:
        """Data-export requests (only the lifecycle service writes it)."""
        return self.prefix + EXPORT_REQUESTED_TOPIC

    def export_part(self, service: str) -> str:
        """The topic one service sends its sealed export parts on (only its principal writes)."""
        return self.prefix + EXPORT_PART_TOPIC_PATTERN.format(service=service)

    @property
    def export_parts(self) -> dict[str, str]:
        """Each exporting service's part topic, by service."""
        return {service: self.export_part(service) for service in EXPORTING_SERVICES}

    def service_of_export_part_topic(self, topic: str) -> str | None:
        """The service a part topic belongs to; None for any other topic."""
        for service, name in self.export_parts.items():
            if name == topic:
                return service
        return None

    def service_of_confirmation_topic(self, topic: str) -> str | None:
        """The service a confirmation topic belongs to; None for any other topic."""
        for service, name in self.confirmations.items():
            if name == topic:
                return service
        return None

    def inputs_of(self, group: str) -> tuple[str, ...]:
        """The topics a consumer group of the contract reads (re-drive publishes to no other)."""
        if group == ERASURE_GROUP:
            return (*self.confirmations.values(), self.legacy_erasure_confirmed)
        if group == EXPORT_GROUP:
            return tuple(self.export_parts.values())
        if group == "mail":
            return (self.lifecycle, self.profile, self.export_requested)
        return (self.lifecycle, self.export_requested)

    def group_id(self, group: str) -> str:
        """A consumer group's id on the broker: the prefix keeps tenants and tests apart."""
        return self.prefix + group

    def dlq(self, group: str) -> str:
        """The dead-letter topic of one consumer group: `<group>.dlq.v1`."""
        return f"{self.prefix}{group}.dlq.v1"

    @property
    def dead_letters(self) -> tuple[str, ...]:
        return tuple(self.dlq(group) for group in self.consumer_groups)

    def all(self) -> tuple[str, ...]:
        return (
            self.lifecycle,
            self.profile,
            *self.confirmations.values(),
            self.export_requested,
            *self.export_parts.values(),
            *self.dead_letters,
        )


# Payload models


Notifications = dict[str, bool]
WithdrawalReasonCode = Literal[
    "hired_via_platform",
    "hired_elsewhere",
    "too_many_notifications",
    "postings_mismatch",
    "hard_to_use",
    "other",
]
EditablePart = Literal["profile", "job_title", "work_history", "desired", "notifications"]


class RegisteredV1(ContractModel):
    """A member registered; no contact data here (see ProfileV1)."""

    event_name = "account.registered.v1"
    account_id: UUID
    registered_at: AwareDatetime
    channel: Literal["web", "app"]
    consent_version: str
    birth_year: int | None = None
    prefecture: str | None = None
    notifications: Notifications


class PreferencesEditedV1(ContractModel):
    """Which parts changed; values only for the parts other services act on."""

    event_name = "account.preferences-edited.v1"
    account_id: UUID
    changed_parts: list[EditablePart]
    notifications: Notifications | None = None
    desired: dict[str, Any] | None = None


class ScoutReceivedV1(ContractModel):
    event_name = "account.scout-received.v1"
    account_id: UUID
    scout_id: str
    company_id: str
    job_id: str
    received_at: AwareDatetime


class GiftClaimedV1(ContractModel):
    event_name = "account.gift-claimed.v1"
    account_id: UUID
    company_id: str
    start_date: date
    gift_kind: str
    amount_jpy: int


class WithdrawalRequestedV1(ContractModel):
    """Stop every mail but the confirmation, and start erasing (the member's comment stays)."""

    event_name = "account.withdrawal-requested.v1"
    account_id: UUID
    reason: WithdrawalReasonCode
    requested_at: AwareDatetime
    gift_forfeited: bool


class PurgedV1(ContractModel):
    """The account is gone and its key destroyed; erase everything still held about it."""

    event_name = "account.purged.v1"
    account_id: UUID
    purged_at: AwareDatetime


class ProfileV1(ContractModel):
    """Current contact data, on the compacted profile topic; a tombstone erases it."""

    event_name = "account.profile.v1"
    account_id: UUID
    email: str
    display_name: str
    notifications: Notifications


class ErasureConfirmedV1(ContractModel):
    """A downstream service has removed everything it held about the account."""

    event_name = "account.erasure-confirmed.v1"
    account_id: UUID
    service: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    rows_removed: int = Field(ge=0)
    confirmed_at: AwareDatetime


# Why a service could not erase: a fixed list, so ops can act on it and nothing free-form
# (which could carry a person's data) travels on the topic.
ErasureFailureCode = Literal[
    "legal_hold",  # the data must be kept by law for now (e.g. a chat under investigation)
    "dependency_unavailable",  # a system the service needs to erase cannot be reached
    "data_locked",  # the data is in use and cannot be removed yet
    "internal_error",  # anything else; the service's own logs say more
]


class ErasureConfirmedV2(ContractModel):
    """A downstream service's outcome for one account's erasure: `erased` (everything it held
    is removed) or `failed` with a code from a fixed list; ops see a failure as errored and
    can ask the service again. Every version-1 payload is a valid version-2 payload (both
    additions are optional; an outcome left out means `erased`), and the erasure process
    reads both, so services upgrade in their own time."""

    event_name = "account.erasure-confirmed.v2"
    account_id: UUID
    service: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    rows_removed: int = Field(ge=0)
    confirmed_at: AwareDatetime
    outcome: Literal["erased", "failed"] = "erased"
    failure_code: ErasureFailureCode | None = Field(
        default=None, description="Why the service could not erase; set exactly when failed."
    )
    withdrawal_version: int | None = Field(
        default=None,
        ge=1,
        description="The account's version at its WithdrawalRequested (the number in that "
        "record's `ce_id`, `<account_id>:<version>`): which withdrawal this answers.",
    )

    @model_validator(mode="after")
    def _failure_code_with_failure_only(self) -> ErasureConfirmedV2:
        if (self.outcome == "failed") != (self.failure_code is not None):
            raise ValueError("failure_code is required when failed, and only then")
        return self


LifecyclePayload = (
    RegisteredV1
    | PreferencesEditedV1
    | ScoutReceivedV1
    | GiftClaimedV1
    | WithdrawalRequestedV1
    | PurgedV1
)
LIFECYCLE_MODELS: tuple[type[ContractModel], ...] = (
    RegisteredV1,
    PreferencesEditedV1,
    ScoutReceivedV1,
    GiftClaimedV1,
    WithdrawalRequestedV1,
    PurgedV1,
)
ERASURE_CONFIRMED_MODELS: tuple[type[ContractModel], ...] = (ErasureConfirmedV1, ErasureConfirmedV2)
MODELS: tuple[type[ContractModel], ...] = (
    *LIFECYCLE_MODELS,
    ProfileV1,
    *ERASURE_CONFIRMED_MODELS,
    *EXPORT_MODELS,
)
# Every model with a published schema file: the payloads and the documents (the data export).
SCHEMA_MODELS: tuple[type[ContractModel], ...] = (*MODELS, *DOCUMENT_MODELS)
# What each topic carries (named without the prefix; one pattern for the services' own
# confirmation topics), each payload's versions oldest first: the compatibility check compares
# each published version with the one before it on its topic.
TOPIC_PAYLOADS: dict[str, tuple[tuple[type[ContractModel], ...], ...]] = {
    LIFECYCLE_TOPIC: tuple((model,) for model in LIFECYCLE_MODELS),
    PROFILE_TOPIC: ((ProfileV1,),),
    ERASURE_CONFIRMED_TOPIC_PATTERN: (ERASURE_CONFIRMED_MODELS,),
    LEGACY_ERASURE_CONFIRMED_TOPIC: (ERASURE_CONFIRMED_MODELS,),
    EXPORT_REQUESTED_TOPIC: ((ExportRequestedV1,),),
    EXPORT_PART_TOPIC_PATTERN: ((ExportPartV1,),),
}
MODELS_BY_TYPE: dict[str, type[ContractModel]] = {model.ce_type(): model for model in MODELS}
# Types whose record may carry no data: a tombstone on a compacted topic.
TOMBSTONE_TYPES = frozenset({ProfileV1.ce_type()})


# Deterministic CloudEvents ids: a redelivered record keeps its id, so consumers dedupe by it.


def lifecycle_event_id(account_id: UUID, version: int) -> str:
    return f"{account_id}:{version}"


def profile_event_id(account_id: UUID, version: int) -> str:
    return f"{account_id}:{version}:profile"


def erasure_confirmed_event_id(account_id: UUID, service: str, nonce: str | None = None) -> str:
    """A confirmation's id: unpredictable (a random nonce), so nobody can publish it before the
    service does and have the real one skipped as a duplicate. Stable once written: the
    service's outbox keeps the record, so a re-publish after a crash carries the same id."""
    return f"{account_id}:{service}:erasure-confirmed:{nonce or uuid4().hex}"


def retry_event_id(account_id: UUID, version: int) -> str:
    """The id of a record ops asked to send again: the original's with a random suffix, so it
    is never a duplicate of the original, nor of anything published before it."""
    return f"{lifecycle_event_id(account_id, version)}:retry-{uuid4().hex}"


def id_belongs_to_subject(ce_id: str, subject: str) -> bool:
    """Every id of the contract starts with its account id (`<account>:...`): a record whose id
    names another account than its subject is forged or broken."""
    return ce_id.startswith(subject + ":") and len(ce_id) > len(subject) + 1


def dedupe_key(envelope: Envelope) -> str:
    """What consumers de-duplicate on: (source, type, id), as CloudEvents defines an event's
    identity; a record from another source or of another type never shadows a real one."""
    return f"{envelope.source} {envelope.type} {envelope.id}"


# Erasure receipts: the id follows from the account id alone, so the withdrawal-confirmation
# mail can name the receipt before it exists, and an auditor can find it from the account id.
ERASURE_RECEIPT_NAMESPACE = UUID("5b0c6c1e-3f7d-5e0a-9a53-6c1f2d7e8a41")


def erasure_receipt_id(account_id: UUID) -> UUID:
    """The id of the signed erasure receipt of one account (a UUIDv5 of its id)."""
    return uuid5(ERASURE_RECEIPT_NAMESPACE, f"erasure-receipt:{account_id}")


# Envelope


class Record(NamedTuple):
    """One Kafka record as the contract shapes it."""

    key: bytes
    headers: list[tuple[str, bytes]]
    value: bytes | None


@dataclass(frozen=True)
class Envelope:
    """A decoded record: the CloudEvents attributes and the validated payload (None: tombstone)."""

    id: str
    source: str
    type: str
    time: datetime
    subject: str
    data: ContractModel | None
    datacontenttype: str | None = None
    dataschema: str | None = None
    specversion: str = SPEC_VERSION
    # The topic the record was read from (the consumer kit sets it): what attributes a
    # confirmation to its service, never the payload or `ce_source`.
    topic: str | None = None

    @property
    def account_id(self) -> UUID:
        return UUID(self.subject)

    @property
    def is_tombstone(self) -> bool:
        return self.data is None


def rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ContractError("times must be timezone-aware")
    if moment.tzinfo is not UTC:  # stored events' times are in UTC already
        moment = moment.astimezone(UTC)
    return moment.isoformat()[:-6] + "Z"


def encode_record(
    data: ContractModel,
    *,
    ce_id: str,
    subject: str,
    time: datetime,
    source: str = LIFECYCLE_SOURCE,
) -> Record:
    """A record in binary content mode: key = subject (the account id), JSON value."""
    return encode_value(
        type(data),
        data.model_dump_json().encode(),
        ce_id=ce_id,
        subject=subject,
        time=time,
        source=source,
    )


def encode_value(
    model: type[ContractModel],
    value: bytes,
    *,
    ce_id: str,
    subject: str,
    time: datetime,
    source: str = LIFECYCLE_SOURCE,
) -> Record:
    """`encode_record` for a payload already in JSON: `value` must be exactly what the
    model's own dump makes (the relay's plain encoder, `lifecycle.publishing`, is proved so)."""
    first, middle, last = _constant_headers(model, source)
    headers = [
        first,
        ("ce_id", ce_id.encode()),
        *middle,
        ("ce_time", rfc3339(time).encode()),
        ("ce_subject", subject.encode()),
        *last,
    ]
    return Record(subject.encode(), headers, value)


def encode_tombstone(
    model: type[ContractModel],
    *,
    ce_id: str,
    subject: str,
    time: datetime,
    source: str = LIFECYCLE_SOURCE,
) -> Record:
    """A CloudEvent without data: a null value, so compaction erases the key."""
    if model.ce_type() not in TOMBSTONE_TYPES:
        raise ContractError(f"{model.ce_type()} records always carry data")
    return Record(subject.encode(), _attribute_headers(model, ce_id, subject, time, source), None)


def encode_erasure_confirmed(
    confirmation: ErasureConfirmedV1 | ErasureConfirmedV2, *, ce_id: str | None = None
) -> Record:
    """A downstream service's confirmation, for its own erasure-confirmed topic."""
    return encode_record(
        confirmation,
        ce_id=ce_id or erasure_confirmed_event_id(confirmation.account_id, confirmation.service),
        subject=str(confirmation.account_id),
        time=confirmation.confirmed_at,
        source=f"/{confirmation.service}/erasure",
    )


def decode_record(
    headers: Iterable[tuple[str, bytes]], value: bytes | None, topic: str | None = None
) -> Envelope:
    """Check the envelope and validate the payload; raises ContractError on any mismatch."""
    attributes = _checked_attributes(headers)
    ce_type = attributes["ce_type"]
    model = MODELS_BY_TYPE.get(ce_type)
    if model is None:
        raise ContractError(f"unknown type {ce_type!r}")
    try:
        time = datetime.fromisoformat(attributes["ce_time"])
    except ValueError:
        raise ContractError("ce_time is not RFC 3339") from None
    if time.tzinfo is None:
        raise ContractError("ce_time lacks an offset")
    data: ContractModel | None = None
    content_type = attributes.get("content-type")
    if value is None:
        if ce_type not in TOMBSTONE_TYPES:
            raise ContractError(f"{ce_type} record without data")
    else:
        if (content_type or "").split(";")[0].strip().lower() != CONTENT_TYPE:
            raise ContractError(f"content-type must be {CONTENT_TYPE}")
        try:
            data = model.model_validate_json(value)
        except ValidationError as error:
            # Field locations and error kinds only: the input may hold personal values.
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or '<root>'}: {item['type']}"
                for item in error.errors()
            )
            raise ContractError(f"{ce_type} payload invalid: {problems}") from None
        if str(getattr(data, "account_id", "")) != attributes["ce_subject"]:
            raise ContractError("ce_subject differs from the payload's account_id")
    return Envelope(
        id=attributes["ce_id"],
        source=attributes["ce_source"],
        type=ce_type,
        time=time,
        subject=attributes["ce_subject"],
        data=data,
        datacontenttype=content_type,
        dataschema=attributes.get("ce_dataschema"),
        specversion=attributes["ce_specversion"],
        topic=topic,
    )


def _checked_attributes(headers: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    """The headers as text, with every required CloudEvents attribute present and an id that
    belongs to the subject."""
    try:
        attributes = {name: raw.decode() for name, raw in headers if raw is not None}
    except UnicodeDecodeError:
        raise ContractError("headers must be UTF-8") from None
    missing = [
        name
        for name in ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject")
        if not attributes.get(name)
    ]
    if missing:
        raise ContractError(f"missing CloudEvents headers: {', '.join(missing)}")
    if not id_belongs_to_subject(attributes["ce_id"], attributes["ce_subject"]):
        raise ContractError("ce_id does not belong to ce_subject")
    if attributes["ce_specversion"] != SPEC_VERSION:
        raise ContractError(f"unsupported specversion {attributes['ce_specversion']!r}")
    return attributes


@functools.cache
def _constant_headers(
    model: type[ContractModel], source: str
) -> tuple[tuple[str, bytes], tuple[tuple[str, bytes], ...], tuple[tuple[str, bytes], ...]]:
    """The headers every record of `model` from `source` shares, encoded once (the relay
    makes one record per event): what comes before `ce_id`, between it and `ce_time`, and
    after `ce_subject`, in `_attribute_headers`' order."""
    return (
        ("ce_specversion", SPEC_VERSION.encode()),
        (("ce_source", source.encode()), ("ce_type", model.ce_type().encode())),
        (
            ("ce_dataschema", model.dataschema().encode()),
            ("content-type", CONTENT_TYPE.encode()),
        ),
    )


def _attribute_headers(
    model: type[ContractModel], ce_id: str, subject: str, time: datetime, source: str
) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", ce_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", model.ce_type().encode()),
        ("ce_time", rfc3339(time).encode()),
        ("ce_subject", subject.encode()),
    ]
