"""Tracing is off unless the standard OTEL_* variables turn it on; when on, log lines carry the
current trace and span ids, and a stored event's trace context is read back from its bytes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lifecycle import tracing
from lifecycle.transcoding import OrjsonTranscoder


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    tracing.enable([SimpleSpanProcessor(found)])
    try:
        yield found
    finally:
        tracing.disable()


class Event:
    def __init__(self, originator_id: str) -> None:
        self.originator_id = originator_id


def test_off_by_default_and_then_nothing_is_added(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    tracing.configure_from_environment()
    assert not tracing.enabled()
    event = Event("a")
    tracing.stamp([event])
    assert tracing.TRACE_FIELD not in vars(event)
    assert tracing.record_spans("scout") is None
    assert tracing.add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}


@pytest.mark.parametrize(
    ("variables", "on"),
    [
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
            True,
        ),
    ],
)
def test_the_standard_variables_turn_it_on(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], on: bool
) -> None:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    try:
        tracing.configure_from_environment()
        assert tracing.enabled() is on
    finally:
        tracing.disable()


def test_an_unknown_exporter_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "carrier-pigeon")
    with pytest.raises(ValueError, match="carrier-pigeon"):
        tracing.configure_from_environment()
    assert not tracing.enabled()


def test_log_lines_carry_the_trace_and_span_ids_of_the_current_span(
    exporter: InMemorySpanExporter,
) -> None:
    tracer = tracing.provider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        line = tracing.add_trace_ids(None, "info", {"event": "x"})
        context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in tracing.add_trace_ids(None, "info", {"event": "y"})


def test_configured_logging_adds_the_ids(
    exporter: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from lifecycle.logs import configure_logging

    configure_logging("json", "INFO")
    tracer = tracing.provider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        structlog.get_logger("t").info("inside")
    structlog.get_logger("t").info("outside")
    inside, outside = (json.loads(line) for line in capsys.readouterr().err.splitlines()[-2:])
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "trace_id" not in outside


def test_a_stamped_event_carries_its_context_in_the_stored_bytes(
    exporter: InMemorySpanExporter,
) -> None:
    tracer = tracing.provider().get_tracer("test")
    event = Event("a")
    with tracer.start_as_current_span("command") as span:
        tracing.stamp([event])
    stored = OrjsonTranscoder().encode({"reason": "other", **vars(event)})
    carrier = tracing.carrier_in(stored)
    assert carrier is not None
    assert carrier["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")
    assert tracing.carrier_in(OrjsonTranscoder().encode({"reason": "other"})) is None
    state = dict(vars(event))
    tracing.strip(state)
    assert state == {"originator_id": "a"}
