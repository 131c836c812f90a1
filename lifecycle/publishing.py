"""The one way our Kafka records are made: the relay publishes every Account event (and every
data export's request) through here, and every re-publication goes through here too (the
erasure retry encodes the withdrawal's record again, under a retry id; a dead-letter re-drive
publishes the record the relay made, read back from its source offset, without the dead
letter's headers).
"""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID

from lifecycle import plain_encoding
from lifecycle.account_terms import REDACTED
from lifecycle.data_export_aggregate import DataExport
from lifecycle.domain import Account
from lifecycle.kafka.inspector import SourceRecord
from lifecycle.plain_encoding import int_or_none, str_or_none
from schemas.contract import (
    ContractModel,
    GiftClaimedV1,
    PreferencesEditedV1,
    ProfileV1,
    PurgedV1,
    Record,
    RegisteredV1,
    ScoutReceivedV1,
    TopicNames,
    WithdrawalRequestedV1,
    encode_tombstone,
    encode_value,
    lifecycle_event_id,
    profile_event_id,
    retry_event_id,
)
from schemas.data_export import ExportRequestedV1, encode_export_requested

# A dead letter's own headers (source offset, error, attempts): never published again.
DEAD_LETTER_HEADER_PREFIX = "dlq_"
# The events after which the profile topic gets a record (`_contact`, or the tombstone).
PROFILE_EVENTS = (Account.Registered, Account.PreferencesEdited, Account.Purged)


def records_of(
    event: Account.Event, topics: TopicNames, registered: Account.Registered | None = None
) -> Iterator[tuple[str, Record]]:
    """What the relay publishes for one event: its lifecycle record and, when the contact data
    changes, its profile record (a tombstone at `Purged`). `registered` is the account's
    Registered event, for a notifications edit (the address and name are never edited).
    Nothing for an event outside the contract."""
    record = lifecycle_record(event)
    if record is None:
        return
    yield topics.lifecycle, record
    if not isinstance(event, PROFILE_EVENTS):
        return  # only these change the contact data (most events are scouts)
    account_id: UUID = event.originator_id
    ce_id, subject = profile_event_id(account_id, event.originator_version), str(account_id)
    if isinstance(event, Account.Purged):
        yield (
            topics.profile,
            encode_tombstone(ProfileV1, ce_id=ce_id, subject=subject, time=event.timestamp),
        )
        return
    profile = profile_json(event, registered)
    if profile is not None:
        yield (
            topics.profile,
            encode_value(ProfileV1, profile, ce_id=ce_id, subject=subject, time=event.timestamp),
        )


def lifecycle_record(event: Account.Event, *, retry: bool = False) -> Record | None:
    """The event's record on the lifecycle topic; `retry` gives it a fresh id (the original's
    with a random `:retry-...` suffix), so no record published before, forged or not, makes it
    a duplicate. None for an event outside the contract."""
    encoded = lifecycle_json(event)
    if encoded is None:
        return None
    model, value = encoded
    account_id: UUID = event.originator_id
    version = event.originator_version
    return encode_value(
        model,
        value,
        ce_id=retry_event_id(account_id, version)
        if retry
        else lifecycle_event_id(account_id, version),
        subject=str(account_id),
        time=event.timestamp,
    )


def lifecycle_json(event: Account.Event) -> tuple[type[ContractModel], bytes] | None:
    """The event's lifecycle payload as its model and JSON value (None: not in the contract).
    Made by `plain_encoding` when the event's values have exactly the types the model declares,
    else by the model itself, which validates (and refuses what it must)."""
    plain = plain_encoding.lifecycle_json(event)
    if plain is not None:
        return plain
    payload = lifecycle_payload(event)
    if payload is None:
        return None
    return type(payload), payload.model_dump_json().encode()


