"""Traces across the pipeline with OpenTelemetry, configured only by the standard `OTEL_*`
variables and off unless `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`).

How one withdrawal stays one trace:
- the API's request span (FastAPI instrumentation) is current while the command runs;
  `stamp(events)` stores its W3C context with each event as metadata: the reserved key
  `TRACE_FIELD` in the stored state (the mapper strips it on load, so no domain code, replay or
  export sees it). It is written in the events' own statement, so it is as durable as they are,
  needs no table or migration, and costs nothing when tracing is off (nothing is added);
- the relay reads it back from the stored bytes (`carrier_in`), opens a producer span as its
  child and puts that span's context on the Kafka record as the CloudEvents distributed-tracing
  extension: `ce_traceparent`, `ce_tracestate` headers (`record_spans`);
- the consumer kit opens a consumer span per record as the child of its headers' context
  (`consume_spans`), adds its context to the records the handler sends (confirmations), and
  registers it for the record's account while the batch runs, so a save the handler causes
  (the erasure process's `Purged`) is stamped with that record's context: `Purged` is published
  in the withdrawal's trace.

Nothing personal goes in: span names are fixed words and route templates, attributes are ids
(account id, `ce_id`, topic, group), never an e-mail, a name or text a member wrote.

Infrastructure: OpenTelemetry and the standard library only. When off, every entry point here
returns after one flag check, and no OpenTelemetry module is imported.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

TRACE_FIELD = "_trace_context"
TRACEPARENT, TRACESTATE = "ce_traceparent", "ce_tracestate"
_MARK = b'"' + TRACE_FIELD.encode() + b'":'


class _On:
    """The SDK's TracerProvider and this module's tracer, while tracing is on."""

    provider: Any = None
    tracer: Any = None


_on = _On()
_in_flight: dict[str, list[Any]] = {}  # account id -> contexts of records being handled
_in_flight_lock = threading.Lock()


def enabled() -> bool:
    return _on.provider is not None


def wanted_by_environment() -> bool:
    """`OTEL_TRACES_EXPORTER` names an exporter and `OTEL_SDK_DISABLED` is not true."""
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return exporter not in ("", "none") and not disabled


def configure_from_environment() -> None:
    """At a process's start: the SDK with the exporters `OTEL_TRACES_EXPORTER` names, batched;
    sampler, service name and endpoint from their standard variables (the SDK reads them)."""
    if enabled() or not wanted_by_environment():
        return
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    processors = []
    for name in (n.strip() for n in os.environ["OTEL_TRACES_EXPORTER"].lower().split(",")):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name != "none":
            raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter {name!r}")
    enable(processors)


def enable(processors: Sequence[Any]) -> Any:
    """Tracing on with these span processors (tests give an in-memory exporter's); the provider
    is this module's own, so turning it off again (`disable`) leaves no global behind."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": _service_name()}))
    for processor in processors:
        provider.add_span_processor(processor)
    _on.provider, _on.tracer = provider, provider.get_tracer("lifecycle")
    return provider


def disable() -> None:
    if _on.provider is not None:
        _on.provider.shutdown()
    _on.provider = _on.tracer = None


def provider() -> Any:
    return _on.provider


def _service_name() -> str:
    return os.environ.get("OTEL_SERVICE_NAME") or "lifecycle"


# Events: stamped at save, read back by the relay


def stamp(events: Iterable[Any]) -> None:
    """Store the current trace context with each event (before it is mapped); for an event
    of an account whose record a consumer is handling, that record's context."""
    if _on.provider is None:
        return
    from opentelemetry import context, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    current = trace.get_current_span().get_span_context()
    for event in events:
        state = event.__dict__
        if TRACE_FIELD in state:
            continue
        found = current if current.is_valid else None
        if found is None:
            with _in_flight_lock:
                waiting = _in_flight.get(str(getattr(event, "originator_id", "")))
                found = waiting[-1] if waiting else None
        if found is None:
            continue
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(
            carrier,
            context=trace.set_span_in_context(trace.NonRecordingSpan(found), context.Context()),
        )
        if carrier:
            state[TRACE_FIELD] = carrier


def strip(state: dict[str, Any]) -> None:
    """The mapper, on load: the reserved key is metadata, not the event's."""
    state.pop(TRACE_FIELD, None)


def carrier_in(stored_state: bytes) -> dict[str, str] | None:
    """The trace context stored with an event (its state's bytes), or None."""
    at = stored_state.find(_MARK)
    if at < 0:
        return None
    try:
        found, _ = json.JSONDecoder().raw_decode(stored_state.decode(), at + len(_MARK))
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


@contextmanager
def continuing(stored_state: bytes | None, name: str, account_id: str) -> Iterator[None]:
    """A span, current inside the block, continuing the trace stored with an earlier event
    (the withdrawal's, for `Purged`), linked to the record being handled (the confirmation that
    completed the erasure): events saved inside are stamped with it."""
    if _on.tracer is None:
        yield
        return
    from opentelemetry import trace

    cause = trace.get_current_span().get_span_context()
    if not cause.is_valid:
        with _in_flight_lock:
            waiting = _in_flight.get(account_id)
            cause = waiting[-1] if waiting else cause
    carrier = carrier_in(stored_state) if stored_state else None
    span = _on.tracer.start_span(
        name,
        context=_extract(carrier) if carrier else None,
        links=[trace.Link(cause)] if cause.is_valid else [],
        attributes={"lifecycle.account_id": account_id},
    )
    with trace.use_span(span, end_on_exit=True):
        yield


# Kafka records


def _extract(carrier: dict[str, str]) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier)


