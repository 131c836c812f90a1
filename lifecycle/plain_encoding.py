"""The relay's payloads as JSON without building pydantic models: byte for byte what the
contract's models dump (`model_dump_json`), at about a sixth of the cost per record.

Used only when every value has exactly the type its model declares and a value the model
accepts (a channel, reason or part from its list, a UTC time, plain JSON for `desired`):
then validating could neither change nor refuse it, and orjson writes what pydantic writes
(fields in declaration order, UUIDs and dates as text, times with `Z`, UTF-8 unescaped).
Anything else returns None and the caller lets the model validate and dump it, as before.
tests/unit/test_plain_encoding.py compares the bytes for every event type and for generated
values.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, get_args
from uuid import UUID

import orjson

from lifecycle.domain import Account
from schemas.contract import (
    ContractModel,
    GiftClaimedV1,
    PreferencesEditedV1,
    PurgedV1,
    RegisteredV1,
    ScoutReceivedV1,
    WithdrawalRequestedV1,
)

CHANNELS = frozenset(get_args(RegisteredV1.model_fields["channel"].annotation))
REASONS = frozenset(get_args(WithdrawalRequestedV1.model_fields["reason"].annotation))
PARTS = frozenset(
    get_args(get_args(PreferencesEditedV1.model_fields["changed_parts"].annotation)[0])
)
OPTIONS = orjson.OPT_UTC_Z


def lifecycle_json(event: Account.Event) -> tuple[type[ContractModel], bytes] | None:
    """The event's lifecycle payload, or None when the model must make it (or none exists)."""
    fields = _lifecycle_fields(event)
    if fields is None:
        return None
    model, values = fields
    encoded = _dumps(values)
    return None if encoded is None else (model, encoded)


def profile_json(
    account_id: UUID, email: object, display_name: object, notifications: object
) -> bytes | None:
    """ProfileV1's JSON value, or None when the model must make it."""
    if not (_is_str(email) and _is_str(display_name) and _is_settings(notifications)):
        return None
    return _dumps(
        {
            "account_id": account_id,
            "email": email,
            "display_name": display_name,
            "notifications": notifications,
        }
    )


def _dumps(values: dict[str, Any]) -> bytes | None:
    try:
        return orjson.dumps(values, option=OPTIONS)
    except orjson.JSONEncodeError:
        # An integer past 64 bits (pydantic writes it) or a lone surrogate (pydantic refuses
        # it): the model decides.
        return None


def _lifecycle_fields(event: Account.Event) -> tuple[type[ContractModel], dict[str, Any]] | None:
    account_id = event.originator_id
    if type(account_id) is not UUID or not _is_utc(event.timestamp):
        return None
    model: type[ContractModel]
    fields: dict[str, Any]
    match event:
        case Account.Registered():
            profile = event.profile if type(event.profile) is dict else {}
            fields = {
                "account_id": account_id,
                "registered_at": event.timestamp,
                "channel": event.channel,
                "consent_version": event.consent_version,
                "birth_year": int_or_none(profile.get("birth_year")),
                "prefecture": str_or_none(profile.get("prefecture")),
                "notifications": event.notifications,
            }
            ok = (
                type(profile) is dict
                and _is_str(event.channel)
                and event.channel in CHANNELS
                and _is_str(event.consent_version)
                and _is_settings(event.notifications)
            )
            model = RegisteredV1
        case Account.PreferencesEdited():
            parts = event.changed_parts
            ok = (
                type(parts) is list
                and all(type(part) is str and part in PARTS for part in parts)
                and (event.notifications is None or _is_settings(event.notifications))
                and (event.desired is None or _is_plain_object(event.desired))
            )
            fields = {
                "account_id": account_id,
                "changed_parts": parts,
                "notifications": event.notifications,
                "desired": event.desired,
            }
            model = PreferencesEditedV1
        case Account.ScoutReceived():
            ok = (
                _is_str(event.scout_id)
                and _is_str(event.company_id)
                and _is_str(event.job_id)
                and _is_utc(event.received_at)
            )
            fields = {
                "account_id": account_id,
                "scout_id": event.scout_id,
                "company_id": event.company_id,
                "job_id": event.job_id,
                "received_at": event.received_at,
            }
            model = ScoutReceivedV1
        case Account.GiftClaimed():
            ok = (
                _is_str(event.company_id)
                and type(event.start_date) is date
                and _is_str(event.gift_kind)
                and _is_int(event.amount_jpy)
            )
            fields = {
                "account_id": account_id,
                "company_id": event.company_id,
                "start_date": event.start_date,
                "gift_kind": event.gift_kind,
                "amount_jpy": event.amount_jpy,
            }
            model = GiftClaimedV1
        case Account.WithdrawalRequested():
            ok = (
                _is_str(event.reason)
                and event.reason in REASONS
                and type(event.gift_forfeited) is bool
            )
            fields = {
                "account_id": account_id,
                "reason": event.reason,
                "requested_at": event.timestamp,
                "gift_forfeited": event.gift_forfeited,
            }
            model = WithdrawalRequestedV1
        case Account.Purged():
            model, fields, ok = (
                PurgedV1,
                {"account_id": account_id, "purged_at": event.timestamp},
                True,
            )
        case _:
            return None
    return (model, fields) if ok else None


# The public values of a registration's profile (shared with lifecycle.publishing).


def int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# Guards: exactly the type the model declares, and a value it keeps as it is.


def _is_str(value: object) -> bool:
    return type(value) is str


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_utc(value: object) -> bool:
    return type(value) is datetime and value.tzinfo is UTC


def _is_settings(value: object) -> bool:
    """dict[str, bool], as `Notifications` declares."""
    return type(value) is dict and all(
        type(name) is str and type(flag) is bool for name, flag in value.items()
    )


def _is_plain_object(value: object) -> bool:
    return type(value) is dict and _is_plain(value)


def _is_plain(value: object) -> bool:
    """JSON that pydantic (for `Any`) and orjson write alike: no floats, no other types."""
    if value is None or type(value) in (str, bool, int):
        return True
    if type(value) is list:
        return all(_is_plain(item) for item in value)
    if type(value) is dict:
        return all(type(name) is str and _is_plain(item) for name, item in value.items())
    return False
