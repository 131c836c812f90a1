"""What operators look at on Kafka: consumer-group lag and dead letters, and re-publishing one.

A dead letter is a reference (`consumers.faults`): re-drive reads the original record at its
source topic, partition and offset (`source_record`), which is None once the source topic's
compaction or retention erased it. No value read here is ever handed to a listing.

Every topic and group name comes from the `TopicNames` given (so from the configured prefix);
the groups are the contract's `CONSUMER_GROUPS`. Failures to reach the brokers are raised as
`BrokerUnavailableError`, which the HTTP API answers with 503.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from lifecycle.kafka.security import KafkaSecurity, client_config
from schemas.contract import CONSUMER_GROUPS, TopicNames

CLIENT_ID = "lifecycle-admin-api"


class BrokerUnavailableError(Exception):
    """The brokers did not answer, refused a record, or Kafka is not configured."""


def header_of(headers: list[tuple[str, bytes]], name: str) -> str | None:
    """A header's value as text (the first of that name), or None."""
    for key, value in headers:
        if key == name and value is not None:
            return value.decode(errors="replace")
    return None


@dataclass(frozen=True)
class DeadLetter:
    """One record on a dead-letter topic, as listed: its value is never kept, only its size
    (dead letters written since they became references have none)."""

    group: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    headers: list[tuple[str, bytes]]
    value_bytes: int

    def header(self, name: str) -> str | None:
        return header_of(self.headers, name)

    def source(self) -> tuple[str, int, int] | None:
        """The source record it refers to: (topic, partition, offset), when its headers say."""
        topic = self.header("dlq_source_topic")
        partition = self.header("dlq_source_partition")
        offset = self.header("dlq_source_offset")
        if not topic or not partition or not offset:
            return None
        if not partition.isdigit() or not offset.isdigit():
            return None
        return topic, int(partition), int(offset)


@dataclass(frozen=True)
class SourceRecord:
    """The original record a dead letter refers to, read back for re-drive."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: list[tuple[str, bytes]]
    value: bytes | None

    def header(self, name: str) -> str | None:
        return header_of(self.headers, name)


class KafkaInspector(Protocol):
    """What the admin routes need from Kafka; `NoKafka` when it is not configured."""

    configured: bool
    topics: TopicNames

    def check(self) -> None:
        """Raise BrokerUnavailableError when the brokers do not answer."""

    def group_lag(self) -> list[dict[str, Any]]:
        """Per consumer group of the contract: committed offsets, end offsets and lag."""
        ...

    def dead_letters(self, group: str, limit: int, skip: set[tuple[int, int]]) -> list[DeadLetter]:
        """Records on the group's dead-letter topic, oldest first, except those in `skip`."""
        ...

    def dead_letter(self, group: str, partition: int, offset: int) -> DeadLetter | None: ...

    def source_record(self, topic: str, partition: int, offset: int) -> SourceRecord | None:
        """The record at that offset, or None when it is gone (compacted, past retention)."""
        ...

    def superseded(self, record: SourceRecord) -> bool:
        """True when a later record of the same key follows it on its partition (on a
        compacted topic, re-publishing the older one would make it the key's latest)."""
        ...

    def publish(self, topic: str, key: bytes, headers: list[tuple[str, bytes]], value: Any) -> None:
        """Publish one record and wait for the broker's acknowledgement."""


class NoKafka:
    """Kafka not configured: nothing to inspect, and nothing can be published."""

    configured = False

    def __init__(self, topics: TopicNames) -> None:
        self.topics = topics

    def check(self) -> None:
        return None

    def group_lag(self) -> list[dict[str, Any]]:
        return []

    def dead_letters(self, group: str, limit: int, skip: set[tuple[int, int]]) -> list[DeadLetter]:
        return []

    def dead_letter(self, group: str, partition: int, offset: int) -> DeadLetter | None:
        return None

    def source_record(self, topic: str, partition: int, offset: int) -> SourceRecord | None:
        return None

    def superseded(self, record: SourceRecord) -> bool:
        return False

    def publish(self, topic: str, key: bytes, headers: list[tuple[str, bytes]], value: Any) -> None:
        raise BrokerUnavailableError("Kafka is not configured")


