"""Follow the application's notification log and publish each Account event to Kafka.

The position is stored in `relay_position` in the application's own database, written only
after the publisher's flush succeeded: a restart resumes from it, so nothing is lost and
nothing is reordered. Delivery is at least once; a crash between flush and position write
republishes that batch with the same `ce_id`s, which consumers dedupe.

Idle, it waits for the next commit (`lifecycle.notify`: PostgreSQL's NOTIFY, the poll interval
as fallback), and each `relay.published` line says how long the batch's events waited from
commit to Kafka's acknowledgement (`commit_to_ack_ms`, newest event; `..._max_ms`, oldest).
With a backlog, the next page is read and encoded (`lifecycle.relay_page`, on a thread of its
own) while the one before is published; the position still moves only past acknowledged records.

One relay publishes at a time: on PostgreSQL it holds an advisory lock on a connection of its
own for as long as it runs; on SQLite an exclusive `flock` on a file beside the database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime

from consumers.faults import DependencyWait, infrastructure_fault
from lifecycle.application import Accounts
from lifecycle.backoff import Backoff, Delays
from lifecycle.kafka.producer import Publisher, PublishError
from lifecycle.logs import get_logger
from lifecycle.notify import waiter_for
from lifecycle.relay_page import Page, PageReader
from lifecycle.storage import Database, single_active_lock
from schemas.contract import TopicNames


class Relay:
    """Publishes Account events in notification order; `run()` until stopped."""

    def __init__(
        self,
        accounts: Accounts,
        publisher: Publisher,
        name: str = "kafka",
        *,
        topics: TopicNames | None = None,
        batch_size: int = 200,
        poll_interval_s: float = 0.5,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 5.0,
        observe_ack_latency: Callable[[float], None] | None = None,
    ) -> None:
        self.accounts = accounts
        self.publisher = publisher
        self.name = name
        self.topics = topics or TopicNames()
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.backoff = Backoff(initial_backoff_s, max_backoff_s)
        self.observe_ack_latency = observe_ack_latency
        self._db: Database = accounts.database
        self._table = self._db.table("relay_position")
        self._log = get_logger(__name__).bind(relay=name)
        # The dependency this relay is waiting for ("database", "broker"), None when working.
        self._wait = DependencyWait(self._log, "relay")
        self._lock = single_active_lock(self._db, "relay", name)
        self._pages = PageReader(accounts, self.topics, self._log)
        # The next page (its start, its read), read on a thread of its own while the one
        # before is published (a backlog); made when first needed.
        self._reader: ThreadPoolExecutor | None = None
        # close() may come from another thread while run() reads ahead (a stop whose join
        # timed out): the reader is made, used and shut down under this lock.
        self._reader_lock = threading.Lock()
        self._reading_stopped = False
        self._ahead: tuple[int, Future[Page | None]] | None = None
        # Read when first needed (constructors do no I/O): on taking the lock, or by `position`.
        self._position: int | None = None
        # When Kafka last acknowledged a batch of this relay (metrics; None: not yet).
        self.published_at: datetime | None = None

    # Metrics

    @property
    def position(self) -> int:
        """The last notification id whose records Kafka has acknowledged."""
        if self._position is None:
            self._position = self._load_position()
        return self._position

    @property
    def lag(self) -> int:
        """Notifications recorded but not yet published."""
        newest = self.accounts.recorder.max_notification_id() or 0
        return max(0, newest - self.position)

    @property
    def is_active(self) -> bool:
        """Holds the lock, so it is the relay that publishes."""
        return self._lock.held

    # Running

    def run_once(self) -> int:
        """Relay one batch; returns how many notifications the position moved past.

        Returns 0 without publishing while another relay holds the lock.
        """
        if not self._hold_lock():
            self._log.info("relay.standby", position=self._position)
            return 0
        return self._relay_batch()

    def run(self, stop: threading.Event) -> None:
        """Relay until `stop` is set: woken by each commit when idle (PostgreSQL NOTIFY,
        the poll interval as fallback), capped backoff on failures."""
        delays = self.backoff.delays()
        standby = False
        waiter = waiter_for(self.accounts.recorder, stop, self.poll_interval_s)
        try:
            while not stop.is_set():
                try:
                    if not self._hold_lock():
                        if not standby:
                            self._log.info("relay.standby", position=self._position)
                            standby = True
                        self._wait.recovered()
                        stop.wait(self.poll_interval_s)
                        continue
                    standby = False
                    processed = self._relay_batch()
                    self._wait.recovered()
                    delays.reset()
                    if processed < self.batch_size:
                        waiter.wait()
                except Exception as error:
                    self._waiting(error, delays.next_s)
                    self._back_off(stop, delays)
                    waiter.reset()
        finally:
            waiter.close()
            self._stop_reading()
            self._lock.release()
            self._log.info("relay.stopped", position=self._position)

    def _waiting(self, error: Exception, backoff: float) -> None:
        """A dependency down is waited out (`waiting_for` names it, for readiness); anything
        else is a bug, logged as a failure and retried the same way."""
        if isinstance(error, PublishError):
            dependency: str | None = "broker"
            event, cause = "relay.kafka_unreachable", error.cause
        else:
            dependency = infrastructure_fault(error)
            event, cause = "relay.database_unreachable", type(error).__name__
        if dependency is None:
            self._log.error(
                "relay.failed",
                error=type(error).__name__,
                position=self._position,
                retry_in_s=backoff,
            )
            return
        self._wait.waiting(
            dependency, event, error=cause, position=self._position, retry_in_s=backoff
        )

    @property
    def waiting_for(self) -> str | None:
        return self._wait.waiting_for

    def close(self) -> None:
        """Give up the lock (a standby relay takes over); the publisher stays the caller's.
        A page being read ahead is waited for, so nothing reads after the caller closes."""
        self._stop_reading(for_good=True)
        self._lock.release()

    def _stop_reading(self, *, for_good: bool = False) -> None:
        self._ahead = None
        with self._reader_lock:
            self._reading_stopped = self._reading_stopped or for_good
            if self._reader is not None:
                self._reader.shutdown(wait=True, cancel_futures=True)
                self._reader = None

    def _back_off(self, stop: threading.Event, delays: Delays) -> None:
        delays.wait(stop)
        self._ahead = None
        try:
            # Resume from what is recorded: whatever happened since was not acknowledged.
            self._position = self._load_position()
        except Exception as error:
            # The database is still away: the next attempt reads it again.
            self._log.warning("relay.position_unreadable", error=type(error).__name__)

    def _hold_lock(self) -> bool:
        if self._lock.held:
            if self._lock.alive():
                return True
            self._log.warning("relay.lock_lost", position=self._position)
            self._lock.release()
        if not self._lock.try_acquire():
            return False
        # Another relay may have moved on while this one stood by.
        self._ahead = None
        self._position = self._load_position()
        self._log.info("relay.active", position=self._position)
        return True

    # One batch

    def _relay_batch(self) -> int:
        page = self._take_ahead() or self._pages.read(self.position + 1, self.batch_size)
        if page is None:
            return 0
        if page.size == self.batch_size:
            # A backlog: the next page is read and encoded beside this one's publishing.
            self._read_ahead(page.last + 1)
        for topic, key, headers, value in page.records:
            self.publisher.publish(topic, key, headers, value)
        self.publisher.flush()
        acked = datetime.now(UTC)
        self._save_position(page.last)
        self._position = page.last
        self.published_at = acked
        latency = self._ack_latency(page.stamps, acked)
        self._log.info(
            "relay.published",
            first=page.first,
            position=page.last,
            notifications=page.size,
            records=len(page.records),
            **latency,
        )
        return page.size

    def _read_ahead(self, start: int) -> None:
        with self._reader_lock:
            if self._reading_stopped:  # closed: this batch is the last
                return
            if self._reader is None:
                self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"relay-{self.name}-read")
            self._ahead = (start, self._reader.submit(self._pages.read, start, self.batch_size))

    def _take_ahead(self) -> Page | None:
        """The page read ahead, if it starts where this batch does; None if there is none,
        or it failed (the batch reads it again and meets the failure where it is waited out)."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != self.position + 1:
            return None
        try:
            return ahead[1].result()
        except Exception as error:
            self._log.debug("relay.read_ahead_failed", error=type(error).__name__)
            return None

    def _ack_latency(self, stamps: list[datetime], acked: datetime) -> dict[str, float]:
        """From each event's commit (its timestamp, taken just before the commit) to Kafka's
        acknowledgement of its records: the batch's newest and oldest, in milliseconds."""
        if not stamps:
            return {}
        waits = [max(0.0, (acked - stamp).total_seconds()) for stamp in stamps]
        if self.observe_ack_latency is not None:
            for wait in waits:
                self.observe_ack_latency(wait)
        return {
            "commit_to_ack_ms": round(min(waits) * 1000, 1),
            "commit_to_ack_max_ms": round(max(waits) * 1000, 1),
        }

    # Position

    def _load_position(self) -> int:
        with self._db.transaction(commit=False) as cursor:
            row = cursor.execute(
                f"SELECT position FROM {self._table} WHERE name = %s", (self.name,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def _save_position(self, position: int) -> None:
        with self._db.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO {self._table} AS saved (name, position) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
                f"updated_at = {self._db.now} WHERE saved.position < excluded.position",
                (self.name, position),
            )
