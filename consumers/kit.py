"""The consumer kit: what any downstream service needs to honour the lifecycle contract.

One loop, two sources (Kafka, or the in-process log when Kafka is off). For each record:

1. decode the CloudEvent; a record that breaks the contract goes to the dead letters at once;
2. skip it when its `ce_id` is in `processed_events` (delivery is at least once);
3. `handler.prepare(envelope)`: idempotent steps that cannot share a transaction (a mail);
4. one transaction: insert the `ce_id` mark, `handler.handle(envelope, cursor)`, and the
   records it wants sent (confirmations) into the `outbox`: effect, mark and confirmation
   commit together or not at all;
5. publish the outbox and delete what the broker acknowledged;
6. only then commit the offset.

A crash anywhere repeats at most steps 2-6 for that record: the mark turns a repeat into a
skip, and the outbox left over is published on the next start with the same `ce_id`s.
Failures other than contract violations are retried with capped exponential backoff, a
bounded number of times; then the record goes to `<group>.dlq.v1` with its original key,
value and headers plus `dlq_*` headers naming the error's class and a code (never the
error's text, which may quote personal values), and the consumer moves on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from pydantic import ValidationError

from consumers.store import ConsumerStore, Outgoing
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.producer import Publisher
from lifecycle.logs import get_logger
from lifecycle.storage import Cursor
from schemas.contract import (
    ContractError,
    Envelope,
    ErasureConfirmedV1,
    PurgedV1,
    TopicNames,
    WithdrawalRequestedV1,
    decode_record,
    encode_erasure_confirmed,
)

DLQ_ERROR_TYPE = "dlq_error_type"
DLQ_ERROR_CODE = "dlq_error_code"
DLQ_HEADERS = (
    DLQ_ERROR_TYPE,
    DLQ_ERROR_CODE,
    "dlq_consumer_group",
    "dlq_source_topic",
    "dlq_source_partition",
    "dlq_source_offset",
    "dlq_attempts",
    "dlq_failed_at",
)

TopicPartitionKey = tuple[str, int]


# What handlers see and return


class PoisonRecord(Exception):  # noqa: N818 - the kit's published name
    """The record can never be handled; `code` is a stable, data-free reason for the DLQ."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class TransientError(Exception):
    """Not now, maybe later: the kit retries the record with backoff."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class AccountWithdrawnError(Exception):
    """A write path refused: the account is withdrawn, so nothing new is kept about it."""

    code = "account_withdrawn"


@dataclass(frozen=True)
class HandlerResult:
    outgoing: tuple[Outgoing, ...] = ()
    outcome: str = "applied"


class Handler(Protocol):
    """A service's reaction to one record. Subclass it to inherit the no-op `prepare`."""

    def prepare(self, envelope: Envelope) -> None:
        """Idempotent steps before the transaction (may run again after a crash or retry)."""
        return None

    def handle(self, envelope: Envelope, cursor: Cursor) -> HandlerResult:
        """The effect, inside the transaction that also marks the record processed."""
        ...


def erasure_confirmation(
    topics: TopicNames, account_id: UUID, service: str, rows_removed: int
) -> Outgoing:
    """The record that tells the lifecycle service this one holds nothing more (ids only)."""
    return Outgoing(
        topics.erasure_confirmed,
        encode_erasure_confirmed(
            ErasureConfirmedV1(
                account_id=account_id,
                service=service,
                rows_removed=rows_removed,
                confirmed_at=datetime.now(UTC),
            )
        ),
    )


def erase_on_withdrawal(
    data: object, erase: Callable[[UUID], int], topics: TopicNames, service: str
) -> HandlerResult | None:
    """The erasing part of a downstream handler: on WithdrawalRequested erase and confirm,
    on Purged erase whatever arrived since; None for any other event."""
    if isinstance(data, WithdrawalRequestedV1):
        removed = erase(data.account_id)
        return HandlerResult(
            (erasure_confirmation(topics, data.account_id, service, removed),), outcome="erased"
        )
    if isinstance(data, PurgedV1):
        erase(data.account_id)
        return HandlerResult(outcome="purged")
    return None