class KafkaInspectorClient:
    """kafka-python, one short-lived client per call: admin actions are rare."""

    configured = True

    def __init__(
        self,
        bootstrap: str,
        topics: TopicNames,
        timeout_s: float = 10.0,
        security: KafkaSecurity | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.topics = topics
        self.timeout_ms = int(timeout_s * 1000)

    def _admin(self) -> Any:
        from kafka.admin import KafkaAdminClient

        return KafkaAdminClient(
            **client_config(self.bootstrap, self.security),
            client_id=CLIENT_ID,
            request_timeout_ms=self.timeout_ms,
            bootstrap_timeout_ms=self.timeout_ms,
        )

    def _consumer(self) -> Any:
        from kafka import KafkaConsumer

        return KafkaConsumer(
            **client_config(self.bootstrap, self.security),
            client_id=CLIENT_ID,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=self.timeout_ms + 1000,
            bootstrap_timeout_ms=self.timeout_ms,
        )

    def check(self) -> None:
        from kafka.errors import KafkaError

        try:
            admin = self._admin()
        except KafkaError as error:
            raise BrokerUnavailableError(f"Kafka unreachable ({type(error).__name__})") from None
        admin.close()

    def group_lag(self) -> list[dict[str, Any]]:
        from kafka.protocol.consumer.offsets import OffsetSpec

        groups = {self.topics.group_id(name): name for name in CONSUMER_GROUPS}
        admin = self._admin()
        try:
            committed: dict[str, dict[Any, Any]] = {}
            for group in groups:
                committed[group] = admin.list_group_offsets({group: None}).get(group, {})
            partitions = {tp for offsets in committed.values() for tp in offsets}
            ends = (
                admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
                if partitions
                else {}
            )
        finally:
            admin.close()
        result = []
        for group, service in groups.items():
            rows = []
            for tp, meta in sorted(committed[group].items()):
                end = int(ends[tp].offset) if tp in ends else None
                at = int(meta.offset)
                rows.append(
                    {
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "committed": at,
                        "end": end,
                        "lag": None if end is None or at < 0 else max(0, end - at),
                    }
                )
            result.append(
                {
                    "group": group,
                    "service": service,
                    "lag": sum(row["lag"] or 0 for row in rows),
                    "state": "ok" if rows else "no_committed_offsets",
                    "partitions": rows,
                }
            )
        return result

    def _partitions(self, consumer: Any, topic: str) -> list[Any]:
        from kafka import TopicPartition

        return [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]

    def _read(self, consumer: Any, partitions: list[Any], until: dict[Any, int]) -> Iterator[Any]:
        """Records up to the end offsets taken at the start, within the timeout."""
        deadline = time.monotonic() + self.timeout_ms / 1000
        remaining = {tp for tp in partitions if until[tp] > consumer.position(tp)}
        while remaining and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                for record in records:
                    if record.offset < until[tp]:
                        yield record
                if consumer.position(tp) >= until[tp]:
                    remaining.discard(tp)

    def dead_letters(self, group: str, limit: int, skip: set[tuple[int, int]]) -> list[DeadLetter]:
        topic = self.topics.dlq(group)
        consumer = self._consumer()
        try:
            partitions = self._partitions(consumer, topic)
            if not partitions:
                return []
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            ends = consumer.end_offsets(partitions)
            found: list[DeadLetter] = []
            for record in self._read(consumer, partitions, ends):
                if (record.partition, record.offset) in skip:
                    continue
                found.append(_dead_letter(group, record))
                if len(found) >= limit:
                    break
            return sorted(found, key=lambda d: (d.timestamp_ms or 0, d.partition, d.offset))
        finally:
            consumer.close()

    def dead_letter_ranges(self) -> dict[str, dict[int, tuple[int, int]]]:
        """Each group's dead-letter topic: per partition, the first offset still held and the
        end offset (two offset requests per topic, no record read)."""
        consumer = self._consumer()
        try:
            ranges: dict[str, dict[int, tuple[int, int]]] = {}
            for group in CONSUMER_GROUPS:
                partitions = self._partitions(consumer, self.topics.dlq(group))
                begins = consumer.beginning_offsets(partitions) if partitions else {}
                ends = consumer.end_offsets(partitions) if partitions else {}
                ranges[group] = {
                    tp.partition: (int(begins[tp]), int(ends[tp])) for tp in partitions
                }
            return ranges
        finally:
            consumer.close()

    def dead_letter(self, group: str, partition: int, offset: int) -> DeadLetter | None:
        record = self._record_at(self.topics.dlq(group), partition, offset)
        return None if record is None else _dead_letter(group, record)

    def source_record(self, topic: str, partition: int, offset: int) -> SourceRecord | None:
        record = self._record_at(topic, partition, offset)
        if record is None:
            return None
        return SourceRecord(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            headers=list(record.headers or []),
            value=record.value,
        )

    def superseded(self, record: SourceRecord) -> bool:
        from kafka import TopicPartition

        consumer = self._consumer()
        try:
            tp = TopicPartition(record.topic, record.partition)
            consumer.assign([tp])
            end = consumer.end_offsets([tp])[tp]
            consumer.seek(tp, record.offset + 1)
            later = self._read(consumer, [tp], {tp: end})
            found = any(other.key == record.key for other in later)
            if not found and consumer.position(tp) < end:
                raise BrokerUnavailableError("the partition could not be read in time")
            return found
        finally:
            consumer.close()

    def _record_at(self, topic: str, partition: int, offset: int) -> Any:
        """The record at exactly that offset; None when the partition does not hold it (any
        more): before the first offset (retention), or skipped over (compaction)."""
        from kafka import TopicPartition

        consumer = self._consumer()
        try:
            if partition not in (consumer.partitions_for_topic(topic) or ()):
                return None
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            end = consumer.end_offsets([tp])[tp]
            first = consumer.beginning_offsets([tp])[tp]
            if not first <= offset < end:
                return None
            consumer.seek(tp, offset)
            for record in self._read(consumer, [tp], {tp: offset + 1}):
                if record.offset == offset:
                    return record
            return None
        finally:
            consumer.close()

    def publish(self, topic: str, key: bytes, headers: list[tuple[str, bytes]], value: Any) -> None:
        from lifecycle.kafka.producer import KafkaPublisher, PublishError

        publisher = KafkaPublisher(self.bootstrap, client_id=CLIENT_ID, security=self.security)
        try:
            publisher.publish(topic, key, headers, value)
            publisher.flush()
        except PublishError as error:
            raise BrokerUnavailableError(f"Kafka refused the record ({error.cause})") from None
        finally:
            publisher.close()


def _dead_letter(group: str, record: Any) -> DeadLetter:
    return DeadLetter(
        group=group,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp if record.timestamp and record.timestamp > 0 else None,
        key=record.key,
        headers=list(record.headers or []),
        value_bytes=len(record.value or b""),
    )
