"""Withdrawal to Purged across processes: relay, scout, chat, mail and the erasure consumer on
the real broker, each service in its own PostgreSQL schema, mail through a real SMTP server.

Each worker runs the CLI's entry point (`run_relay`, `run_consumer`, `run_erasure`) on a thread
of its own with settings of its own, as separate processes would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from support import (
    SmtpSink,
    dump_database,
    files_holding,
    migrated_store,
    read_topic,
    read_topics,
    searched_forms,
    service_schemas_beside,
    unique_topics,
    wait_until,
    worker_threads,
)

from consumers import chat, mail, notices, scout
from consumers.mailer import CONFIRMATION_KIND, KIND_HEADER, SmtpMailer
from consumers.store import open_database
from lifecycle.account_terms import REDACTED, AccountStatus
from lifecycle.application import Accounts
from lifecycle.audit.proof import value_digest
from lifecycle.audit.receipt import verify_receipt
from lifecycle.bootstrap import (
    build_erasure,
    erasure_status_query,
    receipts_of,
    service_keyring,
)
from lifecycle.crypto import new_master_key
from lifecycle.kafka.admin import TopicSettings
from lifecycle.kafka.producer import KafkaPublisher
from lifecycle.settings import Settings
from lifecycle.storage import Database
from projections.registry import open_read_models
from projections.runner import Projector
from schemas.contract import ErasureConfirmedV2, TopicNames, decode_record, erasure_receipt_id

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

SERVICES = ("scout", "chat", "mail")


# Topics, settings, stores


@pytest.fixture
def settings(
    postgres_url: str, lifecycle_schema: str, kafka_bootstrap: str, smtp: SmtpSink
) -> Iterator[Settings]:
    settings = Settings(
        database_url=postgres_url,
        database_schema=lifecycle_schema,
        kafka_bootstrap=kafka_bootstrap,
        master_key=new_master_key(),
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        log_format="json",
    )
    # `lifecycle migrate` made the schema (`lifecycle_schema`); each service's store:
    with service_schemas_beside(settings):
        yield settings


@pytest.fixture
def stores(settings: Settings) -> Iterator[dict[str, Database]]:
    opened = {
        name: open_database(settings.database_url, f"{settings.database_schema}_{name}")
        for name in SERVICES
    }
    # Migrated before the workers start, as `lifecycle migrate --service NAME` would.
    for name, database in opened.items():
        migrated_store(database, name)
    yield opened
    for database in opened.values():
        database.close()


@pytest.fixture
def accounts(settings: Settings) -> Iterator[Accounts]:
    """The API's application; built first, so the schema exists before the workers start
    (two applications creating the same fresh schema at once race on its types)."""
    app = Accounts(env=settings.application_env())
    yield app
    app.close()


@pytest.fixture
def processes(settings: Settings, topics: TopicNames, accounts: Accounts) -> Iterator[None]:
    """relay, scout, chat, mail and erasure: each as the CLI would start it."""
    with worker_threads(settings, topics, "relay", "erasure"):
        yield


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
    chat.post_message(
        stores["chat"],
        member_id,
        thread,
        "company",
        "Welcome aboard",
        keyring=service_keyring(settings, "chat"),
    )
    chat.post_message(
        stores["chat"],
        member_id,
        thread,
        "member",
        "Thank you",
        keyring=service_keyring(settings, "chat"),
    )
    chat.open_thread(stores["chat"], bystander_id, "c0")

    wait_until(
        lambda: (
            mail.contact_known(stores["mail"], member_id)
            and mail.contact_known(stores["mail"], bystander_id)
        ),
        "the mail service learned both addresses from the profile topic",
    )
    mailer = SmtpMailer("127.0.0.1", smtp.port)
    notices.queue_notice(stores["mail"], member_id, kind="notices", subject="Hi", body="n1")
    notices.queue_notice(stores["mail"], bystander_id, kind="notices", subject="Hi", body="b1")
    assert notices.deliver_queued(stores["mail"], mailer, service_keyring(settings, "mail")) == 2
    for n in range(2):
        notices.queue_notice(stores["mail"], member_id, kind="notices", subject="Hi", body=f"q{n}")
    wait_until(
        lambda: len(scout.scouts_of(stores["scout"], member_id)) == 3,
        "the scout service holds the member's scouts",
    )
    before = len(smtp.messages())
    # The bystander's contact and its sent notice's record (kept for its data export).
    bystander_held = held(stores, bystander_id)
    assert bystander_held == {"scout": 1, "chat": 1, "mail": 2}

    accounts.request_withdrawal(member_id, reason="hired_via_platform")
    wait_until(
        lambda: accounts.load_for_audit(member_id).status is AccountStatus.PURGED,
        "every service confirmed and the account is Purged",
    )

    assert held(stores, member_id) == {"scout": 0, "chat": 0, "mail": 0}
    assert held(stores, bystander_id) == bystander_held
    assert (
        notices.deliver_queued(stores["mail"], mailer, service_keyring(settings, "mail")) == 0
    )  # the bystander's went earlier
    after = smtp.messages()[before:]
    assert [received.recipients for received in after] == [[member["email"]]]
    [confirmation] = after
    assert confirmation.message[KIND_HEADER] == CONFIRMATION_KIND

    status = erasure_status_query(accounts, settings).status(member_id).as_dict()
    assert status["state"] == "purged"
    assert status["overdue"] is False
    assert {name: s["state"] for name, s in status["services"].items()} == dict.fromkeys(
        SERVICES, "confirmed"
    )
    assert {name: s["rows_removed"] for name, s in status["services"].items()} == {
        "scout": 3,
        "chat": 3,  # one thread, two messages
        "mail": 4,  # the address, two queued notices, the sent notice's record
    }
    # The erasure worker signed a receipt at the purge; the confirmation mail named it.
    receipts = receipts_of(build_erasure(accounts, settings))
    receipt_id = erasure_receipt_id(member_id)
    wait_until(lambda: receipts.get(receipt_id) is not None, "the erasure receipt is issued")
    receipt = receipts.get(receipt_id)
    assert receipt is not None
    assert {name: s["rows_removed"] for name, s in receipt["services"].items()} == {
        "scout": 3,
        "chat": 3,
        "mail": 4,
    }
    assert verify_receipt(receipt, receipts)["ok"] is True
    assert str(receipt_id) in confirmation.message.get_content()

    bootstrap = settings.kafka_bootstrap
    assert bootstrap is not None
    confirmed = read_topics(bootstrap, topics.confirmations.values())
    records = {s: [r for r in confirmed if r.topic == t] for s, t in topics.confirmations.items()}
    # Each service confirmed once, on its own topic (the only one its principal may write).
    assert {s: len(found) for s, found in records.items()} == {"scout": 1, "chat": 1, "mail": 1}
    for record in [r for found in records.values() for r in found]:
        envelope = decode_record(record.headers, record.value)
        assert isinstance(envelope.data, ErasureConfirmedV2)
        exposed = record.value + b"".join(value for _, value in record.headers)
        for value in (member["email"], member["display_name"], member["phone"]):
            assert value.encode() not in exposed
    assert read_topic(bootstrap, topics.dlq("mail")) == []


# After purge: nothing personal anywhere (issue: crypto-shredding and erasure everywhere)

COMPACTING_FAST = TopicSettings(
    profile_segment_ms=500, profile_max_compaction_lag_ms=1000, profile_delete_retention_ms=60_000
)


def distinctive_member(tag: str) -> dict[str, Any]:
    return {
        "email": f"zq.{tag}@erasure-probe.example",
        "display_name": f"Kazuko Zephyrine{tag}",
        "phone": f"+81-80-{tag[:4]}-{tag[4:8]}",
        "job_title": f"Chiefengineer{tag}",
        "work_history": [{"company": f"Qwertycorp{tag}", "title": "lead", "from": "2019-04"}],
        "consent_version": "2026-04",
    }


def topic_bytes(bootstrap: str, names: TopicNames) -> bytes:
    chunks: list[bytes] = []
    for record in read_topics(bootstrap, names.all()):
        chunks += [record.key or b"", record.value or b""]
        chunks += [value for _, value in record.headers]
    return b"\n".join(chunks)


def profile_values_left(bootstrap: str, names: TopicNames, account_id: UUID) -> int:
    key = str(account_id).encode()
    return sum(
        1
        for record in read_topic(bootstrap, names.profile)
        if record.key == key and record.value is not None
    )


@pytest.fixture
def compacting_topics(kafka_bootstrap: str) -> Iterator[TopicNames]:
    with unique_topics(kafka_bootstrap, COMPACTING_FAST) as names:
        yield names


def test_after_purge_no_personal_value_survives_anywhere(
    accounts: Accounts,
    settings: Settings,
    compacting_topics: TopicNames,
    stores: dict[str, Database],
    smtp: SmtpSink,
    postgres_url: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    topics = compacting_topics
    bootstrap = settings.kafka_bootstrap
    assert bootstrap is not None
    started = time.time() - 1  # a file's time is a tick behind the clock at most
    tag = uuid.uuid4().hex[:8]
    member = distinctive_member(tag)
    comment = f"Leaving because Xylophonic{tag} reasons"
    values = [
        member["email"],
        member["display_name"],
        member["phone"],
        member["job_title"],
        member["work_history"][0]["company"],
        comment,
    ]

    with worker_threads(settings, topics, "relay", "erasure"):
        member_id = accounts.register(**member)
        accounts.receive_scout(member_id, scout_id="s1", company_id="c1", job_id="j1")
        chat.post_message(
            stores["chat"],
            member_id,
            chat.open_thread(stores["chat"], member_id, "c1"),
            "company",
            "Interview on Monday?",
            keyring=service_keyring(settings, "chat"),
        )
        wait_until(lambda: mail.contact_known(stores["mail"], member_id), "profile reached mail")
        notices.queue_notice(stores["mail"], member_id, kind="notices", subject="Hi", body="n")
        assert (
            notices.deliver_queued(
                stores["mail"],
                SmtpMailer("127.0.0.1", smtp.port),
                service_keyring(settings, "mail"),
            )
            == 1
        )
        assert profile_values_left(bootstrap, topics, member_id) == 1

        project_everything(accounts)  # the read models see the member while active
        accounts.request_withdrawal(member_id, reason="other", comment=comment)
        wait_until(
            lambda: accounts.load_for_audit(member_id).status is AccountStatus.PURGED,
            "the account is Purged",
        )
        wait_until(lambda: relayed_everything(accounts, settings), "the relay caught up")
    assert project_everything(accounts) >= 3  # withdrawal and purge reach the read models

    # Compaction gets its chance: a later append rolls the segment, the cleaner runs.
    publisher = KafkaPublisher(bootstrap)
    try:
        wait_until(
            lambda: (
                roll_profile_segment(publisher, topics, member_id)
                and profile_values_left(bootstrap, topics, member_id) == 0
            ),
            "compaction removed the profile value behind the tombstone",
        )
    finally:
        publisher.close()

    dump = dump_database(postgres_url, str(settings.database_schema))
    on_topics = topic_bytes(bootstrap, topics)
    logs = capfd.readouterr()
    everywhere = {
        "database": dump,
        "topics": on_topics,
        "logs": (logs.out + logs.err).encode(),
    }
    for place, content in everywhere.items():
        for value in values:
            for form in searched_forms(value):
                assert form not in content, f"a former value is still in the {place}"
    # Every file of the PostgreSQL cluster, heap and WAL, after a checkpoint: the service's
    # values were only ever stored sealed (the event store, the mail service's contacts).
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    forms = [form for value in values for form in searched_forms(value)]
    assert files_holding(Path(str(row[0])), forms, written_since=started) == []

    # Auditors still replay the whole log: facts readable, personal fields redacted.
    replayed = [
        accounts.mapper.to_domain_event(notification)
        for notification in accounts.recorder.select_notifications(start=1, limit=10_000)
        if notification.originator_id == member_id
    ]
    assert [type(event).__name__ for event in replayed] == [
        "Registered",
        "ScoutReceived",
        "WithdrawalRequested",
        "Purged",
    ]
    registered, scouted, withdrawn, _ = replayed
    assert registered.email == REDACTED and registered.display_name == REDACTED
    assert scouted.company_id == "c1"
    assert withdrawn.reason == "other" and withdrawn.comment == REDACTED

    proof = subprocess.run(
        [
            sys.executable,
            "-m",
            "lifecycle",
            "audit",
            "erasure-proof",
            str(member_id),
            *(arg for value in values for arg in ("--digest", value_digest(value))),
            *service_schemas(settings),
        ],
        env={**os.environ, **cli_env(settings, topics)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proof.returncode == 0, proof.stdout + proof.stderr
    report = json.loads(proof.stdout)
    assert report["erased"] is True
    assert report["key_destroyed"] is True
    assert report["values_found_anywhere"] == 0
    assert {s["state"] for s in report["services"].values()} == {"confirmed"}
    assert report["unregistered"] == [] and report["schemas_not_reached"] == []
    walked = {place["place"] for place in report["places"]}
    assert {"mail:contacts", "chat:chat_messages", topics.dlq("mail"), topics.profile} <= walked
    for value in values:
        assert value not in proof.stdout + proof.stderr


def test_the_proof_finds_a_value_that_is_still_stored(
    accounts: Accounts, settings: Settings, topics: TopicNames
) -> None:
    """The search can fail: a member not yet purged is reported as not erased, value found."""
    member = distinctive_member(uuid.uuid4().hex[:8])
    member_id = accounts.register(**member)
    accounts.request_withdrawal(member_id, reason="other", comment="still here")
    proof = subprocess.run(
        [
            sys.executable,
            "-m",
            "lifecycle",
            "audit",
            "erasure-proof",
            str(member_id),
            "--digest",
            value_digest("still here"),
        ],
        env={**os.environ, **cli_env(settings, topics)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proof.returncode == 1
    report = json.loads(proof.stdout)
    assert report["erased"] is False
    assert report["key_destroyed"] is False


def project_everything(accounts: Accounts) -> int:
    """Every read model caught up with the log, as `lifecycle project --once` does."""
    return sum(
        Projector(accounts, model).catch_up() for model in open_read_models(accounts.database)
    )


def relayed_everything(accounts: Accounts, settings: Settings) -> bool:
    with accounts.database.transaction(commit=False) as cursor:
        row = cursor.execute(
            f"SELECT position FROM {accounts.database.table('relay_position')}"
        ).fetchone()
    return row is not None and int(row[0]) >= accounts.recorder.max_notification_id()


def roll_profile_segment(publisher: KafkaPublisher, topics: TopicNames, account_id: UUID) -> bool:
    # Another tombstone for the same key lands on the same partition; once the segment is
    # older than segment.ms, this append rolls it and the cleaner may compact it.
    publisher.publish(topics.profile, str(account_id).encode(), [], None)
    publisher.flush()
    return True


def service_schemas(settings: Settings) -> list[str]:
    """The proof's options naming where this test's services keep their tables."""
    return [
        arg
        for name in SERVICES
        for arg in ("--service-schema", f"{name}={settings.database_schema}_{name}")
    ]


def cli_env(settings: Settings, topics: TopicNames) -> dict[str, str]:
    return {
        "LIFECYCLE_DATABASE_URL": settings.database_url,
        "LIFECYCLE_DATABASE_SCHEMA": settings.database_schema,
        "LIFECYCLE_MASTER_KEY": settings.resolved_master_key(),
        "LIFECYCLE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "LIFECYCLE_TOPIC_PREFIX": topics.prefix,
        "LIFECYCLE_LOG_FORMAT": "json",
    }
