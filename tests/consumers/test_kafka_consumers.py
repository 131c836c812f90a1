"""The kit on the real broker with stores on the real PostgreSQL: dead letters, crashes, lag.

Every test has topics, consumer groups and schemas of its own.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from support import (
    Running,
    SmtpSink,
    migrated_store,
    profile,
    read_topic,
    read_topics,
    scout_received,
    searched_forms,
    wait_until,
    withdrawal,
)

from consumers import chat, mail, scout
from consumers.faults import DLQ_ERROR_CODE, DLQ_ERROR_TYPE, RetryPolicy
from consumers.kit import Hooks
from consumers.mailer import Mailer, SmtpMailer, message_id_for
from lifecycle.application import Accounts
from lifecycle.bootstrap import kafka_consumer, migrate_service, service_keyring
from lifecycle.crypto import new_master_key
from lifecycle.kafka.admin import TopicSettings
from lifecycle.kafka.producer import KafkaPublisher
from lifecycle.kafka.source import Incoming, KafkaSource
from lifecycle.relay import Relay
from lifecycle.sealed_box import new_key_pair, open_part
from lifecycle.settings import Settings
from lifecycle.storage import Database
from schemas.contract import (
    Envelope,
    ErasureConfirmedV2,
    Record,
    ScoutReceivedV1,
    TopicNames,
    WithdrawalRequestedV1,
    decode_record,
    lifecycle_event_id,
)
from schemas.data_export import (
    ChatSectionV1,
    ExportPartV1,
    ExportRequestedV1,
    MailSectionV1,
    ScoutSectionV1,
    encode_export_requested,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)


# Fixtures and helpers


@pytest.fixture
def kafka_settings(
    postgres_url: str, lifecycle_schema: str, kafka_bootstrap: str
) -> Iterator[Settings]:
    settings = Settings(
        database_url=postgres_url,
        database_schema=lifecycle_schema,
        kafka_bootstrap=kafka_bootstrap,
        master_key=new_master_key(),
        log_format="json",
    )
    yield settings
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for name in ("scout", "chat", "mail"):
            conn.execute(f"DROP SCHEMA IF EXISTS {lifecycle_schema}_{name} CASCADE")


def start(
    running: list[Running],
    name: str,
    settings: Settings,
    topics: TopicNames,
    *,
    mailer: Mailer | None = None,
    hooks: Hooks | None = None,
) -> Running:
    schema = f"{settings.database_schema}_{name}"
    migrate_service(settings, name, schema)  # `lifecycle migrate --service NAME` (idempotent)
    item = Running(
        kafka_consumer(
            name,
            settings,
            topics=topics,
            schema=schema,
            mailer=mailer,
            retry=FAST,
            hooks=hooks,
        )
    )
    running.append(item)
    return item


def store(settings: Settings, name: str) -> Database:
    from consumers.store import open_database

    return migrated_store(
        open_database(settings.database_url, f"{settings.database_schema}_{name}"), name
    )


def produce(bootstrap: str, items: Sequence[tuple[str, Record]]) -> None:
    publisher = KafkaPublisher(bootstrap, client_id="test-producer")
    try:
        for topic, record in items:
            publisher.publish(topic, record.key, record.headers, record.value)
        publisher.flush()
    finally:
        publisher.close()


def confirmations(bootstrap: str, topics: TopicNames) -> list[ErasureConfirmedV2]:
    found = []
    for record in read_topics(bootstrap, topics.confirmations.values()):
        envelope: Envelope = decode_record(record.headers, record.value)
        assert isinstance(envelope.data, ErasureConfirmedV2)
        found.append(envelope.data)
    return found


# Dead letters and lag


def test_a_poison_record_lands_in_the_dead_letters_and_the_next_record_is_handled(
    kafka_settings: Settings, topics: TopicNames, running: list[Running]
) -> None:
    bootstrap = kafka_settings.kafka_bootstrap
    assert bootstrap is not None
    account_id = uuid.uuid4()
    key = str(account_id).encode()
    garbage = [(topics.lifecycle, Record(key, [("trace", b"abc")], b"\x8f\x00garbage\xff"))]
    # A record whose envelope is fine but whose payload breaks the contract.
    valid_topic, valid = scout_received(topics, account_id, 2)
    broken = Record(valid.key, valid.headers, b'{"account_id": "not-a-uuid"}')
    produce(bootstrap, [*garbage, (valid_topic, broken), scout_received(topics, account_id, 3)])

    consumer = start(running, "scout", kafka_settings, topics).consumer
    database = store(kafka_settings, "scout")
    try:
        wait_until(lambda: scout.scouts_of(database, account_id) == ["scout-3"])
    finally:
        database.close()
    wait_until(lambda: consumer.stats.dead_lettered == 2)
    dead = read_topic(bootstrap, topics.dlq("scout"))
    assert len(dead) == 2
    for record in dead:
        headers = dict(record.headers)
        assert headers[DLQ_ERROR_TYPE] == b"ContractError"
        assert headers[DLQ_ERROR_CODE] == b"contract_violation"
        assert headers["dlq_consumer_group"] == b"scout"
        assert headers["dlq_source_topic"] == topics.lifecycle.encode()
        assert record.key == key
        assert record.value is None  # a reference to the source record, never a copy
        assert "trace" not in headers
    source = {(r.partition, r.offset): r for r in read_topic(bootstrap, topics.lifecycle)}
    by_source = {
        source[int(h["dlq_source_partition"]), int(h["dlq_source_offset"])].value: h
        for h in (dict(record.headers) for record in dead)
    }
    assert set(by_source) == {garbage[0][1].value, broken.value}
    assert by_source[broken.value]["ce_id"] == f"{account_id}:2".encode()
    # Lag: end offset minus committed position, per partition of each topic it reads.
    inputs = set(topics.inputs_of("scout"))
    wait_until(
        lambda: consumer.total_lag() == 0 and len(consumer.lag()) == 3 * len(inputs), timeout_s=15
    )
    assert {topic for topic, _ in consumer.lag()} == inputs


def test_two_members_of_one_group_share_the_partitions_and_apply_each_record_once(
    kafka_settings: Settings, topics: TopicNames, running: list[Running]
) -> None:
    bootstrap = kafka_settings.kafka_bootstrap
    assert bootstrap is not None
    members = [start(running, "scout", kafka_settings, topics) for _ in range(2)]
    sources = [member.consumer.source for member in members]
    assert all(isinstance(source, KafkaSource) for source in sources)

    def shared() -> bool:
        held = [source.assigned() for source in sources if isinstance(source, KafkaSource)]
        partitions = 3 * len(topics.inputs_of("scout"))
        return all(held) and len(held[0] | held[1]) == partitions and not held[0] & held[1]

    wait_until(shared, "both members hold partitions", timeout_s=60)
    accounts = [uuid.uuid4() for _ in range(60)]
    produce(bootstrap, [scout_received(topics, account, 2) for account in accounts])
    wait_until(lambda: sum(m.consumer.stats.applied for m in members) == len(accounts))
    assert all(member.consumer.stats.applied > 0 for member in members)
    assert sum(member.consumer.stats.duplicates for member in members) == 0
    database = store(kafka_settings, "scout")
    try:
        assert all(scout.scouts_of(database, account) == ["scout-2"] for account in accounts)
    finally:
        database.close()


# Kill and restart

MEMBER = """
import sys
from lifecycle.kafka.source import KafkaSource
bootstrap, topic, group, instance = sys.argv[1:]
source = KafkaSource(
    bootstrap, [topic], group, group_instance_id=instance, session_timeout_ms=60_000
)
while not source.assigned():
    source.poll(0.2)
