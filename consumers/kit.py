"""The consumer kit: what any downstream service needs to honour the lifecycle contract.

One loop over a source (`lifecycle.kafka.source`: Kafka, or the in-process log). Per poll batch:

1. decode each CloudEvent; a record that breaks the contract goes to the dead letters at once;
2. skip those whose (source, type, id) is in `processed_events` (delivery is at least once),
   one query, made only for a handler with a `prepare` that must not run again (for any
   other, step 4's marks skip them in the same transaction): a record of another source or
   type never shadows a real one, and a record whose `ce_id` names another account than its
   `ce_subject` is refused as a contract breach;
3. `handler.prepare_many(envelopes)`: idempotent steps that cannot share a transaction
   (a mail); a handler's `commits_before_prepare` says which must see earlier records committed;
4. one transaction: the `ce_id` marks, `handler.handle_many(envelopes, cursor)` and the records
   they want sent (confirmations) into the `outbox`: all commit together or not at all;
5. publish the records step 4 kept, held in memory (`consumers.outbox`: the table is read only
   at start, after a step 4 whose commit is in doubt, and every `outbox_check_interval_s`), and
   delete their rows once the broker acknowledged them;
6. only then commit, once per partition, the offset after the batch's last record, without
   waiting for the broker's answer (`Source.commit`): the next poll starts at once. A commit
   lost that way only brings records again, which the marks skip; then, after a batch that
   erased personal rows, the store's `after_erasure` (off the confirmation's path).

A crash anywhere repeats at most steps 2-6 for that batch: the marks turn repeats into skips,
and the outbox left over is published on the next start with the same `ce_id`s.

A dependency that is down is waited out, with no attempt limit, while `waiting_for` names it
(readiness reads `healthy`). When a record fails for any other reason, the batch is retried
record by record, so only the culprit goes to `<group>.dlq.v1` (`consumers.faults`) as a
reference to the source record (topic, partition, offset, error), never a copy of its value.
SIGTERM finishes and commits the batch in hand (cutting short only a wait for a dependency).
Steps 1, 3 and 4 are `consumers.batch`'s; between polls, marks older than `mark_retention`
are forgotten (`sweep_marks`), so `processed_events` stays bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from consumers.batch import Decoded, apply_records, decode_batch, transaction_runs
from consumers.faults import (
    DependencyWait,
    RetryPolicy,
    dead_letter_record,
    infrastructure_fault,
    record_fault_code,
)
from consumers.handler import Handler
from consumers.outbox import Outbox
from consumers.stats import Stats
from consumers.store import ConsumerStore
from lifecycle import tracing
from lifecycle.kafka.producer import Publisher
from lifecycle.kafka.source import (
    Incoming,
    Source,
    TopicPartitionKey,
    finished_prefix,
    next_offsets,
)
from lifecycle.logs import get_logger
from schemas.contract import ContractError, Envelope, dedupe_key

T = TypeVar("T")

# How long a `processed_events` mark is kept: longer than any input topic keeps a record
# (lifecycle 7 days, confirmations 14; the profile topic is compacted, and a profile applied
# twice is harmless), so a record that can still be redelivered is still recognised.
MARK_RETENTION = timedelta(days=30)
MARK_SWEEP_PAGE = 1000


# The loop


@dataclass
class Hooks:
    """Test seams: raise from one to simulate a crash at that point."""

    after_commit: Callable[[Envelope], None] | None = None
    before_offset_commit: Callable[[Incoming], None] | None = None


def looks_up_marks(handler: Handler) -> bool:
    """Whether the loop looks a batch's marks up before its transaction: when the handler has
    steps of its own before it (`prepare`) that must not run again for a record handled
    before; not when it says they may (`prepare_repeats_harmlessly`: they find what was done
    and do nothing twice)."""
    kind = type(handler)
    prepares = (
        getattr(kind, "prepare", Handler.prepare) is not Handler.prepare
        or getattr(kind, "prepare_many", Handler.prepare_many) is not Handler.prepare_many
    )
    return prepares and not getattr(handler, "prepare_repeats_harmlessly", False)


class Stopped(Exception):  # noqa: N818 - control flow, never leaves the loop
    """The stop event was set while waiting for a dependency."""


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
        mark_retention: timedelta = MARK_RETENTION,
        sweep_interval_s: float = 600.0,
        outbox_check_interval_s: float = 30.0,
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
        self.mark_retention = mark_retention
        self.sweep_interval_s = sweep_interval_s
        self._swept_at: float | None = None
        self.stats = Stats()
        self._lag: dict[TopicPartitionKey, int] = {}
        self._lag_at = 0.0
        self._lag_lock = threading.Lock()
        self._log = get_logger(__name__).bind(consumer=name)
        self.outbox = Outbox(
            store, publisher, self.stats, self._log, check_interval_s=outbox_check_interval_s
        )
        self._wait = DependencyWait(self._log, "consumer")
        self._looks_up_marks = looks_up_marks(handler)
        self._spans: tracing.RecordSpans | None = None  # the batch's, while tracing is on

    # Health and metrics

    @property
    def waiting_for(self) -> str | None:
        """The dependency this consumer waits for (database, broker, smtp); None when working."""
        return self._wait.waiting_for

    @property
    def healthy(self) -> bool:
        """False while a dependency is down (`waiting_for` names it): for readiness probes."""
        return self.waiting_for is None

    def lag(self) -> dict[TopicPartitionKey, int]:
        """Records behind, per topic partition, as of the loop's last refresh (thread-safe)."""
        with self._lag_lock:
            return dict(self._lag)

    def total_lag(self) -> int:
        return sum(self.lag().values())

    # Running

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished and committed first.

        An exception from a hook ends the run like a crash."""
        self._log.info("consumer.started")
        try:
            self._until_done(self.flush_outbox, stop, "outbox", always=True)
            while not stop.is_set():
                batch = self._until_done(
                    lambda: self.source.poll(self.poll_timeout_s), stop, "poll", always=True
                )
                if batch:
                    self.process_batch(batch, stop)
                self._check_outbox(stop)
                self._refresh_lag()
                self._sweep_marks()
        except Stopped:
            pass
        finally:
            try:
                self.source.close()
            finally:
                self._log.info("consumer.stopped", **self.stats.summary())

    def process_batch(self, batch: Sequence[Incoming], stop: threading.Event) -> None:
        """Handle a poll's records, then commit each partition's offset once, for what is done.

        Interrupted by `stop` while waiting for a dependency, it commits the records finished
        so far (offsets never pass an effect) and raises `Stopped`."""
        finished: set[int] = set()
        self._spans = tracing.record_spans(self.name)
        try:
            if self._spans is not None:
                self._spans.start_all(batch)
            self._handle_batch(batch, finished, stop)
        except Stopped:
            self._commit_finished(batch, finished, stop)
            raise
        finally:
            if self._spans is not None:
                self._spans.end()
                self._spans = None
        self._commit_finished(batch, finished, stop)

    def _commit_finished(
        self, batch: Sequence[Incoming], finished: set[int], stop: threading.Event
    ) -> None:
        done = finished_prefix(batch, finished)
        self.stats.count(batch=True)
        if not done:
            return
        self._until_done(self.outbox.publish_kept, stop, "outbox", always=True)
        for incoming in done:
            if self.hooks.before_offset_commit is not None:
                self.hooks.before_offset_commit(incoming)
        self._commit(done)
        self.outbox.after_erasure()

    def _handle_batch(
        self, batch: Sequence[Incoming], finished: set[int], stop: threading.Event
    ) -> None:
        """Adds to `finished` the index of each record once it is handled completely."""
        decoded = decode_batch(batch)
        known: set[str] = set()
        if self._looks_up_marks:  # else the transaction's marks alone skip repeats
            known = self._until_done(
                lambda: self.store.processed_among(
                    [dedupe_key(e) for _, e in decoded if isinstance(e, Envelope)]
                ),
                stop,
                "dedupe",
            )
        todo: list[Decoded] = []
        for index, item in decoded:
            if isinstance(item, Envelope) and dedupe_key(item) in known:
                self.stats.count(duplicate=True)
                finished.add(index)
            else:
                if isinstance(item, Envelope):
                    known.add(dedupe_key(item))
                todo.append((index, item))
        for segment in transaction_runs(self.handler, todo):
            first, item = segment[0]
            if isinstance(item, ContractError):
                self._dead_letter(batch[first], item, "contract_violation", 1, stop)
                finished.add(first)
                continue
            envelopes = [e for _, e in segment if isinstance(e, Envelope)]
            applied = self._apply_segment(envelopes, stop)
            if applied is None:
                applied = []
                for index, envelope in zip((i for i, _ in segment), envelopes, strict=True):
                    applied += self._apply_one(batch[index], envelope, stop)  # poison alone
                    finished.add(index)
            finished.update(index for index, _ in segment)
            if self.hooks.after_commit is not None:
                for envelope in applied:
                    self.hooks.after_commit(envelope)

    def _apply_segment(
        self, envelopes: list[Envelope], stop: threading.Event
    ) -> list[Envelope] | None:
        """Prepare each, then one transaction for every mark, effect and confirmation.

        The records applied; None when one failed for a reason of its own (the caller then
        retries them singly)."""
        try:
            return self._until_done(lambda: self._apply(envelopes), stop, "apply")
        except Stopped:
            raise
        except Exception as error:
            self._log.warning(
                "consumer.batch_failed", records=len(envelopes), error=type(error).__name__
            )
            return None

    def _apply_one(
        self, incoming: Incoming, envelope: Envelope, stop: threading.Event
    ) -> list[Envelope]:
        """One record in its own transaction; retried, then dead-lettered if it is at fault."""
        attempt = 0
        delays = self.retry.backoff.delays()
        while True:
            attempt += 1
            try:
                return self._until_done(lambda: self._apply([envelope]), stop, "apply")
            except Stopped:
                raise
            except Exception as error:
                code = record_fault_code(error)
                if code is None and attempt < self.retry.max_attempts:
                    self._log.warning(
                        "consumer.retry",
                        ce_id=envelope.id,
                        error=type(error).__name__,
                        code=getattr(error, "code", None),
                        attempt=attempt,
                        retry_in_s=delays.next_s,
                    )
                    self.stats.count(retry=True)
                    if delays.wait(stop):
                        raise Stopped() from None
                    continue
                self._dead_letter(incoming, error, code or "retries_exhausted", attempt, stop)
                return []

    def _until_done(
        self, work: Callable[[], T], stop: threading.Event, step: str, *, always: bool = False
    ) -> T:
        """`work()`, repeated with backoff while a dependency is unavailable, for as long as
        it takes; `Stopped` when `stop` is set meanwhile. Any other failure is raised, unless
        `always` (a step with no record to blame: polling, publishing)."""
        delays = self.retry.backoff.delays()
        while True:
            try:
                result = work()
            except Exception as error:
                dependency = infrastructure_fault(error) or ("broker" if always else None)
                if dependency is None:
                    raise
                self._wait_for(dependency, error, step, delays.next_s)
                if delays.wait(stop):
                    raise Stopped() from None
                continue
            self._wait.recovered()
            return result

    def _wait_for(self, dependency: str, error: BaseException, step: str, backoff: float) -> None:
        self.stats.count(retry=True, wait=True)
        self._wait.waiting(
            dependency,
            "consumer.waiting",
            step=step,
            error=type(error).__name__,
            retry_in_s=backoff,
        )

    def flush_outbox(self) -> None:
        """Publish every row the outbox table holds, then delete them."""
        self.outbox.flush()

    def _check_outbox(self, stop: threading.Event) -> None:
        """Every `outbox_check_interval_s`, the outbox table read and published
        (`consumers.outbox`)."""
        if self.outbox.due:
            self._until_done(self.outbox.flush, stop, "outbox", always=True)

    def _apply(self, envelopes: list[Envelope]) -> list[Envelope]:
        """Steps 3 and 4 (`consumers.batch.apply_records`), counted and logged."""
        spans = self._spans
        try:
            applied, kept = apply_records(
                self.handler,
                self.store,
                envelopes,
                None if spans is None else (lambda envelope: spans.headers_for(envelope.id)),
            )
        except BaseException:
            self.outbox.in_doubt()
            raise
        self.outbox.keep(kept)
        for _ in range(len(envelopes) - len(applied)):
            self.stats.count(duplicate=True)  # another member marked it since the dedupe check
        for envelope, result in applied:
            self.stats.count(outcome=result.outcome)
            self._log.debug(
                "consumer.applied",
                ce_id=envelope.id,
                ce_type=envelope.type,
                outcome=result.outcome,
                outgoing=len(result.outgoing),
            )
        return [envelope for envelope, _ in applied]

    def _dead_letter(
        self,
        incoming: Incoming,
        error: BaseException,
        code: str,
        attempts: int,
        stop: threading.Event,
    ) -> None:
        """A reference to `incoming` on the dead-letter topic, never a copy of its value."""
        letter = dead_letter_record(incoming, error, code, attempts, self.name)

        def publish() -> None:
            self.publisher.publish(self.dlq_topic, letter.key, letter.headers, letter.value)
            self.publisher.flush()

        self._until_done(publish, stop, "dead_letter", always=True)
        self.stats.count(dead_lettered=1)
        self._log.error(
            "consumer.dead_lettered",
            topic=incoming.topic,
            partition=incoming.partition,
            offset=incoming.offset,
            error=type(error).__name__,
            code=code,
            attempts=attempts,
        )

    def _commit(self, records: Sequence[Incoming]) -> None:
        offsets = next_offsets(records)
        try:
            self.source.commit(offsets)
        except Exception as error:
            # Lost the partition (rebalance) or the broker: the records come again, as skips,
            # unless a later batch's commit covers them first.
            self._log.warning(
                "consumer.commit_failed", error=type(error).__name__, partitions=len(offsets)
            )

    def sweep_marks(self, rounds: int = 10) -> int:
        """Forget the `processed_events` marks older than `mark_retention`, a page at a time
        (at most `rounds` pages, so a long backlog never stalls the loop); how many."""
        before = datetime.now(UTC) - self.mark_retention
        forgotten = 0
        for _ in range(rounds):
            removed = self.store.forget_processed(before, limit=MARK_SWEEP_PAGE)
            forgotten += removed
            if removed < MARK_SWEEP_PAGE:
                break
        if forgotten:
            self._log.info("consumer.marks_forgotten", marks=forgotten)
        return forgotten

    def _sweep_marks(self) -> None:
        now = time.monotonic()
        if self._swept_at is not None and now - self._swept_at < self.sweep_interval_s:
            return
        self._swept_at = now
        try:
            self.sweep_marks()
        except Exception as error:  # the next sweep tries again; nothing depends on this one
            self._log.warning("consumer.sweep_failed", error=type(error).__name__)

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < self.lag_interval_s:
            return
        try:
            lag = self.source.lag()
        except Exception as error:
            self._log.warning("consumer.lag_unknown", error=type(error).__name__)
            return
        with self._lag_lock:
            self._lag, self._lag_at = lag, now
