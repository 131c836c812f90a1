"""Kafka off, the embedded default: a data export end to end inside one process.

`start_workers` runs the relay (which publishes the export request from the event store), the
scout, chat and mail services and the export intake as threads over the in-process log, as
`lifecycle serve` does: each service seals its section, read from its own store, to the
export's key and sends it on its own part topic.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import jsonschema_rs
import pytest
from support import migrate_embedded, wait_until

from consumers import chat, mail, notices, scout
from consumers.mailer import DiscardingMailer
from lifecycle.application import Accounts
from lifecycle.bootstrap import build_data_exports, service_keyring
from lifecycle.crypto import new_master_key
from lifecycle.data_export_aggregate import ExportStatus
from lifecycle.settings import Settings
from lifecycle.workers import Workers, start_workers
from schemas.data_export import EXPORT_GROUP

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "schemas/v1/account.data-export.v1.json").read_text()
)


@pytest.fixture
def embedded(tmp_path: Path) -> Settings:
    (tmp_path / "data").mkdir()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'data' / 'lifecycle.sqlite3'}",
        kafka_bootstrap=None,
        master_key=new_master_key(),
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
    started = start_workers(embedded, app, poll_interval_s=0.05)
    yield started
    started.stop()


def test_an_export_is_requested_sealed_taken_in_and_downloaded_in_one_process(
    embedded: Settings, app: Accounts, workers: Workers
) -> None:
    assert f"worker-{EXPORT_GROUP}" in workers.running
    assert workers.publisher is not None
    tag = uuid.uuid4().hex[:8]
    member_id = app.register(
        email=f"e.{tag}@example.jp",
        display_name=f"Emb {tag}",
        phone="090-0000-0000",
        work_history=[{"company": f"Firm{tag}", "title": "Clerk", "from": "2014-04-01"}],
        consent_version="v1",
    )
    app.edit_preferences(member_id, job_title=f"Title{tag}")
    for n in range(3):
        app.receive_scout(member_id, scout_id=f"s{n}", company_id="c", job_id=f"j{n}")
    stores = workers.stores
    thread = chat.open_thread(stores["chat"], member_id, "c")
    chat_keys = service_keyring(embedded, "chat")
    message = chat.post_message(
        stores["chat"], member_id, thread, "member", f"Chatted{tag}", keyring=chat_keys
    )
    wait_until(lambda: mail.contact_known(stores["mail"], member_id), "the address reached mail")
    wait_until(lambda: len(scout.scouts_of(stores["scout"], member_id)) == 3, "scouts held")
    notice = notices.queue_notice(
        stores["mail"], member_id, kind="notices", subject=f"Hello{tag}", body=f"Body{tag}"
    )
    mail_keys = service_keyring(embedded, "mail")
    assert notices.deliver_queued(stores["mail"], DiscardingMailer(), mail_keys) == 1
    exports = build_data_exports(app, embedded)
    export = exports.request(member_id).export
    wait_until(
        lambda: exports.get(member_id, export.id).status is ExportStatus.READY,
        "the export is ready",
        timeout_s=30,
    )
    document = json.loads(b"".join(exports.download(member_id, export.id)))
    assert jsonschema_rs.validator_for(SCHEMA).is_valid(document)
    account = document["account"]
    assert (account["email"], account["display_name"], account["phone"]) == (
        f"e.{tag}@example.jp",
        f"Emb {tag}",
        "090-0000-0000",
    )
    assert account["profile"]["job_title"] == f"Title{tag}"
    assert account["work_history"] == [
        {"company": f"Firm{tag}", "title": "Clerk", "from": "2014-04-01", "to": None}
    ]
    assert [s["scout_id"] for s in account["scouts"]] == ["s0", "s1", "s2"]
    services = document["services"]
    assert [(s["scout_id"], s["company_id"], s["job_id"]) for s in services["scout"]["scouts"]] == [
        (f"s{n}", "c", f"j{n}") for n in range(3)
    ]
    [held] = services["chat"]["threads"]
    assert (held["thread_id"], held["company_id"]) == (thread, "c")
    assert [(m["message_id"], m["sender"], m["body"]) for m in held["messages"]] == [
        (message, "member", f"Chatted{tag}")
    ]
    contact = services["mail"]["contact"]
    assert (contact["email"], contact["display_name"]) == (f"e.{tag}@example.jp", f"Emb {tag}")
    [sent] = services["mail"]["notices"]
    assert (sent["notice_id"], sent["status"], sent["subject"], sent["body"]) == (
        notice,
        "sent",
        f"Hello{tag}",
        f"Body{tag}",
    )
    # Nothing readable crossed the in-process log: requests and parts hold ids, keys, boxes.
    log = workers.publisher
    for topic in (embedded.topics.export_requested, *embedded.topics.export_parts.values()):
        for delivered in log.read(topic, 0, max_records=10_000):
            value = delivered.record.value or b""
            for needle in (tag.encode(), b"Chatted", b"example.jp", b"Hello", b"Body"):
                assert needle not in value
    assert all(c.stats.dead_lettered == 0 for c in workers.consumers.values())
    assert UUID(document["export_id"]) == export.id
