"""Kafka off, the embedded default: a data export end to end inside one process.

`start_workers` runs the relay (which publishes the export request from the event store), the
services and the export intake as threads over the in-process log, as `lifecycle serve` does.
The services' answers come from `stub_services` until the reference services answer requests
themselves: each seals its section to the export's key and sends it on its own part topic.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import jsonschema_rs
import pytest
from support import migrate_embedded, wait_until

from lifecycle.application import Accounts
from lifecycle.bootstrap import build_data_exports
from lifecycle.crypto import new_master_key
from lifecycle.data_export_aggregate import ExportStatus
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.source import InProcessSource
from lifecycle.sealed_box import seal_part
from lifecycle.settings import Settings
from lifecycle.workers import Workers, start_workers
from schemas.contract import TopicNames, decode_record
from schemas.data_export import EXPORT_GROUP, ExportRequestedV1, encode_export_part

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "schemas/v1/account.data-export.v1.json").read_text()
)
WHEN = "2026-04-01T09:30:00Z"


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


def stub_services(
    publisher: InProcessPublisher,
    topics: TopicNames,
    sections: dict[str, dict[str, Any]],
    stop: threading.Event,
) -> threading.Thread:
    """Answer every request as a service would: its section, sealed, on its own topic."""
    source = InProcessSource(publisher, [topics.export_requested])

    def run() -> None:
        while not stop.is_set():
            for incoming in source.poll(0.05):
                request = decode_record(incoming.headers, incoming.value, incoming.topic).data
                assert isinstance(request, ExportRequestedV1)
                for service, section in sections.items():
                    if not request.addresses(service):
                        continue
                    for part in seal_part(
                        request.public_key,
                        json.dumps(section).encode(),
                        export_id=request.export_id,
                        account_id=request.account_id,
                        service=service,
                        chunk_bytes=1024,
                    ):
                        record = encode_export_part(part)
                        publisher.publish(
                            topics.export_part(service), record.key, record.headers, record.value
                        )
                publisher.flush()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def sections_for(tag: str, scouts: int) -> dict[str, dict[str, Any]]:
    return {
        "scout": {
            "scouts": [
                {"scout_id": f"s{n}", "company_id": "c", "job_id": f"j{n}", "received_at": WHEN}
                for n in range(scouts)
            ]
        },
        "chat": {
            "threads": [
                {
                    "thread_id": "t1",
                    "company_id": "c",
                    "opened_at": WHEN,
                    "messages": [
                        {
                            "message_id": "m1",
                            "sender": "member",
                            "body": f"Chatted{tag}",
                            "sent_at": WHEN,
                        }
                    ],
                }
            ]
        },
        "mail": {
            "contact": {
                "email": f"e.{tag}@example.jp",
                "display_name": f"Emb {tag}",
                "notifications": {"scouts": True, "recommendations": True, "notices": True},
                "updated_at": WHEN,
            },
            "notices": [],
        },
    }


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
    sections = sections_for(tag, 3)
    stop = threading.Event()
    stub = stub_services(workers.publisher, embedded.topics, sections, stop)
    try:
        exports = build_data_exports(app, embedded)
        export = exports.request(member_id).export
        wait_until(
            lambda: exports.get(member_id, export.id).status is ExportStatus.READY,
            "the export is ready",
            timeout_s=30,
        )
        document = json.loads(b"".join(exports.download(member_id, export.id)))
    finally:
        stop.set()
        stub.join(timeout=5)
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
    assert document["services"] == sections
    # Nothing readable crossed the in-process log: requests and parts hold ids, keys, boxes.
    log = workers.publisher
    for topic in (embedded.topics.export_requested, *embedded.topics.export_parts.values()):
        for delivered in log.read(topic, 0, max_records=10_000):
            value = delivered.record.value or b""
            for needle in (tag.encode(), b"Chatted", b"example.jp"):
                assert needle not in value
    assert all(c.stats.dead_lettered == 0 for c in workers.consumers.values())
    assert UUID(document["export_id"]) == export.id
