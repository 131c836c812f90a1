"""Withdrawal to Purged across processes: relay, scout, chat, mail and the erasure consumer on
the real broker, each service in its own PostgreSQL schema, mail through a real SMTP server.

Each worker runs the CLI's entry point (`run_relay`, `run_consumer`, `run_erasure`) on a thread
of its own with settings of its own, as separate processes would.
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from email.message import EmailMessage
from typing import Any
from uuid import UUID

import psycopg
import pytest
from aiosmtpd.controller import Controller
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from consumers import chat, mail, scout
from consumers.store import open_database
from lifecycle import workers
from lifecycle.application import Accounts
from lifecycle.bootstrap import build_accounts
from lifecycle.crypto import new_master_key
from lifecycle.domain import AccountStatus
from lifecycle.erasure import erasure_process
from lifecycle.kafka_topics import ensure_topics
from lifecycle.settings import Settings
from lifecycle.storage import Database
from lifecycle.workers import run_consumer, run_erasure, run_relay
from schemas.contract import ErasureConfirmedV1, TopicNames, decode_record

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

SERVICES = ("scout", "chat", "mail")
DEADLINE_S = 60.0


# A real SMTP server


@dataclass
class SmtpSink:
    port: int
    received: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            self.received.append((list(envelope.rcpt_tos), parsed))
        return "250 OK"

    def messages(self) -> list[tuple[list[str], EmailMessage]]:
        with self.lock:
            return list(self.received)


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    sink = SmtpSink(port)
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink
    controller.stop()


# Topics, settings, stores


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[TopicNames]:
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka_bootstrap, names)
    yield names
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_topics(list(names.all()))
    finally:
        admin.close()


@pytest.fixture
def settings(
    postgres_url: str, pg_schema: str, kafka_bootstrap: str, smtp: SmtpSink
) -> Iterator[Settings]:
    yield Settings(
        database_url=postgres_url,
        database_schema=pg_schema,
        kafka_bootstrap=kafka_bootstrap,
        master_key=new_master_key(),
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        log_format="json",
    )
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for name in SERVICES:
            conn.execute(f"DROP SCHEMA IF EXISTS {pg_schema}_{name} CASCADE")


@pytest.fixture
def stores(settings: Settings) -> Iterator[dict[str, Database]]:
    opened = {
        name: open_database(settings.database_url, f"{settings.database_schema}_{name}")
        for name in SERVICES
    }
    # The tables exist before the workers start, so the test can write and read at once.
    scout.create_tables(opened["scout"])
    chat.create_tables(opened["chat"])
    mail.create_tables(opened["mail"])
    yield opened
    for database in opened.values():
        database.close()


@dataclass
class Processes:
    stop: threading.Event
    threads: list[threading.Thread]
    errors: list[BaseException]


@pytest.fixture
def accounts(settings: Settings) -> Iterator[Accounts]:
    """The API's application; built first, so the schema exists before the workers start
    (two applications creating the same fresh schema at once race on its types)."""
    app = Accounts(env=settings.application_env())
    yield app
    app.close()


@pytest.fixture
def processes(
    settings: Settings, topics: TopicNames, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Processes]:
    """relay, scout, chat, mail and erasure: each as the CLI would start it."""
    # Two Accounts starting at the same instant on one schema can fail in the key vault's
    # CREATE OR REPLACE FUNCTION ("tuple concurrently updated"): start them one at a time.
    starting = threading.Lock()

    def build_one_at_a_time(settings: Settings) -> Accounts:
        with starting:
            return build_accounts(settings)

    monkeypatch.setattr(workers, "build_accounts", build_one_at_a_time)
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as error:
                errors.append(error)

        return run

    targets: list[Callable[[], None]] = [
        lambda: run_relay(settings, stop, topics=topics),
        lambda: run_erasure(settings, stop, topics=topics),
        *(
            (
                lambda name=name: run_consumer(
                    name, settings, stop, topics=topics, schema=f"{settings.database_schema}_{name}"
                )
            )
            for name in SERVICES
        ),
    ]
    threads = [threading.Thread(target=guarded(target)) for target in targets]
    for thread in threads:
        thread.start()
    yield Processes(stop, threads, errors)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"not met within {timeout_s}s: {what}"
        pause.wait(0.1)


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def held(stores: dict[str, Database], account_id: UUID) -> dict[str, int]:
    return {
        "scout": scout.held_rows(stores["scout"], account_id),
        "chat": chat.held_rows(stores["chat"], account_id),
        "mail": mail.held_rows(stores["mail"], account_id),
    }


def person(tag: str) -> dict[str, Any]:
    return {
        "email": f"hanako.{tag}@example.jp",
        "display_name": f"Hanako {tag}",
        "consent_version": "2026-04",
        "phone": f"090-{tag[:4]}-0000",
        "job_title": f"Engineer {tag}",
    }


@pytest.mark.usefixtures("processes")  # its teardown checks that no worker failed
def test_withdrawal_erases_every_service_mails_once_and_ends_purged(
    accounts: Accounts,
    settings: Settings,
    topics: TopicNames,
    stores: dict[str, Database],
    smtp: SmtpSink,
) -> None:
    tag = uuid.uuid4().hex[:8]
    member, bystander = person(tag), person(f"{tag}b")
    member_id = accounts.register(**member)
    bystander_id = accounts.register(**bystander)
    for n in range(3):
        accounts.receive_scout(member_id, scout_id=f"s{n}", company_id=f"c{n}", job_id="j")
    accounts.receive_scout(bystander_id, scout_id="s0", company_id="c0", job_id="j")
    accounts.claim_gift(member_id, company_id="c1", start_date=date(2026, 7, 1))

    thread = chat.open_thread(stores["chat"], member_id, "c1")
    chat.post_message(stores["chat"], member_id, thread, "company", "Welcome aboard")
    chat.post_message(stores["chat"], member_id, thread, "member", "Thank you")
    chat.open_thread(stores["chat"], bystander_id, "c0")

    wait_until(
        lambda: (
            mail.contact_known(stores["mail"], member_id)
            and mail.contact_known(stores["mail"], bystander_id)
        ),
        "the mail service learned both addresses from the profile topic",
    )
    mailer = mail.SmtpMailer("127.0.0.1", smtp.port)
    mail.queue_notice(stores["mail"], member_id, kind="notices", subject="Hi", body="n1")
    mail.queue_notice(stores["mail"], bystander_id, kind="notices", subject="Hi", body="b1")
    assert mail.deliver_queued(stores["mail"], mailer) == 2
    for n in range(2):
        mail.queue_notice(stores["mail"], member_id, kind="notices", subject="Hi", body=f"q{n}")
    wait_until(
        lambda: len(scout.scouts_of(stores["scout"], member_id)) == 3,
        "the scout service holds the member's scouts",
    )
    before = len(smtp.messages())

    accounts.request_withdrawal(member_id, reason="hired_via_platform")
    wait_until(
        lambda: accounts.load_for_audit(member_id).status is AccountStatus.PURGED,
        "every service confirmed and the account is Purged",
    )

    assert held(stores, member_id) == {"scout": 0, "chat": 0, "mail": 0}
    assert held(stores, bystander_id) == {"scout": 1, "chat": 1, "mail": 1}
    assert mail.deliver_queued(stores["mail"], mailer) == 0  # the bystander's went earlier
    after = smtp.messages()[before:]
    assert [recipients for recipients, _ in after] == [[member["email"]]]
    [(_, confirmation)] = after
    assert confirmation[mail.KIND_HEADER] == mail.CONFIRMATION_KIND

    status = erasure_process(accounts, settings).status(member_id)
    assert status["state"] == "purged"
    assert status["overdue"] is False
    assert {name: s["state"] for name, s in status["services"].items()} == dict.fromkeys(
        SERVICES, "confirmed"
    )
    assert {name: s["rows_removed"] for name, s in status["services"].items()} == {
        "scout": 3,
        "chat": 3,  # one thread, two messages
        "mail": 3,  # two queued notices, the address
    }

    bootstrap = settings.kafka_bootstrap
    assert bootstrap is not None
    records = read_topic(bootstrap, topics.erasure_confirmed)
    assert len(records) == 3
    for record in records:
        envelope = decode_record(record.headers, record.value)
        assert isinstance(envelope.data, ErasureConfirmedV1)
        exposed = record.value + b"".join(value for _, value in record.headers)
        for value in (member["email"], member["display_name"], member["phone"]):
            assert value.encode() not in exposed
    assert read_topic(bootstrap, topics.dlq("mail")) == []
