"""The Kafka contract: envelope round trips, refusals, and no personal value outside the profile."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from lifecycle.domain import Account
from lifecycle.publishing import lifecycle_payload
from schemas.contract import (
    LIFECYCLE_MODELS,
    MODELS,
    ContractError,
    ContractModel,
    ErasureConfirmedV1,
    ErasureConfirmedV2,
    GiftClaimedV1,
    PreferencesEditedV1,
    ProfileV1,
    PurgedV1,
    RegisteredV1,
    ScoutReceivedV1,
    TopicNames,
    WithdrawalRequestedV1,
    decode_record,
    encode_erasure_confirmed,
    encode_record,
    encode_tombstone,
    lifecycle_event_id,
    profile_event_id,
)
from schemas.data_export import ExportPartV1, ExportRequestedV1, SealedBoxV1

NOW = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)
EXPORT_ID = UUID("0b5e7c1e-3f7d-4e0a-9a53-6c1f2d7e8a41")
PERSONAL: dict[str, Any] = {
    "email": "hanako.yamada@example.jp",
    "display_name": "山田花子",
    "phone": "090-1234-5678",
    "job_title": "Senior Accountant at Kabushiki",
    "work_history": [{"company": "Previous Employer KK", "years": 3}],
    "comment": "my manager Suzuki-san was awful",
}
PERSONAL_STRINGS = (
    "hanako.yamada",
    "山田花子",
    "090-1234-5678",
    "Senior Accountant",
    "Previous Employer",
    "Suzuki-san",
)


def samples(account_id: UUID) -> list[ContractModel]:
    return [
        RegisteredV1(
            account_id=account_id,
            registered_at=NOW,
            channel="app",
            consent_version="2026-01",
            birth_year=1990,
            prefecture="tokyo",
            notifications={"scouts": True, "notices": False},
        ),
        PreferencesEditedV1(
            account_id=account_id,
            changed_parts=["notifications", "job_title"],
            notifications={"scouts": False},
        ),
        ScoutReceivedV1(
            account_id=account_id, scout_id="s1", company_id="c1", job_id="j1", received_at=NOW
        ),
        GiftClaimedV1(
            account_id=account_id,
            company_id="c1",
            start_date=date(2026, 5, 1),
            gift_kind="gift_card",
            amount_jpy=5000,
        ),
        WithdrawalRequestedV1(
            account_id=account_id,
            reason="hired_via_platform",
            requested_at=NOW,
            gift_forfeited=False,
        ),
        PurgedV1(account_id=account_id, purged_at=NOW),
        ProfileV1(
            account_id=account_id,
            email=PERSONAL["email"],
            display_name=PERSONAL["display_name"],
            notifications={"scouts": True},
        ),
        ErasureConfirmedV1(account_id=account_id, service="mail", rows_removed=3, confirmed_at=NOW),
        ErasureConfirmedV2(
            account_id=account_id,
            service="chat",
            rows_removed=0,
            confirmed_at=NOW,
            outcome="failed",
            failure_code="legal_hold",
            withdrawal_version=4,
        ),
        ExportRequestedV1(
            export_id=EXPORT_ID,
            account_id=account_id,
            public_key="A" * 43,
            requested_at=NOW,
            expires_at=NOW + timedelta(days=7),
        ),
        ExportPartV1(
            export_id=EXPORT_ID,
            account_id=account_id,
            service="scout",
            part_id=EXPORT_ID,
            outcome="sealed",
            chunk=1,
            chunks=2,
            sealed=SealedBoxV1(ephemeral_public_key="B" * 43, nonce="C" * 16, ciphertext="D" * 40),
            produced_at=NOW,
        ),
    ]


def test_every_model_has_a_sample_and_a_distinct_type() -> None:
    assert {type(sample) for sample in samples(uuid4())} == set(MODELS)
    assert len({model.ce_type() for model in MODELS}) == len(MODELS)
    assert RegisteredV1.ce_type() == "jp.jobchange.account.registered.v1"
    assert RegisteredV1.schema_path() == "v1/account.registered.v1.json"


@pytest.mark.parametrize("index", range(len(MODELS)))
def test_encode_then_decode_round_trips_in_binary_mode(index: int) -> None:
    account_id = uuid4()
    payload = samples(account_id)[index]
    record = encode_record(payload, ce_id=f"{account_id}:7", subject=str(account_id), time=NOW)

    assert record.key == str(account_id).encode()
    headers = dict(record.headers)
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_id"] == f"{account_id}:7".encode()
    assert headers["ce_source"] == b"/lifecycle/accounts"
    assert headers["ce_type"] == type(payload).ce_type().encode()
    assert headers["ce_time"] == b"2026-04-01T09:30:00Z"
    assert headers["ce_subject"] == str(account_id).encode()
    assert headers["content-type"] == b"application/json"
    assert headers["ce_dataschema"].decode().endswith(type(payload).schema_path())
    assert record.value is not None
    assert json.loads(record.value)["account_id"] == str(account_id)

    envelope = decode_record(record.headers, record.value)
    assert envelope.data == payload
    assert envelope.id == f"{account_id}:7"
    assert envelope.account_id == account_id
    assert envelope.time == NOW
    assert not envelope.is_tombstone


def test_headers_and_key_never_carry_personal_values() -> None:
    account_id = uuid4()
    for payload in samples(account_id):
        record = encode_record(payload, ce_id=f"{account_id}:1", subject=str(account_id), time=NOW)
        exposed = record.key + b"".join(name.encode() + value for name, value in record.headers)
        for text in PERSONAL_STRINGS:
            assert text.encode() not in exposed


def test_profile_tombstone_has_headers_and_no_value() -> None:
    account_id = uuid4()
    record = encode_tombstone(
        ProfileV1, ce_id=profile_event_id(account_id, 4), subject=str(account_id), time=NOW
    )
    assert record.value is None
    assert record.key == str(account_id).encode()
    envelope = decode_record(record.headers, None)
    assert envelope.is_tombstone
    assert envelope.type == ProfileV1.ce_type()
    assert envelope.id == f"{account_id}:4:profile"
    assert "content-type" not in dict(record.headers)


def test_only_the_profile_may_be_a_tombstone() -> None:
    account_id = uuid4()
    with pytest.raises(ContractError):
        encode_tombstone(PurgedV1, ce_id=f"{account_id}:1", subject=str(account_id), time=NOW)
    record = encode_record(
        PurgedV1(account_id=account_id, purged_at=NOW),
        ce_id=f"{account_id}:1",
        subject=str(account_id),
        time=NOW,
    )
    with pytest.raises(ContractError, match="without data"):
        decode_record(record.headers, None)


def test_erasure_confirmation_has_an_unpredictable_id_and_its_service_as_source() -> None:
    account_id = uuid4()
    confirmation = ErasureConfirmedV1(
        account_id=account_id, service="scout", rows_removed=0, confirmed_at=NOW
    )
    first = encode_erasure_confirmed(confirmation)
    again = encode_erasure_confirmed(confirmation)
    assert first.headers != again.headers  # nobody can publish its id before the service
    envelope = decode_record(first.headers, first.value)
    assert envelope.id.startswith(f"{account_id}:scout:erasure-confirmed:")
    assert len(envelope.id.rsplit(":", 1)[1]) == 32
    assert envelope.source == "/scout/erasure"
    assert envelope.data == confirmation


def _registered_record() -> tuple[UUID, list[tuple[str, bytes]], bytes]:
    account_id = uuid4()
    record = encode_record(
        samples(account_id)[0], ce_id=f"{account_id}:1", subject=str(account_id), time=NOW
    )
    assert record.value is not None
    return account_id, record.headers, record.value


def _replace(headers: list[tuple[str, bytes]], name: str, value: bytes | None) -> Any:
    kept = [(key, raw) for key, raw in headers if key != name]
    return kept if value is None else [*kept, (name, value)]


OTHER_ACCOUNT = b"6f1e2d3c-4b5a-4968-8776-5a4b3c2d1e0f"


@pytest.mark.parametrize(
    ("header", "value", "message"),
    [
        ("ce_type", b"jp.jobchange.account.unknown.v1", "unknown type"),
        ("ce_specversion", b"0.3", "specversion"),
        ("ce_id", None, "missing CloudEvents headers: ce_id"),
        ("ce_time", b"yesterday", "RFC 3339"),
        ("ce_time", b"2026-04-01T09:30:00", "offset"),
        ("content-type", b"text/plain", "content-type"),
        # An id names its account: one naming another than the subject is forged or broken.
        # (Fixed ids: every xdist worker collects the same test ids.)
        (
            "ce_subject",
            b"6f1e2d3c-4b5a-4968-8776-5a4b3c2d1e0f",
            "ce_id does not belong to ce_subject",
        ),
        ("ce_id", b"6f1e2d3c-4b5a-4968-8776-5a4b3c2d1e0f:7", "ce_id does not belong to ce_subject"),
        ("ce_source", b"\xff\xfe", "UTF-8"),
    ],
)
def test_decode_refuses_a_broken_envelope(header: str, value: bytes | None, message: str) -> None:
    _, headers, body = _registered_record()
    with pytest.raises(ContractError, match=message):
        decode_record(_replace(headers, header, value), body)


def test_decode_refuses_unknown_fields_without_echoing_values() -> None:
    _, headers, body = _registered_record()
    data = json.loads(body)
    data["email"] = PERSONAL["email"]
    with pytest.raises(ContractError, match="email: extra_forbidden") as raised:
        decode_record(headers, json.dumps(data).encode())
    assert PERSONAL["email"] not in str(raised.value)


def test_decode_refuses_a_naive_timestamp_in_the_payload() -> None:
    _, headers, body = _registered_record()
    data = json.loads(body)
    data["registered_at"] = "2026-04-01T09:30:00"
    with pytest.raises(ContractError, match="registered_at"):
        decode_record(headers, json.dumps(data).encode())


def test_topic_names_default_to_v1_and_take_a_prefix() -> None:
    names = TopicNames()
    assert names.lifecycle == "account.lifecycle.v1"
    assert names.profile == "account.profile.v1"
    assert names.erasure_confirmed("scout") == "account.erasure-confirmed.scout.v1"
    assert names.legacy_erasure_confirmed == "account.erasure-confirmed.v1"
    assert names.service_of_confirmation_topic("account.erasure-confirmed.chat.v1") == "chat"
    assert names.service_of_confirmation_topic("account.erasure-confirmed.v1") is None
    assert names.dead_letters == (
        "scout.dlq.v1",
        "chat.dlq.v1",
        "mail.dlq.v1",
        "lifecycle-erasure.dlq.v1",
        "lifecycle-export.dlq.v1",
    )
    assert names.export_requested == "account.export-requested.v1"
    assert names.export_part("mail") == "account.export-part.mail.v1"
    assert names.service_of_export_part_topic("account.export-part.chat.v1") == "chat"
    assert names.service_of_export_part_topic("account.erasure-confirmed.chat.v1") is None
    assert names.inputs_of("lifecycle-export") == tuple(names.export_parts.values())
    assert names.export_requested in names.inputs_of("scout")
    prefixed = TopicNames(prefix="t1.")
    assert prefixed.lifecycle == "t1.account.lifecycle.v1"
    assert prefixed.dlq("mail") == "t1.mail.dlq.v1"
    assert len(set(prefixed.all())) == 14
    assert all(name.startswith("t1.") for name in prefixed.all())


# The relay's mapping from domain events (pure: built from the aggregate, no database)


def lived_account() -> tuple[Account, list[Any]]:
    account = Account.register(
        email=PERSONAL["email"],
        display_name=PERSONAL["display_name"],
        phone=PERSONAL["phone"],
        job_title=PERSONAL["job_title"],
        work_history=PERSONAL["work_history"],
        profile={"birth_year": 1990, "prefecture": "tokyo"},
        desired={"locations": ["tokyo"]},
        consent_version="2026-01",
        channel="app",
    )
    account.edit_preferences(
        notifications={"scouts": False, "recommendations": True, "notices": True},
        job_title="Head of Finance, Secret Project",
    )
    account.receive_scout(
        scout_id="s1", company_id="c1", job_id="j1", received_at=NOW - timedelta(days=1)
    )
    account.claim_gift(company_id="c1", start_date=date(2026, 5, 1))
    account.request_withdrawal(reason="hired_via_platform", comment=PERSONAL["comment"])
    account.purge()
    return account, list(account.collect_events())


def test_every_account_event_class_is_in_the_contract() -> None:
    account_events = {
        value
        for value in vars(Account).values()
        if isinstance(value, type)
        and issubclass(value, Account.Event)
        # The library's own default creation event; Account is created by Registered instead.
        and value not in (Account.Event, Account.Created)
    }
    _, events = lived_account()
    assert {type(event) for event in events} == account_events
    payloads = [lifecycle_payload(event) for event in events]
    assert [type(payload) for payload in payloads] == list(LIFECYCLE_MODELS)


def test_lifecycle_payloads_carry_facts_and_no_personal_values() -> None:
    account, events = lived_account()
    payloads = [lifecycle_payload(event) for event in events]
    for payload in payloads:
        assert payload is not None
        text = payload.model_dump_json()
        for value in (*PERSONAL_STRINGS, "Head of Finance", "Secret Project"):
            assert value not in text
    registered, edited, scout, gift, withdrawal, purged = payloads
    assert isinstance(registered, RegisteredV1)
    assert (registered.birth_year, registered.prefecture) == (1990, "tokyo")
    assert registered.registered_at == events[0].timestamp
    assert isinstance(edited, PreferencesEditedV1)
    assert edited.changed_parts == ["job_title", "notifications"]
    assert edited.notifications == {"scouts": False, "recommendations": True, "notices": True}
    assert isinstance(scout, ScoutReceivedV1)
    assert isinstance(gift, GiftClaimedV1)
    assert gift.amount_jpy == 5000
    assert isinstance(withdrawal, WithdrawalRequestedV1)
    assert withdrawal.reason == "hired_via_platform"
    assert isinstance(purged, PurgedV1)
    assert all(getattr(payload, "account_id", None) == account.id for payload in payloads)
    assert lifecycle_event_id(account.id, 3) == f"{account.id}:3"
