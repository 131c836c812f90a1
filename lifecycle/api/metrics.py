"""`/metrics` in Prometheus' text format, on a registry of the app's own.

Counted in this process: HTTP requests (by method, route template and status, with their
durations) and commands (the state-changing routes, by outcome). Read from the database by a
background refresh every `METRICS_REFRESH_S` (a scrape only formats what was found; the first
scrape starts the refresh, so a process nobody scrapes never reads), so every replica reports
the same values: events appended (the notification log's head), relay position and lag, each
projection's position and lag, erasures by state and confirmations refused by the erasure
process. And, without the database, which of this process's workers wait for a dependency.
Labels are route templates and names, never ids or anything a member typed.

`/metrics` holds counts only. Open by default, like `/healthz`; with
`LIFECYCLE_METRICS_TOKEN_SHA256` set it needs that bearer token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lifecycle.api import pipeline_collector
from lifecycle.api.auth import role_for_token
from lifecycle.api.problems import AuthenticationError, problem_responses
from lifecycle.api.readiness import Refresher
from lifecycle.logs import get_logger
from lifecycle.services.pipeline import PipelineReadings

# State-changing routes, by the command they run.
COMMANDS: dict[tuple[str, str], str] = {
    ("POST", "/v1/accounts"): "register",
    ("PATCH", "/v1/accounts/{account_id}/preferences"): "edit_preferences",
    ("POST", "/v1/accounts/{account_id}/scouts"): "receive_scout",
    ("POST", "/v1/accounts/{account_id}/gift-claim"): "claim_gift",
    ("POST", "/v1/accounts/{account_id}/withdrawal"): "request_withdrawal",
    ("POST", "/admin/v1/erasures/{account_id}/services/{service}/retry"): "retry_erasure",
    ("POST", "/v1/accounts/{account_id}/data-exports"): "request_data_export",
    ("POST", "/admin/v1/data-exports/{export_id}/services/{service}/retry"): "retry_data_export",
    ("POST", "/admin/v1/dead-letters/{group}/{partition}/{offset}/redrive"): "redrive",
    ("POST", "/admin/v1/dead-letters/{group}/{partition}/{offset}/discard"): "discard",
}

router = APIRouter(tags=["health"])


class Metrics:
    """The app's registry and the instruments the middleware updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lifecycle_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "lifecycle_http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.commands = Counter(
            "lifecycle_commands",
            "Commands run through the API, by command and outcome (ok, rejected, failed).",
            ["command", "outcome"],
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.durations.labels(method, route).observe(seconds)
        command = COMMANDS.get((method, route))
        if command is not None:
            outcome = "ok" if status < 400 else "rejected" if status < 500 else "failed"
            self.commands.labels(command, outcome).inc()