def export_request_record(
    export: DataExport, event: DataExport.Requested | DataExport.RetryRequested
) -> Record:
    """A data export's request (or ops' retry of some services) as the services read it, on
    `topics.export_requested`. A retry's id is its event's: a re-publish after a crash is a
    duplicate, as it should be, and no retry is ever a duplicate of the request."""
    retry = isinstance(event, DataExport.RetryRequested)
    request = ExportRequestedV1(
        export_id=export.id,
        account_id=export.account_id,
        public_key=export.public_key,
        requested_at=event.timestamp,
        expires_at=export.expires_at,
        services=list(event.services) if isinstance(event, DataExport.RetryRequested) else None,
    )
    return encode_export_requested(request, retry=str(event.originator_version) if retry else None)


def republication(source: SourceRecord) -> Record:
    """A record read back from its topic, to be published again as it was made."""
    headers = [(k, v) for k, v in source.headers if not k.startswith(DEAD_LETTER_HEADER_PREFIX)]
    return Record(source.key or b"", headers, source.value)


def profile_json(event: Account.Event, registered: Account.Registered | None) -> bytes | None:
    """ProfileV1's JSON value: contact data as of this event, when it changes; None once the
    key is destroyed. Plain when the values have exactly the declared types
    (`lifecycle.plain_encoding`), else made by the model, which validates."""
    contact = _contact(event, registered)
    if contact is None:
        return None
    email, display_name, notifications = contact
    plain = plain_encoding.profile_json(event.originator_id, email, display_name, notifications)
    if plain is not None:
        return plain
    profile = ProfileV1(
        account_id=event.originator_id,
        email=email,
        display_name=display_name,
        notifications=notifications,
    )
    return profile.model_dump_json().encode()


def _contact(
    event: Account.Event, registered: Account.Registered | None
) -> tuple[str, str, dict[str, bool]] | None:
    """Address, name and notification settings as of this event, when they change; None
    once the key is destroyed (the values read as redacted)."""
    if isinstance(event, Account.Registered):
        email, display_name, notifications = (
            event.email,
            event.display_name,
            event.notifications,
        )
    elif isinstance(event, Account.PreferencesEdited) and event.notifications is not None:
        # The edit carries the whole merged notification settings.
        assert registered is not None, "an edit's profile needs the account's Registered event"
        email, display_name, notifications = (
            registered.email,
            registered.display_name,
            event.notifications,
        )
    else:
        return None
    if REDACTED in (email, display_name):
        return None
    return email, display_name, notifications


def lifecycle_payload(event: Account.Event) -> ContractModel | None:
    """The public, personal-value-free form of an Account event (None: not in the contract)."""
    account_id = event.originator_id
    payload: ContractModel | None = None
    match event:
        case Account.Registered():
            payload = RegisteredV1(
                account_id=account_id,
                registered_at=event.timestamp,
                channel=event.channel,  # type: ignore[arg-type]
                consent_version=event.consent_version,
                birth_year=int_or_none(event.profile.get("birth_year")),
                prefecture=str_or_none(event.profile.get("prefecture")),
                notifications=event.notifications,
            )
        case Account.PreferencesEdited():
            payload = PreferencesEditedV1(
                account_id=account_id,
                changed_parts=event.changed_parts,  # type: ignore[arg-type]
                notifications=event.notifications,
                desired=event.desired,
            )
        case Account.ScoutReceived():
            payload = ScoutReceivedV1(
                account_id=account_id,
                scout_id=event.scout_id,
                company_id=event.company_id,
                job_id=event.job_id,
                received_at=event.received_at,
            )
        case Account.GiftClaimed():
            payload = GiftClaimedV1(
                account_id=account_id,
                company_id=event.company_id,
                start_date=event.start_date,
                gift_kind=event.gift_kind,
                amount_jpy=event.amount_jpy,
            )
        case Account.WithdrawalRequested():
            payload = WithdrawalRequestedV1(
                account_id=account_id,
                reason=event.reason,  # type: ignore[arg-type]
                requested_at=event.timestamp,
                gift_forfeited=event.gift_forfeited,
            )
        case Account.Purged():
            payload = PurgedV1(account_id=account_id, purged_at=event.timestamp)
    return payload
