"""Kafka off, the embedded default: the whole withdrawal flow inside one process.

`start_workers` runs the relay, the scout, chat and mail services and the erasure consumer as
threads over the in-process log, with SQLite files under the data directory, as
`lifecycle serve` does on a first run; mail goes to a real SMTP server on loopback.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from support import SmtpSink, files_holding, migrate_embedded, searched_forms, wait_until

from consumers import chat, mail, notices, scout
from consumers.mailer import CONFIRMATION_KIND, KIND_HEADER, SmtpMailer
from lifecycle.account_terms import AccountStatus
from lifecycle.application import Accounts
from lifecycle.bootstrap import erasure_status_query, service_keyring
from lifecycle.crypto import KEYS_TABLE, new_master_key
from lifecycle.settings import Settings
from lifecycle.workers import Workers, start_workers
from schemas.contract import ERASURE_GROUP
from schemas.data_export import EXPORT_GROUP


@pytest.fixture
def embedded(tmp_path: Path, smtp: SmtpSink) -> Settings:
    (tmp_path / "data").mkdir()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'data' / 'lifecycle.sqlite3'}",
        kafka_bootstrap=None,
        master_key=new_master_key(),
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        log_format="json",
    )
    migrate_embedded(settings)
    return settings


@pytest.fixture
def app(embedded: Settings) -> Iterator[Accounts]:
    accounts = Accounts(env=embedded.application_env())
    yield accounts
    accounts.close()


@pytest.fixture
def workers(embedded: Settings, app: Accounts) -> Iterator[Workers]:
    started = start_workers(embedded, app)
    yield started
    started.stop()
    assert started.running == []


def held(workers: Workers, account_id: UUID) -> dict[str, int]:
    return {
        "scout": scout.held_rows(workers.stores["scout"], account_id),
        "chat": chat.held_rows(workers.stores["chat"], account_id),
        "mail": mail.held_rows(workers.stores["mail"], account_id),
    }


def test_withdrawal_completes_to_purged_in_one_process(
    embedded: Settings, app: Accounts, workers: Workers, smtp: SmtpSink, tmp_path: Path
) -> None:
    assert sorted(workers.running) == sorted(
        f"worker-{name}"
        for name in (
            "relay",
            "scout",
            "chat",
            "mail",
            ERASURE_GROUP,
            EXPORT_GROUP,
            "data-export-sweep",
        )
    )
    # Each service keeps its own SQLite file beside the lifecycle database.
    for name in ("scout", "chat", "mail"):
        assert (tmp_path / "data" / f"{name}.sqlite3").exists()

    tag = uuid.uuid4().hex[:8]
    address = f"embedded.{tag}@example.jp"
    member_id = app.register(email=address, display_name=f"Emb {tag}", consent_version="v1")
    for n in range(2):
        app.receive_scout(member_id, scout_id=f"s{n}", company_id="c", job_id=f"j{n}")
    stores = workers.stores
    thread = chat.open_thread(stores["chat"], member_id, "c")
    chat.post_message(
        stores["chat"],
        member_id,
        thread,
        "company",
        "Hello",
        keyring=service_keyring(embedded, "chat"),
    )
    wait_until(lambda: mail.contact_known(stores["mail"], member_id), "address known")
    mailer = SmtpMailer("127.0.0.1", smtp.port)
    notices.queue_notice(stores["mail"], member_id, kind="notices", subject="s", body="first")
    assert notices.deliver_queued(stores["mail"], mailer, service_keyring(embedded, "mail")) == 1
    notices.queue_notice(stores["mail"], member_id, kind="scouts", subject="s", body="queued")
    wait_until(lambda: len(scout.scouts_of(stores["scout"], member_id)) == 2, "scouts held")
    before = len(smtp.messages())

    app.request_withdrawal(member_id, reason="too_many_notifications")
    wait_until(
        lambda: app.load_for_audit(member_id).status is AccountStatus.PURGED,
        "the account is Purged",
    )

    assert held(workers, member_id) == {"scout": 0, "chat": 0, "mail": 0}
    assert notices.deliver_queued(stores["mail"], mailer, service_keyring(embedded, "mail")) == 0
    after = smtp.messages()[before:]
    assert [received.recipients for received in after] == [[address]]
    assert after[0].message[KIND_HEADER] == CONFIRMATION_KIND
    status = erasure_status_query(app, embedded).status(member_id).as_dict()
    assert status["state"] == "purged"
    assert {name: s["rows_removed"] for name, s in status["services"].items()} == {
        "scout": 2,
        "chat": 2,
        "mail": 3,  # the address, the notice queued, the record of the one sent
    }
    erasure = workers.consumers[ERASURE_GROUP]
    wait_until(lambda: erasure.stats.applied == 3, "three confirmations handled")
    assert all(c.stats.dead_lettered == 0 for c in workers.consumers.values())


def test_after_purge_no_file_of_any_store_holds_a_value_or_the_wrapped_key(
    embedded: Settings, app: Accounts, workers: Workers, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    values = [
        f"files.{tag}@example.jp",
        f"Filesworth {tag}",
        f"+81-90-{tag[:4]}-{tag[4:]}",
        f"Quietly{tag} leaving",
        f"Chatted{tag} about the offer",
    ]
    member_id = app.register(
        email=values[0], display_name=values[1], phone=values[2], consent_version="v1"
    )
    stores = workers.stores
    thread = chat.open_thread(stores["chat"], member_id, "c")
    chat.post_message(
        stores["chat"],
        member_id,
        thread,
        "member",
        values[4],
        keyring=service_keyring(embedded, "chat"),
    )
    wait_until(lambda: mail.contact_known(stores["mail"], member_id), "address known")
    with app.database.transaction(commit=False) as cursor:
        row = cursor.execute(
            f"SELECT wrapped_key FROM {KEYS_TABLE} WHERE account_id = %s", (member_id.hex,)
        ).fetchone()
    assert row is not None
    wrapped_key = bytes(row[0])

    app.request_withdrawal(member_id, reason="other", comment=values[3])
    wait_until(
        lambda: app.load_for_audit(member_id).status is AccountStatus.PURGED,
        "the account is Purged",
    )
    assert held(workers, member_id) == {"scout": 0, "chat": 0, "mail": 0}

    # The service still runs; its SQLite files and the three services' (database, WAL, shm).
    data = tmp_path / "data"
    assert {p.name for p in data.glob("*.sqlite3")} >= {
        "lifecycle.sqlite3",
        "scout.sqlite3",
        "chat.sqlite3",
        "mail.sqlite3",
    }
    forms = [form for value in values for form in searched_forms(value)]
    needles = [*forms, wrapped_key, wrapped_key[12:]]
    # A reader holding the WAL at the purge's checkpoint makes it owed and retried soon after
    # (lifecycle/storage/cleanup.py): no file holds one within the deadline.
    wait_until(lambda: files_holding(data, needles) == [], "no file holds a value", timeout_s=20)


def test_a_restart_republishes_the_log_and_the_services_skip_what_they_did(
    embedded: Settings, app: Accounts, smtp: SmtpSink
) -> None:
    first = start_workers(embedded, app)
    try:
        member_id = app.register(
            email=f"restart.{uuid.uuid4().hex[:6]}@example.jp",
            display_name="Restart",
            consent_version="v1",
        )
        app.receive_scout(member_id, scout_id="s", company_id="c", job_id="j")
        wait_until(lambda: scout.scouts_of(first.stores["scout"], member_id) == ["s"], "scout held")
    finally:
        first.stop()

    # Withdrawn while nothing ran: the new process's in-memory log starts empty.
    app.request_withdrawal(member_id, reason="other")
    second = start_workers(embedded, app)
    try:
        wait_until(
            lambda: app.load_for_audit(member_id).status is AccountStatus.PURGED,
            "purged after the restart",
        )
        assert second.consumers["scout"].stats.duplicates >= 2  # Registered, ScoutReceived
        assert len(smtp.messages()) == 1
    finally:
        second.stop()


def test_with_kafka_configured_serve_starts_no_workers(embedded: Settings, app: Accounts) -> None:
    with_kafka = embedded.model_copy(update={"kafka_bootstrap": "127.0.0.1:9"})
    workers = start_workers(with_kafka, app)
    assert workers.threads == []
    workers.stop()
