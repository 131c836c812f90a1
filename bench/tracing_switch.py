"""`python -m bench --tracing`: the same cases with tracing on, to price it against a run without.

On: the OpenTelemetry SDK as production runs it (a batching span processor), with an exporter
that drops the spans, so the figure is the service's cost, not a collector's network. Each
command of the `commands` case runs in a root span standing in for its HTTP request's, so its
events store a trace context and the `relay` case publishes `ce_traceparent` headers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lifecycle import tracing


def enable() -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracing.enable([BatchSpanProcessor(Dropping())])


def traced(call: Callable[[int, int], object]) -> Callable[[int, int], object]:
    """`call` inside a root span while tracing is on; `call` itself otherwise."""
    provider = tracing.provider()
    if provider is None:
        return call
    tracer = provider.get_tracer("bench")

    def in_span(caller: int, n: int) -> object:
        with tracer.start_as_current_span("POST /v1/accounts"):
            return call(caller, n)

    return in_span