print("assigned", flush=True)
sys.stdin.read()
"""


def test_a_static_member_killed_rejoins_at_once_without_waiting_out_its_session(
    kafka_bootstrap: str, topics: TopicNames
) -> None:
    group, instance = topics.group_id("static"), "scout-static-1"
    killed = subprocess.Popen(
        [sys.executable, "-c", MEMBER, kafka_bootstrap, topics.lifecycle, group, instance],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert killed.stdout is not None
        assert killed.stdout.readline().strip() == "assigned"
    finally:
        killed.kill()  # no LeaveGroup: its session (60 s) stays open on the broker
        killed.wait(timeout=30)
    source = KafkaSource(
        kafka_bootstrap,
        [topics.lifecycle],
        group,
        group_instance_id=instance,
        session_timeout_ms=60_000,
    )
    try:
        wait_until(lambda: bool(source.poll(0.2) or source.assigned()), timeout_s=30)
        assert len(source.assigned()) == 3  # well inside the 60 s a new member would wait
    finally:
        source.close()


def test_relay_killed_mid_stream_then_restarted_every_event_arrives_repeats_are_skipped(
    kafka_settings: Settings, topics: TopicNames, running: list[Running]
) -> None:
    bootstrap = kafka_settings.kafka_bootstrap
    assert bootstrap is not None
    accounts = Accounts(env=kafka_settings.application_env())
    publisher = KafkaPublisher(bootstrap)
    try:
        tag = uuid.uuid4().hex[:8]
        ids = [
            accounts.register(
                email=f"relay{n}.{tag}@example.jp", display_name=f"R{n}", consent_version="v1"
            )
            for n in range(4)
        ]
        for account_id in ids:
            for n in range(3):
                accounts.receive_scout(account_id, scout_id=f"s{n}", company_id="c", job_id=f"j{n}")
        consumer = start(running, "scout", kafka_settings, topics).consumer

        class KilledError(Exception):
            pass

        first = Relay(accounts, publisher, name="kafka", topics=topics, batch_size=5)

        def killed(position: int) -> None:
            raise KilledError()

        first.run_once()  # one batch acknowledged and recorded
        first._save_position = killed  # type: ignore[method-assign]
        with pytest.raises(KilledError):
            first.run_once()  # published, killed before the position was recorded
        first.close()

        restarted_accounts = Accounts(env=kafka_settings.application_env())
        try:
            second = Relay(restarted_accounts, publisher, name="kafka", topics=topics)
            while second.run_once():
                pass
            second.close()
        finally:
            restarted_accounts.close()

        database = store(kafka_settings, "scout")
        try:
            wait_until(
                lambda: all(
                    scout.scouts_of(database, account_id) == ["s0", "s1", "s2"]
                    for account_id in ids
                )
            )
        finally:
            database.close()
        wait_until(lambda: consumer.stats.duplicates > 0)
        lifecycle_records = read_topic(bootstrap, topics.lifecycle)
        unique = {decode_record(r.headers, r.value).id for r in lifecycle_records}
        assert len(unique) == 4 * 4 < len(lifecycle_records)
        wait_until(
            lambda: consumer.stats.applied + consumer.stats.duplicates == len(lifecycle_records)
        )
        assert consumer.stats.applied == len(unique)
    finally:
        publisher.close()
        accounts.close()


class CrashError(Exception):
    pass


def crash_once(ce_type: str) -> Callable[[Any], None]:
    """A hook that kills the consumer the first time it meets a record of this type."""
    fired = threading.Event()

    def hook(item: Envelope | Incoming) -> None:
        if isinstance(item, Envelope):
            found = item.type
        else:
            found = dict(item.headers).get("ce_type", b"").decode()
        if found == ce_type and not fired.is_set():
            fired.set()
            raise CrashError()

    return hook


@pytest.mark.parametrize("crash_point", ["before_offset_commit", "after_commit"])
def test_a_consumer_killed_between_its_effect_and_the_offset_commit_does_not_repeat_it(
    crash_point: str,
    kafka_settings: Settings,
    topics: TopicNames,
    running: list[Running],
    smtp: SmtpSink,
) -> None:
    bootstrap = kafka_settings.kafka_bootstrap
    assert bootstrap is not None
    mailer = SmtpMailer(smtp.host, smtp.port)
    member = uuid.uuid4()
    address = f"killed.{member.hex[:6]}@example.jp"
    produce(
        bootstrap,
        [
            profile(topics, member, 1, address, "Kafka Member"),
            scout_received(topics, member, 2),
            scout_received(topics, member, 3),
        ],
    )
    first = {
        name: start(
            running,
            name,
            kafka_settings,
            topics,
            mailer=mailer,
            hooks=Hooks(**{crash_point: crash_once(WithdrawalRequestedV1.ce_type())}),
        )
        for name in ("scout", "mail")
    }
    databases = {name: store(kafka_settings, name) for name in ("scout", "mail")}
    try:
        wait_until(lambda: mail.contact_known(databases["mail"], member))
        wait_until(lambda: len(scout.scouts_of(databases["scout"], member)) == 2)
        produce(bootstrap, [withdrawal(topics, member, 4)])

        # Both die after their effect committed; each restarts as a new group member.
        for crashed in first.values():
            crashed.thread.join(timeout=30)
            assert isinstance(crashed.error, CrashError)
        restarted = [start(running, name, kafka_settings, topics, mailer=mailer) for name in first]
        wait_until(lambda: all(r.consumer.stats.duplicates >= 1 for r in restarted))
        wait_until(lambda: len(confirmations(bootstrap, topics)) == 2)
        assert scout.held_rows(databases["scout"], member) == 0
        assert mail.held_rows(databases["mail"], member) == 0
    finally:
        for database in databases.values():
            database.close()
    confirmed = {c.service: c.rows_removed for c in confirmations(bootstrap, topics)}
    assert confirmed == {"scout": 2, "mail": 1}
    assert len(confirmations(bootstrap, topics)) == 2
    [received] = smtp.messages()
    assert received.recipients == [address]
    assert received.message["Message-ID"] == message_id_for(lifecycle_event_id(member, 4))


def committed(bootstrap: str, group: str) -> dict[str, int]:
    """Per topic, the sum of the group's committed offsets over its partitions."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-offsets")
    try:
        offsets = admin.list_group_offsets([group]).get(group) or {}
    finally:
        admin.close()
    totals: dict[str, int] = {}
    for partition, meta in offsets.items():
        totals[partition.topic] = totals.get(partition.topic, 0) + max(0, meta.offset)
    return totals


