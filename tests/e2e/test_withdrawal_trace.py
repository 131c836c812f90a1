"""One withdrawal is one trace: from the HTTP request through the relay, the scout, chat and
mail services and the erasure process to `Purged`, with no personal value anywhere in it.

Tracing is on (in-memory exporter) only inside these tests; elsewhere it is off, as by default.
On the real broker (each worker as the CLI starts it, on threads) and embedded (Kafka off)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from support import TOKENS, SmtpSink, auth, service_schemas_beside, wait_until, worker_threads

from lifecycle import tracing
from lifecycle.account_terms import AccountStatus
from lifecycle.api import create_app
from lifecycle.application import Accounts
from lifecycle.bootstrap import build_erasure
from lifecycle.crypto import new_master_key
from lifecycle.settings import Settings, token_digest
from lifecycle.workers import start_workers
from schemas.contract import TopicNames

SERVICES = ("scout", "chat", "mail")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.enable([SimpleSpanProcessor(exporter)])
    try:
        yield exporter
    finally:
        tracing.disable()


def person(tag: str) -> dict[str, Any]:
    return {
        "email": f"kiyoshi.{tag}@example.jp",
        "display_name": f"Kiyoshi Tracewell {tag}",
        "phone": "090-1234-5678",
        "consent_version": "2026-04",
    }


def withdraw_over_http(client: TestClient, accounts: Accounts, member: dict[str, Any]) -> UUID:
    created = client.post("/v1/accounts", json=member, headers=auth("service"))
    assert created.status_code == 201, created.text
    account_id = UUID(created.json()["account_id"])
    withdrawn = client.post(
        f"/v1/accounts/{account_id}/withdrawal",
        json={"reason": "other", "comment": f"Secret farewell of {member['display_name']}"},
        headers={**auth("service"), "traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"},
    )
    assert withdrawn.status_code == 202, withdrawn.text
    wait_until(
        lambda: accounts.load_for_audit(account_id).status is AccountStatus.PURGED,
        "the account is Purged",
    )
    return account_id


def assert_one_trace(exporter: InMemorySpanExporter, member: dict[str, Any]) -> None:
    """The withdrawal's trace (the caller's traceparent continued) holds the HTTP span, the
    relay's, each service's, the erasure process's and Purged's publication."""
    trace_id = int("ab" * 16, 16)

    def names() -> set[str]:
        return {s.name for s in exporter.get_finished_spans() if s.context.trace_id == trace_id}

    wanted = {
        "WithdrawalRequested publish",
        "scout process",
        "chat process",
        "mail process",
        "lifecycle-erasure process",
        "Account purge",
        "Purged publish",
    }
    wait_until(lambda: wanted <= names(), "every step of the withdrawal in its trace")
    in_trace = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    [server] = [s for s in in_trace if s.kind is SpanKind.SERVER]
    assert server.name == "POST /v1/accounts/{account_id}/withdrawal"
    assert server.parent is not None and server.parent.span_id == int("cd" * 8, 16)
    everywhere = {s.context.span_id: s for s in exporter.get_finished_spans()}

    def parent(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, span.name
        return everywhere[span.parent.span_id]

    def ancestors(span: ReadableSpan) -> list[str]:
        found = []
        while span.parent is not None and span.parent.span_id in everywhere:
            span = everywhere[span.parent.span_id]
            found.append(span.name)
        return found

    # relay -> each service -> erasure process, each the child of the one before.
    [relayed] = [s for s in in_trace if s.name == "WithdrawalRequested publish"]
    assert server.name in ancestors(relayed)
    for service in SERVICES:
        assert any(s.name == f"{service} process" and parent(s) is relayed for s in in_trace), (
            service
        )
    confirmations = [s for s in in_trace if s.name == "lifecycle-erasure process"]
    assert {parent(s).name for s in confirmations} <= {f"{n} process" for n in SERVICES}
    # Purged is published in the withdrawal's trace, from the purge, which links the
    # confirmation that completed the erasure.
    [purge] = [s for s in in_trace if s.name == "Account purge"]
    linked = {link.context.span_id for link in purge.links}
    finished = lambda: {s.context.span_id: s for s in exporter.get_finished_spans()}  # noqa: E731
    wait_until(lambda: linked <= finished().keys(), "the linked confirmation's span ended")
    everywhere = finished()
    assert server.name in ancestors(purge)
    assert [everywhere[link.context.span_id].name for link in purge.links] == [
        "lifecycle-erasure process"
    ]
    [published] = [s for s in in_trace if s.name == "Purged publish"]
    assert parent(published) is purge
    assert_no_personal_value(exporter.get_finished_spans(), member)


def assert_no_personal_value(found: tuple[ReadableSpan, ...], member: dict[str, Any]) -> None:
    dumped = "\n".join(span.to_json() for span in found)
    for value in (
        member["email"],
        member["email"].split("@")[0],
        member["display_name"],
        member["phone"],
        "Secret farewell",
    ):
        assert value not in dumped


# Embedded: Kafka off, the workers in threads of the API's process


def test_one_withdrawal_is_one_trace_embedded(
    spans: InMemorySpanExporter, settings: Settings, accounts: Accounts
) -> None:
    erasure = build_erasure(accounts, settings)
    app = create_app(settings, accounts, erasure)
    workers = start_workers(settings, accounts, erasure=erasure)
    app.state.workers = workers
    member = person(uuid.uuid4().hex[:8])
    try:
        with TestClient(app) as client:
            withdraw_over_http(client, accounts, member)
            assert_one_trace(spans, member)
    finally:
        workers.stop()


# The real broker: each worker as the CLI starts it


@pytest.mark.kafka
@pytest.mark.postgres
def test_one_withdrawal_is_one_trace_on_the_broker(
    spans: InMemorySpanExporter,
    postgres_url: str,
    lifecycle_schema: str,
    kafka_bootstrap: str,
    topics: TopicNames,
    smtp: SmtpSink,
) -> None:
    settings = Settings(
        database_url=postgres_url,
        database_schema=lifecycle_schema,
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=topics.prefix,
        master_key=new_master_key(),
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        api_tokens={token_digest(token): role for role, token in TOKENS.items()},
        log_format="json",
    )
    # `lifecycle migrate` made the schema (`lifecycle_schema`); each service's store:
    with service_schemas_beside(settings):
        accounts = Accounts(env=settings.application_env())
        member = person(uuid.uuid4().hex[:8])
        try:
            with (
                worker_threads(settings, topics, "relay", "erasure"),
                TestClient(create_app(settings, accounts)) as client,
            ):
                withdraw_over_http(client, accounts, member)
                assert_one_trace(spans, member)
        finally:
            accounts.close()
