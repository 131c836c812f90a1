"""A data export across processes on the real broker: the relay publishes the request, the
reference services (`lifecycle consume scout|chat|mail`) answer from their own stores on their own
part topics, `lifecycle data-exports` takes the parts in; the
member downloads a document that holds exactly what was put in, validates against its JSON
Schema, and no topic holds a readable value (each searched from offset 0 in the encodings the
erasure tests use). Then the withdrawal ends it: 410, key and parts gone."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from support import (
    read_topic,
    read_topics,
    searched_forms,
    service_schemas_beside,
    wait_until,
    worker_threads,
)

from consumers import chat, mail, notices, scout
from consumers.store import open_database
from lifecycle.application import Accounts
from lifecycle.bootstrap import (
    build_data_exports,
    service_keyring,
)
from lifecycle.crypto import new_master_key
from lifecycle.data_export_aggregate import ExportStatus
from lifecycle.settings import Settings
from lifecycle.storage import Database
from schemas.contract import TopicNames

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
SERVICES = ("scout", "chat", "mail")
SCHEMA = json.loads(
    (Path(__file__).parents[2] / "schemas/v1/account.data-export.v1.json").read_text()
)
WHEN = "2026-04-01T09:30:00Z"


@pytest.fixture
def settings(postgres_url: str, lifecycle_schema: str, kafka_bootstrap: str) -> Iterator[Settings]:
    settings = Settings(
        database_url=postgres_url,
        database_schema=lifecycle_schema,
        kafka_bootstrap=kafka_bootstrap,
        master_key=new_master_key(),
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
    yield opened
    for database in opened.values():
        database.close()


@pytest.fixture
def accounts(settings: Settings) -> Iterator[Accounts]:
    app = Accounts(env=settings.application_env())
    yield app
    app.close()


def test_an_export_over_kafka_holds_what_was_put_in_and_no_topic_holds_a_value(
    settings: Settings, accounts: Accounts, topics: TopicNames, stores: dict[str, Database]
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
    member_id = accounts.register(**member)
    accounts.edit_preferences(member_id, desired={"locations": ["Tokyo"], "min_salary": 9_000_000})
    for n in range(3):
        accounts.receive_scout(member_id, scout_id=f"s{n}", company_id="c1", job_id="j")
    accounts.claim_gift(member_id, company_id="c1", start_date=date(2026, 7, 1))
    exports = build_data_exports(accounts, settings)

    with worker_threads(settings, topics, "relay", "data-exports"):
        thread = chat.open_thread(stores["chat"], member_id, "c1")
        message = chat.post_message(
            stores["chat"],
            member_id,
            thread,
            "member",
            f"Confidential{tag} salary talk",
            keyring=service_keyring(settings, "chat"),
        )
        wait_until(
            lambda: mail.contact_known(stores["mail"], member_id), "the address reached mail"
        )
        wait_until(lambda: len(scout.scouts_of(stores["scout"], member_id)) == 3, "scouts held")
        notice = notices.queue_notice(
            stores["mail"],
            member_id,
            kind="notices",
            subject=f"Subject{tag}",
            body=f"Noticebody{tag}",
        )
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
    services = document["services"]
    assert [(s["scout_id"], s["company_id"]) for s in services["scout"]["scouts"]] == [
        (f"s{n}", "c1") for n in range(3)
    ]
    [held] = services["chat"]["threads"]
    assert (held["thread_id"], held["company_id"]) == (thread, "c1")
    assert [(m["message_id"], m["sender"], m["body"]) for m in held["messages"]] == [
        (message, "member", f"Confidential{tag} salary talk")
    ]
    contact = services["mail"]["contact"]
    assert (contact["email"], contact["display_name"]) == (member["email"], member["display_name"])
    assert [
        (n["notice_id"], n["status"], n["subject"], n["body"]) for n in services["mail"]["notices"]
    ] == [(notice, "queued", f"Subject{tag}", f"Noticebody{tag}")]

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
    searched = (topics.export_requested, *topics.export_parts.values(), topics.lifecycle)
    for record in read_topics(bootstrap, searched):
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