def test_mail_suppresses_in_a_group_of_its_own_and_both_groups_commit_without_blocking(
    kafka_settings: Settings, topics: TopicNames, running: list[Running], smtp: SmtpSink
) -> None:
    bootstrap = kafka_settings.kafka_bootstrap
    assert bootstrap is not None
    member = uuid.uuid4()
    produce(bootstrap, [profile(topics, member, 1, f"lane.{member.hex[:6]}@example.jp", "Lane")])
    service = start(
        running, "mail", kafka_settings, topics, mailer=SmtpMailer(smtp.host, smtp.port)
    )
    assert len(service.runnable.lanes) == 1
    database = store(kafka_settings, "mail")
    try:
        wait_until(lambda: mail.contact_known(database, member))
        produce(bootstrap, [withdrawal(topics, member, 2)])
        wait_until(lambda: len(confirmations(bootstrap, topics)) == 1)
        assert mail.held_rows(database, member) == 0
    finally:
        database.close()
    # Each group's commits (sent without waiting for the broker's answer) reach the broker
    # while the members run; the lane's group reads the lifecycle topic only.
    lane_group, mail_group = f"{topics.prefix}mail-suppression", f"{topics.prefix}mail"
    wait_until(lambda: committed(bootstrap, lane_group) == {topics.lifecycle: 1}, "lane's commit")
    wait_until(
        lambda: committed(bootstrap, mail_group) == {topics.lifecycle: 1, topics.profile: 1},
        "the kit's commits",
    )
    service.stop()
    assert committed(bootstrap, mail_group) == {topics.lifecycle: 1, topics.profile: 1}


