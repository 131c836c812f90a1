"""The API's `/metrics` share of the erasure pipeline (`lifecycle.pipeline_metrics` has the rest).

Added to the app's registry by `install(app, registry)`:
- this process's pipeline histograms (`lifecycle.pipeline_metrics.REGISTRY`: with Kafka off the
  relay, the services and the erasure process run in this process's threads);
- the readiness and consumer lag of those threads (`lifecycle_worker_ready`,
  `lifecycle_consumer_lag`); with Kafka each worker process serves its own on its probe port;
- `lifecycle_relay_last_publish_timestamp_seconds{relay}`: when each relay last moved its
  position (one row per relay: no scan);
- `lifecycle_dead_letters_waiting{group}`: dead letters neither re-driven nor discarded. With
  Kafka off, the in-process log's dead-letter topics (no I/O). With Kafka, the dead-letter
  topics' record counts from the broker minus those handled, refreshed in the background at most
  every `DEAD_LETTER_REFRESH_S`: a scrape never waits for the broker, it reads the last count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lifecycle.logs import get_logger
from lifecycle.pipeline_metrics import REGISTRY, ForwardingCollector, WorkersCollector
from lifecycle.services.pipeline import PipelineReadings
from schemas.contract import CONSUMER_GROUPS

DEAD_LETTER_REFRESH_S = 30.0

log = get_logger(__name__)


def install(app: FastAPI, registry: CollectorRegistry) -> None:
    registry.register(ForwardingCollector(REGISTRY))
    registry.register(WorkersCollector(lambda: worker_threads(app)))
    registry.register(PipelineStateCollector(app))


def worker_threads(app: FastAPI) -> list[Any]:
    """The workers `lifecycle serve` runs in this process's threads when Kafka is off (the
    relay, the reference services, the erasure consumer); none with Kafka."""
    workers = getattr(app.state, "workers", None)
    if workers is None:
        return []
    relay = getattr(workers, "relay", None)
    found: list[Any] = [] if relay is None else [relay]
    return found + list(dict(getattr(workers, "consumers", {})).values())


class PipelineStateCollector(Collector):
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._counts: dict[str, int] = {}
        self._counted_at = 0.0
        self._refreshing = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        accounts = getattr(self.app.state, "accounts", None)
        if accounts is None:
            return
        readings = PipelineReadings(accounts)
        yield self._last_publish(readings)
        waiting = GaugeMetricFamily(
            "lifecycle_dead_letters_waiting",
            "Dead letters of the consumer group neither re-driven nor discarded.",
            labels=["group"],
        )
        for group, count in sorted(self._dead_letters(readings).items()):
            waiting.add_metric([group], count)
        yield waiting

    def _last_publish(self, readings: PipelineReadings) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "lifecycle_relay_last_publish_timestamp_seconds",
            "When the relay last published (moved its position), as a Unix time.",
            labels=["relay"],
        )
        stored = readings.relay_positions()
        for saved, (_, updated_at) in stored.items():
            family.add_metric([saved], updated_at.timestamp())
        # With Kafka off the relay thread keeps its position in memory, not in relay_position.
        relay = getattr(getattr(self.app.state, "workers", None), "relay", None)
        name, published_at = getattr(relay, "name", None), getattr(relay, "published_at", None)
        if isinstance(published_at, datetime) and name not in stored:
            family.add_metric([str(name)], published_at.timestamp())
        return family

    def _dead_letters(self, readings: PipelineReadings) -> dict[str, int]:
        settings = getattr(self.app.state, "settings", None)
        if settings is None:
            return {}
        topics = settings.topics
        if not settings.kafka_bootstrap:
            workers = getattr(self.app.state, "workers", None)
            # `lifecycle serve` holds an ElectedWorkers, which wraps the Workers it runs.
            publisher = getattr(getattr(workers, "workers", workers), "publisher", None)
            return {
                group: publisher.end_offset(topics.dlq(group)) if publisher is not None else 0
                for group in CONSUMER_GROUPS
            }
        if time.monotonic() - self._counted_at >= DEAD_LETTER_REFRESH_S and (
            self._refreshing.acquire(blocking=False)
        ):
            self._counted_at = time.monotonic()
            threading.Thread(
                target=self._refresh,
                args=(readings, settings.kafka_bootstrap, topics),
                name="metrics-dead-letters",
                daemon=True,
            ).start()
        return dict(self._counts)

    def _refresh(self, readings: PipelineReadings, bootstrap: str, topics: Any) -> None:
        from lifecycle.kafka.inspector import KafkaInspectorClient

        security = self.app.state.settings.kafka_security
        try:
            ranges = KafkaInspectorClient(bootstrap, topics, security=security).dead_letter_ranges()
            counts = {}
            for group, partitions in ranges.items():
                held = sum(end - begin for begin, end in partitions.values())
                handled = sum(
                    1
                    for partition, offset in readings.dead_letters_handled(topics.dlq(group))
                    if partition in partitions
                    and partitions[partition][0] <= offset < partitions[partition][1]
                )
                counts[group] = max(0, held - handled)
            self._counts = counts
        except Exception as error:
            log.warning("metrics.dead_letters_unknown", error_type=type(error).__name__)
        finally:
            self._refreshing.release()
