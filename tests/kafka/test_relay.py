"""The relay on the real broker, over SQLite and the real PostgreSQL.

Each test gets topics of its own (a unique prefix), reads them back from offset 0 up to the
end offsets the broker reports, and checks keys, order, envelope, payloads and what is absent.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from uuid import UUID

import pytest
from structlog.testing import capture_logs
from support import read_topic, wait_until

from lifecycle.application import Accounts, ScoutItem
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.producer import Headers, KafkaPublisher, PublishError
from lifecycle.relay import Relay
from lifecycle.settings import Settings
from schemas.contract import (
    ContractModel,
    Envelope,
    GiftClaimedV1,
    PreferencesEditedV1,
    ProfileV1,
    PurgedV1,
    RegisteredV1,
    ScoutReceivedV1,
    TopicNames,
    WithdrawalRequestedV1,
    decode_record,
)

CE_HEADERS = {
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_subject",
    "ce_dataschema",
    "content-type",
}


# Fixtures and helpers


@dataclass(frozen=True)
class Bus:
    bootstrap: str
    topics: TopicNames
    publisher: KafkaPublisher


@pytest.fixture
def bus(kafka_bootstrap: str, topics: TopicNames) -> Iterator[Bus]:
    kafka = KafkaPublisher(kafka_bootstrap)
    yield Bus(kafka_bootstrap, topics, kafka)
    kafka.close()


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    """Relays made by a test; closed afterwards so no lock outlives it."""
    made: list[Relay] = []
    yield made
    for relay in made:
        relay.close()


def person(n: int, tag: str) -> dict[str, Any]:
    return {
        "email": f"member{n}.{tag}@example.jp",
        "display_name": f"Member{n} Tanaka{tag}",
        "phone": f"080-{tag[:4]}-{n:04d}",
        "job_title": f"Title{n}{tag}",
        "work_history": [{"company": f"Employer{n}{tag}"}],
        "consent_version": "2026-01",
        "profile": {"birth_year": 1980 + n, "prefecture": "osaka"},
    }


def personal_strings(member: dict[str, Any]) -> list[str]:
    return [
        member["email"],
        member["display_name"],
        member["phone"],
        member["job_title"],
        member["work_history"][0]["company"],
    ]


def drain(relay: Relay) -> int:
    total = 0
    while processed := relay.run_once():
        total += processed
    return total


def decoded(records: Sequence[Any]) -> list[Envelope]:
    return [decode_record(record.headers, record.value) for record in records]


def version_of(envelope: Envelope) -> int:
    return int(envelope.id.split(":")[1])


def by_account(envelopes: Sequence[Envelope]) -> dict[UUID, list[Envelope]]:
    grouped: dict[UUID, list[Envelope]] = {}
    for envelope in envelopes:
        grouped.setdefault(envelope.account_id, []).append(envelope)
    return grouped


def payload_types(envelopes: Sequence[Envelope]) -> list[type[ContractModel] | None]:
    return [None if e.data is None else type(e.data) for e in envelopes]


# Publishing


def test_publishes_account_events_keyed_ordered_and_without_personal_values(
    accounts: Accounts,
    bus: Bus,
    relays: list[Relay],
) -> None:
    tag = uuid.uuid4().hex[:8]
    members = [person(n, tag) for n in range(4)]
    ids = [accounts.register(**member) for member in members]
    # A partial edit: the profile record still carries every category.
    accounts.edit_preferences(ids[0], notifications={"scouts": False, "recommendations": False})
    accounts.edit_preferences(ids[1], desired={"locations": ["fukuoka"]})
    accounts.receive_scout(ids[2], scout_id="s1", company_id="c1", job_id="j1")
    accounts.claim_gift(ids[2], company_id="c1", start_date=date(2026, 6, 1))

    relay = Relay(accounts, bus.publisher, topics=bus.topics, batch_size=5)
    relays.append(relay)
    newest = accounts.recorder.max_notification_id()
    assert relay.lag == newest
    assert drain(relay) == newest  # EmailClaim notifications are skipped but passed
    assert relay.position == newest
    assert relay.lag == 0

    records = read_topic(bus.bootstrap, bus.topics.lifecycle)
    assert len(records) == 4 + 2 + 2
    forbidden = [text for member in members for text in personal_strings(member)]
    for record in records:
        assert record.key.decode() in {str(i) for i in ids}
        assert {name for name, _ in record.headers} == CE_HEADERS
        exposed = record.key + record.value + b"".join(v for _, v in record.headers)
        for text in forbidden:
            assert text.encode() not in exposed
    envelopes = decoded(records)
    assert all(envelope.source == "/lifecycle/accounts" for envelope in envelopes)
    assert all(
        envelope.subject == record.key.decode()
        for envelope, record in zip(envelopes, records, strict=True)
    )
    grouped = by_account(envelopes)
    assert set(grouped) == set(ids)
    for account_id, stream in grouped.items():
        assert [version_of(e) for e in stream] == list(range(1, len(stream) + 1))
        assert len({r.partition for r in records if r.key == str(account_id).encode()}) == 1
    assert payload_types(grouped[ids[2]]) == [RegisteredV1, ScoutReceivedV1, GiftClaimedV1]
    assert payload_types(grouped[ids[1]]) == [RegisteredV1, PreferencesEditedV1]
    first = grouped[ids[0]][0].data
    assert isinstance(first, RegisteredV1)
    assert (first.birth_year, first.prefecture, first.channel) == (1980, "osaka", "web")

    profiles = decoded(read_topic(bus.bootstrap, bus.topics.profile))
    # One per registration, one for the notifications edit; the `desired` edit has none.
    assert len(profiles) == 5
    latest = {e.account_id: e.data for e in profiles}
    assert all(isinstance(data, ProfileV1) for data in latest.values())
    for account_id, member in zip(ids, members, strict=True):
        profile = latest[account_id]
        assert isinstance(profile, ProfileV1)
        assert profile.email == member["email"]
        assert profile.display_name == member["display_name"]
    edited = latest[ids[0]]
    assert isinstance(edited, ProfileV1)
    assert edited.notifications == {"scouts": False, "recommendations": False, "notices": True}
    assert [e.id for e in profiles if e.account_id == ids[0]] == [
        f"{ids[0]}:1:profile",
        f"{ids[0]}:2:profile",
    ]


def test_purge_publishes_a_tombstone_and_no_profile_after_the_key_is_gone(
    accounts: Accounts,
    bus: Bus,
    relays: list[Relay],
) -> None:
    tag = uuid.uuid4().hex[:8]
    early, late = person(1, tag), person(2, tag)
    early_id = accounts.register(**early)
    relay = Relay(accounts, bus.publisher, topics=bus.topics)
    relays.append(relay)
    drain(relay)  # the early member's profile reaches Kafka before the purge

    late_id = accounts.register(**late)
    comment = f"private remark {tag}"
    for account_id in (early_id, late_id):
        accounts.request_withdrawal(account_id, reason="hired_elsewhere", comment=comment)
        accounts.purge(account_id)
    drain(relay)

    lifecycle_records = read_topic(bus.bootstrap, bus.topics.lifecycle)
    lifecycle = decoded(lifecycle_records)
    for account_id in (early_id, late_id):
        stream = by_account(lifecycle)[account_id]
        assert payload_types(stream) == [RegisteredV1, WithdrawalRequestedV1, PurgedV1]
    forbidden = [comment, *personal_strings(early), *personal_strings(late)]
    for record in lifecycle_records:
        exposed = record.key + record.value + b"".join(v for _, v in record.headers)
        assert not [text for text in forbidden if text.encode() in exposed]

    profiles = by_account(decoded(read_topic(bus.bootstrap, bus.topics.profile)))
    assert [type(e.data) for e in profiles[early_id][:1]] == [ProfileV1]
    assert profiles[early_id][-1].is_tombstone
    assert profiles[early_id][-1].id == f"{early_id}:3:profile"
    # Relayed after its key was destroyed: the late member's contact data never reaches Kafka.
    assert [e.is_tombstone for e in profiles[late_id]] == [True]
    raw = read_topic(bus.bootstrap, bus.topics.profile)
    assert all(late["email"].encode() not in (r.value or b"") for r in raw)
    assert [r.value for r in raw if r.key == str(late_id).encode()] == [None]


# Restarts, crashes, Kafka failures


def test_a_stopped_relay_is_resumed_by_a_new_one_exactly_once_in_order(
    accounts: Accounts,
    bus: Bus,
    relays: list[Relay],
) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = [accounts.register(**person(n, tag)) for n in range(6)]
    for account_id in ids[:3]:
        accounts.edit_preferences(account_id, desired={"industries": ["it"]})

    first = Relay(accounts, bus.publisher, topics=bus.topics, batch_size=4)
    relays.append(first)
    first.run_once()
    first.run_once()
    stopped_at = first.position
    assert 0 < stopped_at < (accounts.recorder.max_notification_id() or 0)
    first.close()

    second = Relay(accounts, bus.publisher, topics=bus.topics, batch_size=4)
    relays.append(second)
    assert second.position == stopped_at
    drain(second)

    envelopes = decoded(read_topic(bus.bootstrap, bus.topics.lifecycle))
    assert len(envelopes) == 6 + 3
    assert len({e.id for e in envelopes}) == len(envelopes)
    for stream in by_account(envelopes).values():
        assert [version_of(e) for e in stream] == list(range(1, len(stream) + 1))


class DroppingPublisher:
    """Fails at its n-th record, as an unreachable broker would: nothing of that batch arrives."""

    def __init__(self, inner: KafkaPublisher, fail_at: int) -> None:
        self.inner = inner
        self.fail_at = fail_at
        self.seen = 0
        self.buffer: list[tuple[str, bytes, Headers, bytes | None]] = []

    def publish(self, topic: str, key: bytes, headers: Headers, value: bytes | None) -> None:
        self.seen += 1
        if self.seen == self.fail_at:
            self.buffer = []
            raise PublishError("NoBrokersAvailable")
        self.buffer.append((topic, key, headers, value))

    def flush(self) -> None:
        for record in self.buffer:
            self.inner.publish(*record)
        self.buffer = []
        self.inner.flush()


def test_kafka_failure_backs_off_logs_once_per_attempt_and_resumes_exactly_once(
    accounts: Accounts,
    bus: Bus,
    relays: list[Relay],
) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = [accounts.register(**person(n, tag)) for n in range(5)]
    flaky = DroppingPublisher(bus.publisher, fail_at=3)
    stop = threading.Event()
    with capture_logs() as logs:
        relay = Relay(
            accounts,
            flaky,
            topics=bus.topics,
            batch_size=6,
            poll_interval_s=0.05,
            initial_backoff_s=0.05,
        )
        relays.append(relay)
        runner = threading.Thread(target=relay.run, args=(stop,))
        runner.start()
        newest = accounts.recorder.max_notification_id()
        try:
            wait_until(lambda: relay.position == newest)
        finally:
            stop.set()
            runner.join(timeout=10)
    assert not runner.is_alive()

    unreachable = [line for line in logs if line["event"] == "relay.kafka_unreachable"]
    assert len(unreachable) == 1
    assert unreachable[0]["error"] == "NoBrokersAvailable"
    assert unreachable[0]["position"] == 0
    envelopes = decoded(read_topic(bus.bootstrap, bus.topics.lifecycle))
    assert sorted(e.account_id for e in envelopes) == sorted(ids)
    assert len({e.id for e in envelopes}) == 5


def test_a_crash_between_flush_and_position_write_republishes_with_the_same_ids(
    accounts: Accounts,
    bus: Bus,
    relays: list[Relay],
    settings: Settings,
) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = [accounts.register(**person(n, tag)) for n in range(3)]
    for account_id in ids:
        accounts.receive_scout(account_id, scout_id="s", company_id="c", job_id="j")

    class CrashError(Exception):
        pass

    crashing = Relay(accounts, bus.publisher, topics=bus.topics, batch_size=7)
    relays.append(crashing)

    def crash(position: int) -> None:
        raise CrashError()

    crashing._save_position = crash  # type: ignore[method-assign]
    with pytest.raises(CrashError):
        crashing.run_once()
    crashing.close()

    # A new process: its own application on the same database.
    restarted_accounts = Accounts(env=settings.application_env())
    try:
        restarted = Relay(restarted_accounts, bus.publisher, topics=bus.topics, batch_size=7)
        relays.append(restarted)
        assert restarted.position == 0
        drain(restarted)
    finally:
        restarted.close()
        restarted_accounts.close()

    records = read_topic(bus.bootstrap, bus.topics.lifecycle)
    envelopes = decoded(records)
    counts: dict[str, int] = {}
    for envelope in envelopes:
        counts[envelope.id] = counts.get(envelope.id, 0) + 1
    duplicated = {ce_id for ce_id, count in counts.items() if count == 2}
    assert duplicated  # the crashed batch went out twice ...
    assert set(counts.values()) <= {1, 2}
    same: dict[str, set[tuple[Any, ...]]] = {}
    for record, envelope in zip(records, envelopes, strict=True):
        if envelope.id in duplicated:
            same.setdefault(envelope.id, set()).add(
                (record.key, record.value, tuple(record.headers))
            )
    assert all(len(copies) == 1 for copies in same.values())  # ... byte for byte the same
    # Deduplicated by ce_id, each account's stream is complete and in order.
    for stream in by_account(envelopes).values():
        seen: list[int] = []
        for envelope in stream:
            if version_of(envelope) not in seen:
                seen.append(version_of(envelope))
        assert seen == [1, 2]


def test_an_unreachable_broker_is_reported_with_its_error_class(
    accounts: Accounts, bus: Bus, relays: list[Relay]
) -> None:
    accounts.register(**person(1, uuid.uuid4().hex[:8]))
    nowhere = KafkaPublisher(
        "127.0.0.1:1", bootstrap_timeout_ms=300, max_block_ms=300, request_timeout_ms=300
    )
    stop = threading.Event()
    try:
        with capture_logs() as logs:
            relay = Relay(
                accounts, nowhere, topics=bus.topics, initial_backoff_s=0.05, max_backoff_s=0.1
            )
            relays.append(relay)
            runner = threading.Thread(target=relay.run, args=(stop,))
            runner.start()
            wait_until(
                lambda: sum(line["event"] == "relay.kafka_unreachable" for line in logs) >= 2
            )
            stop.set()
            runner.join(timeout=10)
    finally:
        stop.set()
        nowhere.close()
    assert not runner.is_alive()
    line = next(line for line in logs if line["event"] == "relay.kafka_unreachable")
    assert line["error"] in {"NoBrokersAvailable", "KafkaTimeoutError", "KafkaConnectionError"}
    assert line["log_level"] == "warning"
    assert relay.position == 0


# One relay at a time


def test_only_one_relay_publishes_at_a_time(
    accounts: Accounts,
    bus: Bus,
    relays: list[Relay],
    settings: Settings,
) -> None:
    tag = uuid.uuid4().hex[:8]
    accounts.register(**person(1, tag))
    other_accounts = Accounts(env=settings.application_env())
    stop = threading.Event()
    try:
        active = Relay(accounts, bus.publisher, topics=bus.topics)
        relays.append(active)
        assert active.run_once() > 0
        assert active.is_active

        with capture_logs() as logs:
            standby = Relay(other_accounts, bus.publisher, topics=bus.topics, poll_interval_s=0.05)
            relays.append(standby)
            assert standby.run_once() == 0
            assert not standby.is_active
            assert any(line["event"] == "relay.standby" for line in logs)

            runner = threading.Thread(target=standby.run, args=(stop,))
            runner.start()
            accounts.register(**person(2, tag))
            # The standby relay waits; the active one publishes the new account.
            assert active.run_once() > 0
            assert not standby.is_active
            active.close()
            accounts.register(**person(3, tag))
            newest = accounts.recorder.max_notification_id()
            wait_until(lambda: standby.position == newest)
            assert standby.is_active
            stop.set()
            runner.join(timeout=10)
    finally:
        stop.set()
        other_accounts.close()
    assert [line["event"] for line in logs].count("relay.active") == 1
    envelopes = decoded(read_topic(bus.bootstrap, bus.topics.lifecycle))
    assert len(envelopes) == 3
    assert len({e.id for e in envelopes}) == 3


def test_bulk_scouts_publish_the_same_records_as_single_scouts(
    accounts: Accounts, bus: Bus, relays: list[Relay]
) -> None:
    tag = uuid.uuid4().hex[:8]
    single, first, second = (accounts.register(**person(n, tag)) for n in range(3))
    accounts.receive_scout(single, scout_id="s1", company_id="c1", job_id="j1")
    outcomes = accounts.receive_scouts(
        [
            ScoutItem(first, "s1", "c1", "j1"),
            ScoutItem(second, "s1", "c1", "j1"),
            ScoutItem(first, "s1", "c1", "j1"),  # a duplicate publishes nothing
            ScoutItem(uuid.uuid4(), "s1", "c1", "j1"),  # nor does a refusal
        ]
    )
    assert outcomes[:3] == [True, True, False]

    relay = Relay(accounts, bus.publisher, topics=bus.topics)
    relays.append(relay)
    drain(relay)

    records = read_topic(bus.bootstrap, bus.topics.lifecycle)
    scouts = {
        envelope.account_id: (record, envelope)
        for record, envelope in zip(records, decoded(records), strict=True)
        if isinstance(envelope.data, ScoutReceivedV1)
    }
    assert set(scouts) == {single, first, second}
    single_record, single_envelope = scouts[single]
    for account_id in (first, second):
        record, envelope = scouts[account_id]
        assert record.key == str(account_id).encode()
        assert {name for name, _ in record.headers} == CE_HEADERS
        assert dict(record.headers)["content-type"] == dict(single_record.headers)["content-type"]
        assert (envelope.type, envelope.source, envelope.dataschema, envelope.id) == (
            single_envelope.type,
            single_envelope.source,
            single_envelope.dataschema,
            f"{account_id}:2",
        )
        assert single_envelope.id == f"{single}:2"
        assert isinstance(envelope.data, ScoutReceivedV1)
        assert envelope.data.model_dump(exclude={"account_id", "received_at"}) == (
            single_envelope.data.model_dump(exclude={"account_id", "received_at"})
        )
        assert envelope.data.account_id == account_id
    assert len(by_account(decoded(records))[first]) == 2  # Registered, one ScoutReceived


# Kafka off: the embedded default


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_in_process_publisher_carries_the_same_records(
    accounts: Accounts, relays: list[Relay]
) -> None:
    in_process = InProcessPublisher()
    received: list[Envelope] = []
    in_process.subscribe(
        TopicNames().profile,
        lambda item: received.append(decode_record(item.record.headers, item.record.value)),
    )
    relay = Relay(accounts, in_process)
    relays.append(relay)
    account_id = accounts.register(**person(1, uuid.uuid4().hex[:8]))

    assert in_process.read(TopicNames().lifecycle, timeout_s=0.01) == []
    waiting: list[Any] = []
    reader = threading.Thread(
        target=lambda: waiting.extend(in_process.read(TopicNames().lifecycle, timeout_s=10))
    )
    reader.start()
    drain(relay)
    reader.join(timeout=10)

    [delivered] = waiting
    assert delivered.offset == 0
    assert delivered.record.key == str(account_id).encode()
    envelope = decode_record(delivered.record.headers, delivered.record.value)
    assert isinstance(envelope.data, RegisteredV1)
    assert [type(e.data) for e in received] == [ProfileV1]
    assert in_process.end_offset(TopicNames().lifecycle) == 1


def test_an_edit_relayed_in_a_later_batch_than_its_registration_carries_the_contact_data(
    accounts: Accounts, relays: list[Relay]
) -> None:
    """The profile record of an edit takes address and name from the Registered event, read
    for the whole batch at once: here always from an earlier batch (both backends)."""
    in_process = InProcessPublisher()
    profiles: list[Envelope] = []
    in_process.subscribe(
        TopicNames().profile,
        lambda item: profiles.append(decode_record(item.record.headers, item.record.value)),
    )
    tag = uuid.uuid4().hex[:8]
    members = {accounts.register(**person(n, tag)): person(n, tag) for n in range(3)}
    relay = Relay(accounts, in_process, batch_size=2)
    relays.append(relay)
    drain(relay)
    for account_id in members:
        accounts.edit_preferences(account_id, notifications={"scouts": False})
    drain(relay)

    edited = [e for e in profiles if version_of(e) == 2]
    assert sorted(e.account_id for e in edited) == sorted(members)
    for envelope in edited:
        profile = envelope.data
        assert isinstance(profile, ProfileV1)
        assert profile.email == members[envelope.account_id]["email"]
        assert profile.display_name == members[envelope.account_id]["display_name"]


# Waking on commit


@pytest.mark.parametrize("backend", ["postgres"])
def test_an_idle_relay_wakes_on_commit_and_reports_commit_to_ack_latency(
    accounts: Accounts, bus: Bus, relays: list[Relay]
) -> None:
    """A poll interval far longer than the deadline: only the commit's NOTIFY can wake it."""
    waits: list[float] = []
    relay = Relay(
        accounts,
        bus.publisher,
        topics=bus.topics,
        poll_interval_s=3600.0,
        observe_ack_latency=waits.append,
    )
    relays.append(relay)
    stop = threading.Event()
    with capture_logs() as logs:
        runner = threading.Thread(target=relay.run, args=(stop,))
        runner.start()
        try:
            wait_until(lambda: relay.is_active, "relay active", timeout_s=30)
            for n in range(3):
                accounts.register(**person(n, uuid.uuid4().hex[:8]))
                newest = accounts.recorder.max_notification_id()
                wait_until(
                    lambda head=newest: relay.position == head, "woken by commit", timeout_s=30
                )
        finally:
            stop.set()
            runner.join(timeout=30)
    assert not runner.is_alive()

    assert len(waits) == 3
    assert all(0 <= wait < 30 for wait in waits)
    published = [line for line in logs if line["event"] == "relay.published"]
    assert published and all("commit_to_ack_ms" in line for line in published)