def test_closing_a_source_stores_the_last_commit_sent_without_waiting(
    kafka_settings: Settings, topics: TopicNames
) -> None:
    bootstrap = kafka_settings.kafka_bootstrap
    assert bootstrap is not None
    group = f"{topics.prefix}closing"
    source = KafkaSource(bootstrap, [topics.lifecycle], group, client_id=group)
    probe = {(topics.lifecycle, partition): 0 for partition in range(TopicSettings().partitions)}

    def settled() -> bool:
        """The member holds every partition and a commit of its went through. kafka-python
        joins again right after a member's first generation, and on a loaded machine that
        second round can stall (a SyncGroup never answered) until the source replaces the
        member (`REJOIN_STALL_S`); the close this test is about must not meet that round."""
        assert source.poll(0.2) == []
        if len(source.assigned()) < len(probe):
            return False
        if committed(bootstrap, group) == {topics.lifecycle: 0}:
            return True
        source.commit(probe)  # again after a replaced member dropped the one not confirmed
        return False

    member = uuid.uuid4()
    try:
        wait_until(settled, "a settled group", 90)
        produce(bootstrap, [scout_received(topics, member, v, f"s{v}") for v in (1, 2, 3)])
        records: list[Incoming] = []
        wait_until(lambda: bool(records.extend(source.poll(0.2)) or len(records) == 3))
        source.commit({(r.topic, r.partition): r.offset + 1 for r in records})
    finally:
        source.close()  # at once: the commit's answer may not have come yet
    assert committed(bootstrap, group) == {topics.lifecycle: 3}