class MetricsMiddleware:
    """Times every HTTP request and records it under its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            template = getattr(scope.get("route"), "path", None)
            self.metrics.observe(
                scope["method"],
                template if isinstance(template, str) else "<unmatched>",
                status,
                time.perf_counter() - started,
            )


# How often the gauges read from the database are recomputed (a scrape never reads it).
METRICS_REFRESH_S = 10.0


class StateCollector(Collector):
    """Formats the service's state as the background refresh last read it from the database."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.log = get_logger(__name__)
        self.gauges: Refresher[list[Any] | None] | None = None

    def refresher(self, interval_s: float = METRICS_REFRESH_S) -> Refresher[list[Any] | None]:
        """The refresh (the app's lifespan makes it and stops it): it reads for the first
        time when the first scrape comes, so a process nobody scrapes never reads."""
        self.gauges = Refresher("metrics", self.read, interval_s, on_error=self._unreadable)
        return self.gauges

    def read(self) -> list[Any] | None:
        accounts = getattr(self.app.state, "accounts", None)
        return None if accounts is None else list(self._families(accounts))

    def _unreadable(self, error: BaseException) -> None:
        self.log.warning("metrics.refresh_failed", error_type=type(error).__name__)

    def collect(self) -> Iterator[Any]:
        yield self._waiting()
        latest = None
        if self.gauges is not None:
            self.gauges.start_on_first_use()
            latest = self.gauges.latest()
        families = latest[0] if latest is not None else None
        up = GaugeMetricFamily(
            "lifecycle_metrics_database_up",
            "1 when the last background refresh could read the database.",
        )
        up.add_metric([], 0 if families is None else 1)
        yield up
        yield from families or ()

    def _waiting(self) -> GaugeMetricFamily:
        """Read before the database, as it matters most when the database is down."""
        waiting = GaugeMetricFamily(
            "lifecycle_waiting_for_dependency",
            "1 for each worker of this process waiting for a dependency that is down, by "
            "worker and dependency (database, broker, network); absent when none waits.",
            labels=["worker", "dependency"],
        )
        for worker, dependency in sorted(waiting_workers(self.app).items()):
            waiting.add_metric([worker, dependency], 1)
        return waiting

    def _families(self, accounts: Any) -> Iterator[Any]:
        readings = PipelineReadings(accounts)
        head = readings.log_head()
        appended = CounterMetricFamily(
            "lifecycle_events_appended",
            "Events appended to the log (the notification log's head id; on PostgreSQL a "
            "refused write may leave a gap that counts too).",
        )
        appended.add_metric([], head)
        yield appended

        relay_position = GaugeMetricFamily(
            "lifecycle_relay_position", "Last notification id published to Kafka.", labels=["relay"]
        )
        relay_lag = GaugeMetricFamily(
            "lifecycle_relay_lag", "Notifications not yet published.", labels=["relay"]
        )
        positions = {name: position for name, (position, _) in readings.relay_positions().items()}
        # With Kafka off the relay thread keeps its position in memory, not in relay_position.
        relay = getattr(getattr(self.app.state, "workers", None), "relay", None)
        name, position = getattr(relay, "name", None), getattr(relay, "position", None)
        if isinstance(name, str) and isinstance(position, int) and name not in positions:
            positions[name] = position
        for name, position in positions.items():
            relay_position.add_metric([name], position)
            relay_lag.add_metric([name], max(0, head - position))
        yield relay_position
        yield relay_lag

        projection_position = GaugeMetricFamily(
            "lifecycle_projection_position",
            "Last notification id applied to the read model.",
            labels=["projection"],
        )
        projection_lag = GaugeMetricFamily(
            "lifecycle_projection_lag",
            "Notifications not yet applied to the read model.",
            labels=["projection"],
        )
        for name, position in readings.read_model_positions().items():
            projection_position.add_metric([name], position)
            projection_lag.add_metric([name], max(0, head - position))
        yield projection_position
        yield projection_lag

        erasures = GaugeMetricFamily(
            "lifecycle_erasures",
            "Erasures by state (open, errored, overdue, purged), as projected.",
            labels=["state"],
        )
        settings = getattr(self.app.state, "settings", None)
        hours = getattr(settings, "erasure_deadline_hours", 72.0)
        try:
            counts = readings.erasure_counts(timedelta(hours=hours))
        except Exception as error:
            self.log.warning("metrics.erasures_unreadable", error_type=type(error).__name__)
            counts = {}
        for state, count in counts.items():
            erasures.add_metric([state], count)
        yield erasures

        exports = GaugeMetricFamily(
            "lifecycle_data_exports",
            "Data exports by state: open (parts outstanding), failed (a part failed), overdue "
            "(past the deadline), ready (downloadable).",
            labels=["state"],
        )
        api = getattr(self.app.state, "api", None)
        try:
            export_counts = api.exports.counts() if api is not None else {}
        except Exception as error:
            self.log.warning("metrics.data_exports_unreadable", error_type=type(error).__name__)
            export_counts = {}
        for name, count in export_counts.items():
            exports.add_metric([name], count)
        yield exports

        refused = CounterMetricFamily(
            "lifecycle_erasure_confirmations_refused",
            "Confirmations the erasure process refused (not answering a withdrawal, or not "
            "from the service whose topic they came on), by service and reason.",
            labels=["service", "reason"],
        )
        for (service, reason), count in sorted(readings.refusals().items()):
            refused.add_metric([service, reason], count)
        yield refused


def waiting_workers(app: FastAPI) -> dict[str, str]:
    """The dependency each worker of this process waits for, by worker name.

    The workers are those `lifecycle serve` runs in threads when Kafka is off (the relay, the
    reference services, the erasure consumer), found in `app.state.workers`; with Kafka each
    runs as a process of its own and says it in its log (`*.waiting`, `*_unreachable`).
    """
    workers = getattr(app.state, "workers", None)
    if workers is None:
        return {}
    found: dict[str, str] = {}
    relay = getattr(workers, "relay", None)
    if relay is not None and relay.waiting_for is not None:
        found["relay"] = str(relay.waiting_for)
    for name, consumer in dict(getattr(workers, "consumers", {})).items():
        if consumer.waiting_for is not None:
            found[str(name)] = str(consumer.waiting_for)
    return found


@router.get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses=problem_responses(401),
)
def metrics(request: Request) -> Response:
    digest = request.app.state.settings.metrics_token_sha256
    if digest is not None:
        _, _, token = (request.headers.get("authorization") or "").partition(" ")
        if role_for_token(token.strip(), {digest: "ops"}) is None:
            raise AuthenticationError("/metrics needs its bearer token")
    found: Metrics = request.app.state.metrics
    return Response(generate_latest(found.registry), media_type=CONTENT_TYPE_LATEST)


def install_metrics(app: FastAPI) -> Metrics:
    """The registry, the request middleware and the state collector (the app includes the
    route, `router`, with the others)."""
    found = Metrics()
    app.state.state_collector = StateCollector(app)
    found.registry.register(app.state.state_collector)
    pipeline_collector.install(app, found.registry)
    app.state.metrics = found
    app.add_middleware(MetricsMiddleware, metrics=found)
    return found
