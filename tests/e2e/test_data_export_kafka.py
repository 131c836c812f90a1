"""A data export across processes on the real broker: the relay publishes the request, the
services answer on their own part topics (`answer_requests`, a stand-in for the reference
services until they answer themselves), `lifecycle data-exports` takes the parts in; the
member downloads a document that holds exactly what was put in, validates against its JSON
Schema, and no topic holds a readable value (each searched from offset 0 in the encodings the
erasure tests use). Then the withdrawal ends it: 410, key and parts gone."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from support import read_topic, searched_forms, wait_until

from lifecycle.application import Accounts
from lifecycle.bootstrap import build_data_exports, migrate_lifecycle
from lifecycle.crypto import new_master_key
from lifecycle.data_export_aggregate import ExportStatus
from lifecycle.kafka.producer import KafkaPublisher
from lifecycle.kafka.source import KafkaSource
from lifecycle.sealed_box import seal_part
from lifecycle.settings import Settings
from lifecycle.workers import run_data_exports, run_relay
from schemas.contract import TopicNames, decode_record
from schemas.data_export import ExportRequestedV1, encode_export_part

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
SCHEMA = json.loads(
    (Path(__file__).parents[2] / "schemas/v1/account.data-export.v1.json").read_text()
)
WHEN = "2026-04-01T09:30:00Z"


@pytest.fixture
def settings(postgres_url: str, pg_schema: str, kafka_bootstrap: str) -> Settings:
    settings = Settings(
        database_url=postgres_url,
        database_schema=pg_schema,
        kafka_bootstrap=kafka_bootstrap,
        master_key=new_master_key(),
        log_format="json",
    )
    migrate_lifecycle(settings)
    return settings


@pytest.fixture
def accounts(settings: Settings) -> Iterator[Accounts]:
    app = Accounts(env=settings.application_env())
    yield app
    app.close()


def answer_requests(
    settings: Settings, topics: TopicNames, sections: dict[str, bytes], stop: threading.Event
) -> None:
    """Each service's answer: its section sealed to the request's key, on its own topic."""
    assert settings.kafka_bootstrap is not None
    source = KafkaSource(
        settings.kafka_bootstrap, [topics.export_requested], f"{topics.prefix}stub"
    )
    publisher = KafkaPublisher(settings.kafka_bootstrap, client_id="export-stub")
    try:
        while not stop.is_set():
            records = source.poll(0.2)
            for incoming in records:
                request = decode_record(incoming.headers, incoming.value, incoming.topic).data
                assert isinstance(request, ExportRequestedV1)
                for service, section in sections.items():
                    if request.addresses(service):
                        for part in seal_part(
                            request.public_key,
                            section,
                            export_id=request.export_id,
                            account_id=request.account_id,
                            service=service,
                            chunk_bytes=512,
                        ):
                            record = encode_export_part(part)
                            publisher.publish(topics.export_part(service), *record)
            publisher.flush()
            if records:
                source.commit({(r.topic, r.partition): r.offset + 1 for r in records})
    finally:
        source.close()
        publisher.close()


@contextmanager
def running(settings: Settings, topics: TopicNames, sections: dict[str, bytes]) -> Iterator[None]:
    stop = threading.Event()
    errors: list[BaseException] = []
    targets: list[Callable[[], None]] = [
        lambda: run_relay(settings, stop, topics=topics),
        lambda: run_data_exports(settings, stop, topics=topics),
        lambda: answer_requests(settings, topics, sections, stop),
    ]

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as error:
                errors.append(error)

        return run

    threads = [threading.Thread(target=guarded(target)) for target in targets]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert [repr(error) for error in errors] == []


def test_an_export_over_kafka_holds_what_was_put_in_and_no_topic_holds_a_value(
    settings: Settings, accounts: Accounts, topics: TopicNames
) -> None:
    tag = uuid.uuid4().hex[:8]
    member: dict[str, Any] = {
        "email": f"zq.{tag}@export-probe.example",
        "display_name": f"Kazuko Zephyrine{tag}",
        "phone": f"+81-80-{tag[:4]}-{tag[4:8]}",
        "job_title": f"Chiefengineer{tag}",
        "work_history": [{"company": f"Qwertycorp{tag}", "title": "lead", "from": "2019-04-01"}],
        "consent_version": "2026-04",
    }
    sections: dict[str, dict[str, Any]] = {
        "scout": {
            "scouts": [
                {"scout_id": f"s{n}", "company_id": "c1", "job_id": "j", "received_at": WHEN}
                for n in range(3)
            ]
        },
        "chat": {
            "threads": [
                {
                    "thread_id": "t1",
                    "company_id": "c1",
                    "opened_at": WHEN,
                    "messages": [
                        {
                            "message_id": "m1",
                            "sender": "member",
                            "body": f"Confidential{tag} salary talk",
                            "sent_at": WHEN,
                        }
                    ],
                }
            ]
        },
        "mail": {
            "contact": {
                "email": member["email"],
                "display_name": member["display_name"],
                "notifications": {"scouts": True, "recommendations": True, "notices": True},
                "updated_at": WHEN,
            },
            "notices": [
                {
                    "notice_id": "n1",
                    "kind": "notices",
                    "subject": f"Subject{tag}",
                    "body": f"Noticebody{tag}",
                    "status": "sent",
                    "queued_at": WHEN,
                    "sent_at": WHEN,
                }
            ],
        },
    }
    member_id = accounts.register(**member)
    accounts.edit_preferences(member_id, desired={"locations": ["Tokyo"], "min_salary": 9_000_000})
    for n in range(3):
        accounts.receive_scout(member_id, scout_id=f"s{n}", company_id="c1", job_id="j")
    accounts.claim_gift(member_id, company_id="c1", start_date=date(2026, 7, 1))
    exports = build_data_exports(accounts, settings)
    encoded = {service: json.dumps(section).encode() for service, section in sections.items()}

    with running(settings, topics, encoded):
        export = exports.request(member_id).export
        wait_until(
            lambda: exports.get(member_id, export.id).status is ExportStatus.READY,
            "every part came back over Kafka and the export is ready",
        )
        document = json.loads(b"".join(exports.download(member_id, export.id)))

    assert jsonschema_rs.validator_for(SCHEMA).is_valid(document)
    account = document["account"]
    for field in ("email", "display_name", "phone", "consent_version"):
        assert account[field] == member[field]
    assert account["profile"]["job_title"] == member["job_title"]
    assert account["work_history"] == [{**member["work_history"][0], "to": None}]
    assert account["desired"] == {
        "locations": ["Tokyo"],
        "industries": [],
        "job_types": [],
        "min_salary": 9_000_000,
    }
    assert [(s["scout_id"], s["company_id"]) for s in account["scouts"]] == [
        (f"s{n}", "c1") for n in range(3)
    ]
    assert account["gift"]["company_id"] == "c1" and account["gift"]["start_date"] == "2026-07-01"
    assert document["services"] == sections

    # No topic holds a readable value: every one searched from offset 0.
    values = [
        member["email"],
        member["display_name"],
        member["phone"],
        member["job_title"],
        f"Qwertycorp{tag}",
        f"Confidential{tag}",
        f"Subject{tag}",
        f"Noticebody{tag}",
    ]
    bootstrap = settings.kafka_bootstrap
    assert bootstrap is not None
    seen: list[bytes] = []
    for topic in (topics.export_requested, *topics.export_parts.values(), topics.lifecycle):
        for record in read_topic(bootstrap, topic):
            seen += [record.key or b"", record.value or b""]
            seen += [value for _, value in record.headers]
    content = b"\n".join(seen)
    assert read_topic(bootstrap, topics.export_requested)
    for value in values:
        for form in searched_forms(value):
            assert form not in content, "a member's value is readable on a topic"
    assert read_topic(bootstrap, topics.dlq("lifecycle-export")) == []

    # The withdrawal ends it: 410 and the key gone.
    accounts.request_withdrawal(member_id, reason="hired_elsewhere")
    assert exports.get(member_id, export.id).status is ExportStatus.CANCELLED
    assert exports.keys.private_key(export.id) is None
    assert exports.parts.held_for(member_id) == 0