# The envelope as other tools see it


def test_kcat_reads_a_lifecycle_record_with_its_cloudevents_headers(
    kafka_settings: Settings, topics: TopicNames
) -> None:
    bootstrap = kafka_settings.kafka_bootstrap
    assert bootstrap is not None
    account_id = uuid.uuid4()
    produce(bootstrap, [scout_received(topics, account_id, 2)])
    shown = subprocess.run(
        [
            "/usr/bin/kcat",
            "-b",
            bootstrap,
            "-C",
            "-t",
            topics.lifecycle,
            "-o",
            "beginning",
            "-c",
            "1",
            "-e",
            "-f",
            "%h",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    headers = dict(pair.split("=", 1) for pair in shown.strip().split(","))
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == f"{account_id}:2"
    assert headers["ce_type"] == ScoutReceivedV1.ce_type()
    assert headers["ce_subject"] == str(account_id)
    assert headers["ce_source"] == "/lifecycle/accounts"
    assert headers["content-type"] == "application/json"
    assert {"ce_time", "ce_dataschema"} <= set(headers)


# Data exports on the broker


def test_each_service_answers_an_export_request_and_no_topic_holds_a_readable_value(
    kafka_settings: Settings, topics: TopicNames, running: list[Running]
) -> None:
    bootstrap = kafka_settings.kafka_bootstrap
    assert bootstrap is not None
    tag = uuid.uuid4().hex[:8]
    member = uuid.uuid4()
    address, body = f"export.{tag}@example.jp", f"Chatted{tag} about the offer"
    for name in ("scout", "chat", "mail"):
        start(running, name, kafka_settings, topics)
    chats = store(kafka_settings, "chat")
    try:
        thread = chat.open_thread(chats, member, "company-1")
        chat.post_message(
            chats, member, thread, "member", body, keyring=service_keyring(kafka_settings, "chat")
        )
    finally:
        chats.close()
    private, public = new_key_pair()
    now = datetime.now(UTC)
    request = ExportRequestedV1(
        export_id=uuid.uuid4(),
        account_id=member,
        public_key=public,
        requested_at=now,
        expires_at=now + timedelta(days=7),
    )
    produce(
        bootstrap,
        [
            scout_received(topics, member, 2),
            profile(topics, member, 1, address, f"Export {tag}"),
        ],
    )
    # The request's topic keeps no order with the others: it is sent once both services hold
    # what it should find (in one poll, the request could come first and find nothing).
    mails, scouts_store = store(kafka_settings, "mail"), store(kafka_settings, "scout")
    try:
        wait_until(lambda: mail.contact_known(mails, member), "the address reached mail")
        wait_until(lambda: scout.scouts_of(scouts_store, member) != [], "the scout was kept")
    finally:
        mails.close()
        scouts_store.close()
    produce(bootstrap, [(topics.export_requested, encode_export_requested(request))])

    def parts(service: str) -> list[ExportPartV1]:
        found = []
        for record in read_topic(bootstrap, topics.export_part(service)):
            data = decode_record(record.headers, record.value).data
            assert isinstance(data, ExportPartV1)
            found.append(data)
        return found

    wait_until(lambda: all(parts(s) for s in ("scout", "chat", "mail")), "every part sent")

    def opened(service: str) -> bytes:
        ordered = sorted(parts(service), key=lambda part: part.chunk)
        return b"".join(open_part(private, part) for part in ordered)

    scouts = ScoutSectionV1.model_validate_json(opened("scout"))
    assert [s.scout_id for s in scouts.scouts] == ["scout-2"]
    [held] = ChatSectionV1.model_validate_json(opened("chat")).threads
    assert [m.body for m in held.messages] == [body]
    contact = MailSectionV1.model_validate_json(opened("mail")).contact
    assert contact is not None and contact.email == address
    # Nothing readable on the request, part or dead-letter topics, in any encoding we store.
    needles = [form for value in (address, body, tag) for form in searched_forms(value)]
    searched = [topics.export_requested, *topics.export_parts.values()]
    searched += [topics.dlq(name) for name in ("scout", "chat", "mail")]
    for record in read_topics(bootstrap, searched):
        raw = b"".join([record.key or b"", record.value or b"", *(v for _, v in record.headers)])
        assert not [needle for needle in needles if needle in raw], record.topic
