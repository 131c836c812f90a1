"""The trace context of the command that stored an event is stored with it as metadata (a
reserved key of the stored state, only while tracing is on) and stripped on load: no domain
code, replay or read sees it."""

from __future__ import annotations

import uuid

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lifecycle import tracing
from lifecycle.application import Accounts


def register(accounts: Accounts) -> uuid.UUID:
    return accounts.register(
        email=f"t.{uuid.uuid4().hex[:8]}@example.jp", display_name="T", consent_version="v1"
    )


def test_stored_with_the_event_while_tracing_and_stripped_on_load(accounts: Accounts) -> None:
    untraced = register(accounts)
    tracing.enable([SimpleSpanProcessor(InMemorySpanExporter())])
    try:
        tracer = tracing.provider().get_tracer("test")
        with tracer.start_as_current_span("POST /v1/accounts") as span:
            traced = register(accounts)
        trace_id = format(span.get_span_context().trace_id, "032x")
        [stored] = accounts.recorder.select_events(traced)
        carrier = tracing.carrier_in(stored.state)
        assert carrier is not None and carrier["traceparent"].split("-")[1] == trace_id
        for event in accounts.events.get(traced):
            assert tracing.TRACE_FIELD not in vars(event)
        assert accounts.get_account(traced).email.startswith("t.")
    finally:
        tracing.disable()
    [plain] = accounts.recorder.select_events(untraced)
    assert tracing.carrier_in(plain.state) is None
    assert tracing.TRACE_FIELD.encode() not in plain.state
