"""The relay's plain encoder writes exactly what the contract's models dump, and leaves every
value it cannot vouch for to the model (which validates, and refuses what it must)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from lifecycle import plain_encoding
from lifecycle.domain import Account
from lifecycle.publishing import lifecycle_json, lifecycle_payload, profile_json
from schemas.contract import LIFECYCLE_MODELS, ProfileV1, rfc3339

NOW = datetime(2026, 4, 1, 9, 30, 15, 123456, tzinfo=UTC)


def lived_events() -> list[Account.Event]:
    """One event of every type, as the domain makes them."""
    account = Account.register(
        email="hanako@example.jp",
        display_name="山田花子",
        phone="090-1234-5678",
        job_title="Accountant",
        work_history=[{"company": "Previous KK"}],
        profile={"birth_year": 1990, "prefecture": "東京"},
        desired={"locations": ["tokyo", "remote"], "min_salary": 8_000_000, "nested": {"a": None}},
        consent_version="2026-01",
        channel="app",
    )
    account.edit_preferences(
        notifications={"scouts": False, "recommendations": True, "notices": True},
        desired={"industries": ["IT"]},
    )
    account.receive_scout(
        scout_id="s1", company_id="c1", job_id="j1", received_at=NOW - timedelta(days=1)
    )
    account.claim_gift(company_id="c1", start_date=date(2026, 5, 1))
    account.request_withdrawal(reason="hired_via_platform", comment="thanks")
    account.purge()
    return [event for event in account.collect_events() if isinstance(event, Account.Event)]


def by_the_model(event: Account.Event) -> tuple[type[Any], bytes]:
    payload = lifecycle_payload(event)
    assert payload is not None
    return type(payload), payload.model_dump_json().encode()


def test_every_event_type_is_encoded_plainly_and_byte_for_byte_as_the_model_dumps_it() -> None:
    events = lived_events()
    plain = [plain_encoding.lifecycle_json(event) for event in events]
    assert all(encoded is not None for encoded in plain)  # the fast path, for every type
    assert [encoded[0] for encoded in plain if encoded] == list(LIFECYCLE_MODELS)
    assert plain == [by_the_model(event) for event in events]
    registered, edited = events[0], events[1]
    assert isinstance(registered, Account.Registered)
    for event in (registered, edited):
        expected = ProfileV1(
            account_id=registered.originator_id,
            email=registered.email,
            display_name=registered.display_name,
            notifications=event.notifications,  # type: ignore[attr-defined]
        )
        assert profile_json(event, registered) == expected.model_dump_json().encode()


def event(kind: type[Account.Event], **values: Any) -> Account.Event:
    return kind(
        originator_id=values.pop("originator_id", uuid4()),
        originator_version=values.pop("originator_version", 3),
        timestamp=values.pop("timestamp", NOW),
        **values,
        **({"originator_topic": "lifecycle.domain:Account"} if kind is Account.Registered else {}),
    )


# Values that reach payloads: any text, JSON without floats, settings, times, big integers.
texts = st.text()
plain_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
settings_dicts = st.dictionaries(texts, st.booleans(), max_size=4)
utc_times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=150, deadline=None)
@given(
    scout=st.tuples(texts, texts, texts),
    received_at=utc_times,
    at=utc_times,
    notifications=settings_dicts,
    desired=st.dictionaries(texts, plain_json, max_size=4),
    consent=texts,
    prefecture=texts,
    gift=st.tuples(texts, texts, st.integers(min_value=-(2**63), max_value=2**64 - 1)),
    start=st.dates(),
)
def test_generated_values_encode_as_the_model_dumps_them(
    scout: tuple[str, str, str],
    received_at: datetime,
    at: datetime,
    notifications: dict[str, bool],
    desired: dict[str, Any],
    consent: str,
    prefecture: str,
    gift: tuple[str, str, int],
    start: date,
) -> None:
    events = [
        event(
            Account.Registered,
            timestamp=at,
            email="e",
            display_name="n",
            phone=None,
            job_title=None,
            work_history=[],
            profile={"birth_year": "1990", "prefecture": prefecture},
            desired=desired,
            notifications=notifications,
            consent_version=consent,
            channel="web",
        ),
        event(
            Account.PreferencesEdited,
            timestamp=at,
            profile=None,
            job_title=None,
            work_history=None,
            desired=desired,
            notifications=notifications,
        ),
        event(
            Account.ScoutReceived,
            scout_id=scout[0],
            company_id=scout[1],
            job_id=scout[2],
            received_at=received_at,
        ),
        event(
            Account.GiftClaimed,
            company_id=gift[0],
            start_date=start,
            gift_kind=gift[1],
            amount_jpy=gift[2],
        ),
    ]
    for each in events:
        # Generated text holds no lone surrogate (hypothesis' default): always the plain path.
        assert plain_encoding.lifecycle_json(each) == by_the_model(each)
    account_id = uuid4()
    profile = ProfileV1(
        account_id=account_id, email=scout[0], display_name=scout[1], notifications=notifications
    )
    assert plain_encoding.profile_json(account_id, scout[0], scout[1], notifications) == (
        profile.model_dump_json().encode()
    )


def test_values_the_model_would_change_or_refuse_are_left_to_it() -> None:
    tokyo = timezone(timedelta(hours=9))
    left = [
        # A time with another offset than UTC, a naive one, a float, an unknown reason.
        event(Account.Purged, timestamp=NOW.astimezone(tokyo)),
        event(
            Account.ScoutReceived,
            scout_id="s",
            company_id="c",
            job_id="j",
            received_at=NOW.replace(tzinfo=None),
        ),
        event(
            Account.PreferencesEdited,
            profile=None,
            job_title=None,
            work_history=None,
            desired={"min_salary": 1.5},
            notifications=None,
        ),
        event(
            Account.WithdrawalRequested,
            reason="bored",
            reason_details=[],
            comment=None,
            acknowledged_gift_loss=True,
            gift_forfeited=False,
        ),
        event(Account.GiftClaimed, company_id="c", start_date=NOW, gift_kind="k", amount_jpy=True),
    ]
    # Values orjson cannot write as pydantic does: an integer past 64 bits, a lone surrogate.
    huge = event(
        Account.GiftClaimed, company_id="c", start_date=NOW.date(), gift_kind="k", amount_jpy=2**70
    )
    surrogate = event(
        Account.ScoutReceived, scout_id="\ud800", company_id="c", job_id="j", received_at=NOW
    )
    left += [huge, surrogate]
    assert [plain_encoding.lifecycle_json(each) for each in left] == [None] * len(left)
    assert plain_encoding.profile_json(uuid4(), "\ud800", "n", {}) is None
    # The model makes what it accepts, byte for byte as before, and refuses the rest.
    for accepted in (left[0], left[2], huge):
        assert lifecycle_json(accepted) == by_the_model(accepted)
    with pytest.raises(PydanticSerializationError):
        lifecycle_json(surrogate)
    for refused in (left[1], left[3]):
        with pytest.raises(ValidationError):
            lifecycle_json(refused)


@pytest.mark.parametrize(
    "moment",
    [
        NOW,
        NOW.replace(microsecond=0),
        NOW.astimezone(timezone(timedelta(hours=9))),
        NOW.replace(tzinfo=timezone(timedelta(0))),
    ],
)
def test_ce_time_is_the_utc_time_with_z(moment: datetime) -> None:
    assert rfc3339(moment) == moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert rfc3339(moment).startswith(f"{moment.astimezone(UTC):%Y-%m-%dT%H:%M:%S}")