# Sources


@dataclass(frozen=True)
class Incoming:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: list[tuple[str, bytes]]
    value: bytes | None


class Source(Protocol):
    def poll(self, timeout_s: float) -> list[Incoming]: ...

    def commit(self, incoming: Incoming) -> None: ...

    def lag(self) -> dict[TopicPartitionKey, int]: ...

    def close(self) -> None: ...


class KafkaSource:
    """A group member: manual offset commits, earliest offset for a group that has none."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        *,
        client_id: str | None = None,
        **overrides: Any,
    ) -> None:
        from kafka import KafkaConsumer

        self.group_id = group_id
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=client_id or group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            allow_auto_create_topics=False,
            max_poll_records=100,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            **overrides,
        )
        self._consumer.subscribe(list(topics))

    def poll(self, timeout_s: float) -> list[Incoming]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        return [
            Incoming(
                record.topic,
                record.partition,
                record.offset,
                record.key,
                list(record.headers or []),
                record.value,
            )
            for batch in batches.values()
            for record in batch
        ]

    def commit(self, incoming: Incoming) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self._consumer.commit(
            {
                TopicPartition(incoming.topic, incoming.partition): OffsetAndMetadata(
                    incoming.offset + 1, "", -1
                )
            }
        )

    def lag(self) -> dict[TopicPartitionKey, int]:
        """Per assigned partition: end offset minus the group's committed position."""
        partitions = list(self._consumer.assignment())
        if not partitions:
            return {}
        ends = self._consumer.end_offsets(partitions)
        beginnings = self._consumer.beginning_offsets(partitions)
        lag: dict[TopicPartitionKey, int] = {}
        for tp in partitions:
            committed = self._consumer.committed(tp)
            position = beginnings[tp] if committed is None else committed
            lag[(tp.topic, tp.partition)] = max(0, ends[tp] - position)
        return lag

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class InProcessSource:
    """Kafka off: reads the in-process log of the same topics, one partition each."""

    def __init__(
        self, publisher: InProcessPublisher, topics: Sequence[str], *, max_records: int = 100
    ) -> None:
        self.publisher = publisher
        self.topics = list(topics)
        self.max_records = max_records
        self._next = dict.fromkeys(self.topics, 0)
        self._committed = dict.fromkeys(self.topics, 0)

    def poll(self, timeout_s: float) -> list[Incoming]:
        delivered = [
            item
            for topic in self.topics
            for item in self.publisher.read(topic, self._next[topic], max_records=self.max_records)
        ]
        if not delivered:
            first = self.topics[0]
            wait = timeout_s if len(self.topics) == 1 else min(timeout_s, 0.1)
            delivered = self.publisher.read(
                first, self._next[first], max_records=self.max_records, timeout_s=wait
            )
        for item in delivered:
            self._next[item.topic] = item.offset + 1
        return [
            Incoming(
                item.topic,
                0,
                item.offset,
                item.record.key,
                list(item.record.headers),
                item.record.value,
            )
            for item in delivered
        ]

    def commit(self, incoming: Incoming) -> None:
        self._committed[incoming.topic] = incoming.offset + 1

    def lag(self) -> dict[TopicPartitionKey, int]:
        return {
            (topic, 0): max(0, self.publisher.end_offset(topic) - self._committed[topic])
            for topic in self.topics
        }

    def close(self) -> None:
        return None


# The loop


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0


@dataclass
class Hooks:
    """Test seams: raise from one to simulate a crash at that point."""

    after_commit: Callable[[Envelope], None] | None = None
    before_offset_commit: Callable[[Incoming], None] | None = None