def _headers_of(span: Any) -> list[tuple[str, bytes]]:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    headers = [(TRACEPARENT, carrier["traceparent"].encode())] if "traceparent" in carrier else []
    if carrier.get("tracestate"):
        headers.append((TRACESTATE, carrier["tracestate"].encode()))
    return headers


def carrier_of_headers(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    carrier = {}
    for key, value in headers:
        if key in (TRACEPARENT, TRACESTATE) and value is not None:
            carrier[key.removeprefix("ce_")] = value.decode(errors="replace")
    return carrier


def publish_headers(
    stored_state: bytes, name: str, attributes: dict[str, Any]
) -> list[tuple[str, bytes]]:
    """The relay, while tracing: a producer span for one event, child of the context stored
    with it; the headers that carry the span to Kafka (none for an event stored untraced)."""
    carrier = carrier_in(stored_state)
    if carrier is None or _on.tracer is None:
        return []
    from opentelemetry.trace import SpanKind

    span = _on.tracer.start_span(
        f"{name} publish",
        context=_extract(carrier),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "publish",
            **attributes,
        },
    )
    try:
        return _headers_of(span)
    finally:
        span.end()


class RecordSpans:
    """The kit: one consumer span per record of a batch, open while the batch is handled."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._spans: dict[str, Any] = {}  # ce_id -> span
        self._registered: list[tuple[str, Any]] = []

    def start_all(self, records: Iterable[Any]) -> None:
        """A span for each record (topic, headers) whose headers carry a trace context."""
        for record in records:
            headers = list(record.headers)
            carrier = carrier_of_headers(headers)
            ce_id = _header(headers, "ce_id")
            if carrier and ce_id and ce_id not in self._spans:
                self._start(ce_id, _header(headers, "ce_subject") or "", record.topic, carrier)

    def _start(self, ce_id: str, subject: str, topic: str, carrier: dict[str, str]) -> None:
        from opentelemetry.trace import SpanKind

        span = _on.tracer.start_span(
            f"{self.group} process",
            context=_extract(carrier),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": topic,
                "messaging.consumer.group.name": self.group,
                "messaging.message.id": ce_id,
                "lifecycle.account_id": subject,
            },
        )
        self._spans[ce_id] = span
        with _in_flight_lock:
            _in_flight.setdefault(subject, []).append(span.get_span_context())
        self._registered.append((subject, span.get_span_context()))

    def headers_for(self, ce_id: str) -> list[tuple[str, bytes]]:
        span = self._spans.get(ce_id)
        return [] if span is None else _headers_of(span)

    def end(self, error: BaseException | None = None) -> None:
        with _in_flight_lock:
            for subject, found in self._registered:
                waiting = _in_flight.get(subject, [])
                if found in waiting:
                    waiting.remove(found)
                if not waiting:
                    _in_flight.pop(subject, None)
        for span in self._spans.values():
            if error is not None:
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()
        self._spans.clear()
        self._registered.clear()


def _header(headers: list[tuple[str, Any]], name: str) -> str | None:
    for key, value in headers:
        if key == name and value is not None:
            return bytes(value).decode(errors="replace")
    return None


def record_spans(group: str) -> RecordSpans | None:
    """A batch's record spans, or None when tracing is off (the kit then does nothing)."""
    return RecordSpans(group) if _on.provider is not None else None


# Logs


def add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the current span's trace and span ids, when one is active."""
    if _on.provider is None:
        return event
    from opentelemetry import trace

    found = trace.get_current_span().get_span_context()
    if found.is_valid:
        event["trace_id"] = format(found.trace_id, "032x")
        event["span_id"] = format(found.span_id, "016x")
    return event
