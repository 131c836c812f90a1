"""The erasure pipeline's process-local metrics, and the workers' readiness and lag.

A histogram belongs to the process that observes it: the erasure process observes
withdrawal-to-purged, the mail service withdrawal-to-suppression, every writer the group-commit
batch size. They live in this module's `REGISTRY`, which each process exposes: the API's
`/metrics` (`lifecycle serve`, where the workers run in threads when Kafka is off) and each
worker process's probe port (`lifecycle.probe`, `GET /metrics`).

`WorkersCollector` reads, at each scrape and without I/O, what the workers of this process
already know: whether each is ready (waits for no dependency) and each consumer group's lag (the
kit refreshes it every second). Labels are worker and group names, never an id.

Infrastructure: prometheus_client and the standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# The erasure deadline objective's boundary (LIFECYCLE_ERASURE_DEADLINE_HOURS' default, 72 h)
# is a bucket, so the burn-rate alert reads the share of purges within it from the buckets.
ERASURE_DEADLINE_BUCKET_S = 72 * 3600.0
ERASURE_BUCKETS = (
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    6 * 3600.0,
    24 * 3600.0,
    ERASURE_DEADLINE_BUCKET_S,
    7 * 24 * 3600.0,
)
SUPPRESSION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)

REGISTRY = CollectorRegistry()

WITHDRAWAL_TO_PURGED = Histogram(
    "lifecycle_withdrawal_to_purged_seconds",
    "From a withdrawal's request to its account's Purged, observed by the erasure process.",
    buckets=ERASURE_BUCKETS,
    registry=REGISTRY,
)
WITHDRAWAL_TO_SUPPRESSION = Histogram(
    "lifecycle_withdrawal_to_suppression_seconds",
    "From a withdrawal's request to the mail service's suppression of every notice.",
    buckets=SUPPRESSION_BUCKETS,
    registry=REGISTRY,
)
GROUP_COMMIT_BATCH = Histogram(
    "lifecycle_group_commit_batch_size",
    "Saves committed together in one transaction by the group commit.",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)


def observe_since(histogram: Histogram, started: datetime, now: datetime | None = None) -> None:
    """Seconds from `started` (aware, or naive UTC) to now; a clock running behind counts 0."""
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    elapsed = ((now or datetime.now(UTC)) - started).total_seconds()
    histogram.observe(max(0.0, elapsed))


def worker_name(worker: Any) -> str:
    """The label of a worker: a consumer's group name, `relay` for a relay, `project:<model>` for
    a read model's projector, a lane's name, else its class name."""
    if hasattr(worker, "total_lag"):
        return str(worker.name)
    if hasattr(worker, "publisher") and hasattr(worker, "position"):
        return "relay"
    if (model := getattr(worker, "model", None)) is not None and hasattr(model, "name"):
        return f"project:{model.name}"  # one projector per read model
    return str(getattr(worker, "name", type(worker).__name__.lower()))


class WorkersCollector(Collector):
    """`lifecycle_worker_ready{worker}` and `lifecycle_consumer_lag{group}` of the workers
    `workers()` returns (read at each scrape: they may start after the collector)."""

    def __init__(self, workers: Callable[[], Iterable[Any]]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily(
            "lifecycle_worker_ready",
            "1 when the worker waits for no dependency (database, broker, smtp), else 0.",
            labels=["worker"],
        )
        lag = GaugeMetricFamily(
            "lifecycle_consumer_lag",
            "Records on the consumer group's topics not yet consumed, as of its last refresh.",
            labels=["group"],
        )
        for worker in list(self._workers()):
            name = worker_name(worker)
            ready.add_metric([name], 0 if getattr(worker, "waiting_for", None) else 1)
            if callable(total := getattr(worker, "total_lag", None)):
                lag.add_metric([name], total())
        yield ready
        yield lag


class ForwardingCollector(Collector):
    """Another registry's metrics, collected into this one (the process-wide `REGISTRY` into an
    app's own registry, so one exposition holds both)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Any]:
        yield from self._registry.collect()
