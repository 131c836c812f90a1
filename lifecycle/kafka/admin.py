"""Create the contract's topics with explicit partitions and configs; safe to run again.

Erasure bounds on Kafka itself. The profile topic holds contact data, so a tombstone must
actually remove the older values: compaction never touches the active segment, so
`segment.ms` rolls it, `max.compaction.lag.ms` forces the cleaner to run on it, and
`delete.retention.ms` bounds how long the tombstone itself stays. Worst case a purged profile
is gone after about segment_ms + max_compaction_lag_ms (25 h with the defaults), inside the
72 h erasure deadline. Dead letters hold references to source records, never copies; their
retention only bounds how long those ids stay listed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from lifecycle.kafka.security import KafkaSecurity, client_config
from lifecycle.logs import get_logger
from schemas.contract import TopicNames

HOUR_MS = 60 * 60 * 1000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class TopicSettings:
    """Partitions, replication and the time bounds; tests shrink the times."""

    partitions: int = 3
    replication_factor: int = 1
    lifecycle_retention_ms: int = 7 * DAY_MS
    lifecycle_segment_ms: int = DAY_MS
    profile_segment_ms: int = HOUR_MS
    profile_max_compaction_lag_ms: int = DAY_MS
    profile_delete_retention_ms: int = DAY_MS
    confirmations_retention_ms: int = 14 * DAY_MS
    dead_letter_retention_ms: int = 2 * DAY_MS
    dead_letter_segment_ms: int = HOUR_MS
    # None: derived from the replication factor (see `min_insync_replicas`).
    min_insync_replicas_override: int | None = None

    @property
    def min_insync_replicas(self) -> int:
        """With 3 replicas, acks=all waits for 2 (one broker may be lost without refusing
        writes, and an acknowledged write survives the loss of any one); a single broker can
        only ask for 1."""
        if self.min_insync_replicas_override is not None:
            return self.min_insync_replicas_override
        return max(1, min(2, self.replication_factor - 1))


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


@dataclass(frozen=True)
class EnsureResult:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


def topic_specs(topics: TopicNames, settings: TopicSettings) -> list[TopicSpec]:
    """Every topic of the contract with the configs it is created with."""
    common = {"min.insync.replicas": str(settings.min_insync_replicas)}
    deleting = {**common, "cleanup.policy": "delete"}
    compacted = {
        **common,
        "cleanup.policy": "compact",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
        "segment.ms": str(settings.profile_segment_ms),
        "max.compaction.lag.ms": str(settings.profile_max_compaction_lag_ms),
        "delete.retention.ms": str(settings.profile_delete_retention_ms),
    }
    lifecycle = {
        **deleting,
        "retention.ms": str(settings.lifecycle_retention_ms),
        "segment.ms": str(settings.lifecycle_segment_ms),
    }
    confirmations = {
        **deleting,
        "retention.ms": str(settings.confirmations_retention_ms),
        "segment.ms": str(settings.lifecycle_segment_ms),
    }
    dead_letters = {
        **deleting,
        "retention.ms": str(settings.dead_letter_retention_ms),
        "segment.ms": str(settings.dead_letter_segment_ms),
    }

    def spec(name: str, configs: dict[str, str]) -> TopicSpec:
        return TopicSpec(name, settings.partitions, settings.replication_factor, configs)

    return [
        spec(topics.lifecycle, lifecycle),
        spec(topics.profile, compacted),
        *(spec(name, confirmations) for name in topics.confirmations.values()),
        # Export requests carry ids and a public key; parts are sealed to a key that expires.
        spec(topics.export_requested, confirmations),
        *(spec(name, confirmations) for name in topics.export_parts.values()),
        *(spec(name, dead_letters) for name in topics.dead_letters),
    ]


def ensure_topics(
    bootstrap: str,
    topics: TopicNames | None = None,
    settings: TopicSettings | None = None,
    *,
    timeout_ms: int = 30_000,
    bootstrap_timeout_ms: int = 5_000,
    security: KafkaSecurity | None = None,
) -> EnsureResult:
    """Create the topics that are missing; existing ones are left as they are. A broker that
    does not answer at all fails within `bootstrap_timeout_ms` (kafka-python waits 30 s)."""
    specs = topic_specs(topics or TopicNames(), settings or TopicSettings())
    log = get_logger(__name__)
    admin = KafkaAdminClient(
        **client_config(bootstrap, security),
        client_id="lifecycle-admin",
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=bootstrap_timeout_ms,
    )
    try:
        response: dict[str, Any] = admin.create_topics(
            {
                spec.name: {
                    "num_partitions": spec.partitions,
                    "replication_factor": spec.replication_factor,
                    "configs": spec.configs,
                }
                for spec in specs
            },
            timeout_ms=timeout_ms,
            raise_errors=False,
        )
        result = EnsureResult()
        for topic in response["topics"]:
            code = int(topic["error_code"])
            if code == 0:
                result.created.append(topic["name"])
            elif code == TopicAlreadyExistsError.errno:
                result.existing.append(topic["name"])
            else:
                raise KafkaError(
                    f"creating topic {topic['name']} failed: error {code} "
                    f"{topic.get('error_message') or ''}".strip()
                )
        if result.created:
            admin.wait_for_topics(result.created, timeout_ms=timeout_ms)
    finally:
        admin.close()
    log.info("kafka.topics_ensured", created=result.created, existing=result.existing)
    return result


def read_from_start(
    bootstrap: str,
    topics: Iterable[str],
    *,
    timeout_s: float = 30.0,
    security: KafkaSecurity | None = None,
) -> Iterator[Any]:
    """Every record still on the topics, from offset 0 to the end offsets as they are now.

    For audits and checks, not for consuming: no group, nothing committed.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**client_config(bootstrap, security), enable_auto_commit=False)
    try:
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"records still unread after {timeout_s}s")
            for records in consumer.poll(timeout_ms=500).values():
                yield from records
    finally:
        consumer.close()