@dataclass
class Stats:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retries: int = 0
    published: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class Consumer:
    """Runs one handler over one source until stopped; see the module docstring."""

    def __init__(
        self,
        name: str,
        source: Source,
        store: ConsumerStore,
        handler: Handler,
        publisher: Publisher,
        *,
        dlq_topic: str,
        retry: RetryPolicy | None = None,
        hooks: Hooks | None = None,
        poll_timeout_s: float = 0.5,
        lag_interval_s: float = 1.0,
    ) -> None:
        self.name = name
        self.source = source
        self.store = store
        self.handler = handler
        self.publisher = publisher
        self.dlq_topic = dlq_topic
        self.retry = retry or RetryPolicy()
        self.hooks = hooks or Hooks()
        self.poll_timeout_s = poll_timeout_s
        self.lag_interval_s = lag_interval_s
        self.stats = Stats()
        self._lag: dict[TopicPartitionKey, int] = {}
        self._lag_at = 0.0
        self._stats_lock = threading.Lock()
        self._log = get_logger(__name__).bind(consumer=name)

    # Metrics

    def lag(self) -> dict[TopicPartitionKey, int]:
        """Records behind, per topic partition, as of the loop's last refresh (thread-safe)."""
        with self._stats_lock:
            return dict(self._lag)

    def total_lag(self) -> int:
        return sum(self.lag().values())

    # Running

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; an exception from a hook ends the run like a crash."""
        self._log.info("consumer.started")
        try:
            if not self.flush_outbox(stop):
                return
            while not stop.is_set():
                try:
                    batch = self.source.poll(self.poll_timeout_s)
                except Exception as error:
                    self._log.error("consumer.poll_failed", error=type(error).__name__)
                    stop.wait(self.retry.initial_backoff_s)
                    continue
                for incoming in batch:
                    if stop.is_set() or not self.process(incoming, stop):
                        return
                    if self.hooks.before_offset_commit is not None:
                        self.hooks.before_offset_commit(incoming)
                    self._commit(incoming)
                self._refresh_lag()
        finally:
            try:
                self.source.close()
            finally:
                self._log.info("consumer.stopped", **self._counts())

    def process(self, incoming: Incoming, stop: threading.Event) -> bool:
        """Handle one record completely; False when stopped before it was done."""
        try:
            envelope = decode_record(incoming.headers, incoming.value)
        except ContractError as error:
            return self._dead_letter(incoming, error, "contract_violation", 1, stop)
        outcome = self._apply_with_retries(incoming, envelope, stop)
        if outcome is None:
            return False
        if outcome == "applied" and self.hooks.after_commit is not None:
            self.hooks.after_commit(envelope)
        return self.flush_outbox(stop)

    def _apply_with_retries(
        self, incoming: Incoming, envelope: Envelope, stop: threading.Event
    ) -> str | None:
        """'applied', 'duplicate' or 'dead-lettered'; None when stopped first."""
        backoff = self.retry.initial_backoff_s
        attempt = 0
        while True:
            attempt += 1
            failure: tuple[BaseException, str] | None = None
            try:
                return "applied" if self._apply(envelope) else "duplicate"
            except PoisonRecord as error:
                failure = (error, error.code)
            except ContractError as error:
                failure = (error, "contract_violation")
            except ValidationError as error:
                failure = (error, "validation_failed")
            except Exception as error:
                if attempt >= self.retry.max_attempts:
                    failure = (error, "retries_exhausted")
                else:
                    self._log.warning(
                        "consumer.retry",
                        ce_id=envelope.id,
                        error=type(error).__name__,
                        code=getattr(error, "code", None),
                        attempt=attempt,
                        retry_in_s=backoff,
                    )
                    with self._stats_lock:
                        self.stats.retries += 1
            if failure is not None:
                done = self._dead_letter(incoming, failure[0], failure[1], attempt, stop)
                return "dead-lettered" if done else None
            if stop.wait(backoff):
                return None
            backoff = min(backoff * 2, self.retry.max_backoff_s)

    def flush_outbox(self, stop: threading.Event) -> bool:
        """Publish what committed transactions left to send; retried until done or stopped."""
        backoff = self.retry.initial_backoff_s
        while True:
            try:
                pending = self.store.pending_outgoing()
                if not pending:
                    return True
                for item in pending:
                    record = item.record
                    self.publisher.publish(item.topic, record.key, record.headers, record.value)
                self.publisher.flush()
                self.store.delete_outgoing([item.row_id for item in pending])
                with self._stats_lock:
                    self.stats.published += len(pending)
                self._log.info("consumer.outbox_published", records=len(pending))
                backoff = self.retry.initial_backoff_s
            except Exception as error:
                self._log.warning(
                    "consumer.outbox_unpublished", error=type(error).__name__, retry_in_s=backoff
                )
                if stop.wait(backoff):
                    return False
                backoff = min(backoff * 2, self.retry.max_backoff_s)

    # One record

    def _apply(self, envelope: Envelope) -> bool:
        if self.store.is_processed(envelope.id):
            self._count(duplicate=True)
            return False
        self.handler.prepare(envelope)
        with self.store.transaction() as cursor:
            if not self.store.mark_processed(cursor, envelope.id):
                duplicate = True
            else:
                duplicate = False
                result = self.handler.handle(envelope, cursor)
                self.store.add_outgoing(cursor, result.outgoing)
        if duplicate:
            self._count(duplicate=True)
            return False
        self._count(outcome=result.outcome)
        self._log.info(
            "consumer.applied",
            ce_id=envelope.id,
            ce_type=envelope.type,
            outcome=result.outcome,
            outgoing=len(result.outgoing),
        )
        return True

    def _dead_letter(
        self,
        incoming: Incoming,
        error: BaseException,
        code: str,
        attempts: int,
        stop: threading.Event,
    ) -> bool:
        headers = [
            *incoming.headers,
            (DLQ_ERROR_TYPE, type(error).__name__.encode()),
            (DLQ_ERROR_CODE, code.encode()),
            ("dlq_consumer_group", self.name.encode()),
            ("dlq_source_topic", incoming.topic.encode()),
            ("dlq_source_partition", str(incoming.partition).encode()),
            ("dlq_source_offset", str(incoming.offset).encode()),
            ("dlq_attempts", str(attempts).encode()),
            ("dlq_failed_at", datetime.now(UTC).isoformat().encode()),
        ]
        backoff = self.retry.initial_backoff_s
        while True:
            try:
                self.publisher.publish(self.dlq_topic, incoming.key or b"", headers, incoming.value)
                self.publisher.flush()
                break
            except Exception as failure:
                self._log.warning(
                    "consumer.dead_letter_unpublished",
                    error=type(failure).__name__,
                    retry_in_s=backoff,
                )
                if stop.wait(backoff):
                    return False
                backoff = min(backoff * 2, self.retry.max_backoff_s)
        with self._stats_lock:
            self.stats.dead_lettered += 1
        self._log.error(
            "consumer.dead_lettered",
            topic=incoming.topic,
            partition=incoming.partition,
            offset=incoming.offset,
            error=type(error).__name__,
            code=code,
            attempts=attempts,
        )
        return True

    def _commit(self, incoming: Incoming) -> None:
        try:
            self.source.commit(incoming)
        except Exception as error:
            # Lost the partition (rebalance) or the broker: the record comes again, as a skip.
            self._log.warning(
                "consumer.commit_failed",
                error=type(error).__name__,
                topic=incoming.topic,
                partition=incoming.partition,
                offset=incoming.offset,
            )

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < self.lag_interval_s:
            return
        try:
            lag = self.source.lag()
        except Exception as error:
            self._log.warning("consumer.lag_unknown", error=type(error).__name__)
            return
        with self._stats_lock:
            self._lag, self._lag_at = lag, now

    def _count(self, *, duplicate: bool = False, outcome: str | None = None) -> None:
        with self._stats_lock:
            if duplicate:
                self.stats.duplicates += 1
            if outcome is not None:
                self.stats.applied += 1
                self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1

    def _counts(self) -> dict[str, int]:
        with self._stats_lock:
            return {
                "applied": self.stats.applied,
                "duplicates": self.stats.duplicates,
                "dead_lettered": self.stats.dead_lettered,
                "retries": self.stats.retries,
            }
