"""Running read models: catch up from the notification log, follow it live, rebuild.

A `Projector` reads the application's notification log in batches (`select_notifications`,
never more than one batch in memory), decodes only the topics its read model reads, and
hands each batch to the read model's `record()`, which writes the view and the tracking
position in one transaction. Live, it waits with `lifecycle.notify` (PostgreSQL's NOTIFY on
commit, the poll as fallback; polling only on SQLite), as the relay does.

`rebuild()` replays one read model from position 0 into shadow tables while everything else
keeps running (writers, the live projector of the same read model), then swaps the shadow
tables in under a lock in one transaction. The live projector notices the moved position at
its next batch (compare-and-set) and continues from there, so nothing is applied twice. A
read model that `folds_streams` (each row one account's events alone: the directory) is
replayed account by account up to the head of the log (lifecycle.stored_fold, no event
objects), so each account's row is written once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import IntegrityError, Notification, Tracking

from consumers.faults import DependencyWait, infrastructure_fault
from lifecycle.application import Accounts
from lifecycle.backoff import Backoff
from lifecycle.crypto import PersonalDataMapper
from lifecycle.logs import get_logger
from lifecycle.notify import waiter_for
from lifecycle.probe import Probe
from lifecycle.storage import Cursor, Database
from lifecycle.stored_fold import StoredFold, heap_frozen, read_ahead, stream_pages
from projections.base import (
    APPLICATION_NAME,
    SHADOW_SUFFIX,
    Item,
    PositionMovedError,
    ReadModel,
    facts_mapper,
)

log = get_logger(__name__)

DEFAULT_BATCH = 500
# Waiting for the database: the first pause, and the longest.
BACKOFF = Backoff(initial_s=0.5, max_s=5.0)


# Progress


@dataclass
class Progress:
    """Events done out of the total known so far, with rate and ETA."""

    name: str
    start_position: int
    total: int
    done: int = 0
    position: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: bool = False

    @property
    def elapsed_s(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s

    @property
    def eta_s(self) -> float | None:
        remaining = max(self.total - self.done, 0)
        return remaining / self.rate if self.rate > 0 else None

    def line(self) -> str:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        eta = "-" if self.eta_s is None else f"{self.eta_s:.0f}s"
        state = "done" if self.finished else f"ETA {eta}"
        return (
            f"{self.name}: {self.done}/{self.total} events ({percent:.1f}%), "
            f"{self.rate:,.0f} events/s, {state}, position {self.position}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "done": self.done,
            "total": self.total,
            "position": self.position,
            "rate_per_s": round(self.rate, 1),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "elapsed_s": round(self.elapsed_s, 3),
            "finished": self.finished,
        }


ProgressSink = Callable[[Progress], None]


class ProgressPrinter:
    """Writes `Progress.line()` through `emit` at most every `interval_s`, and once at the end."""

    def __init__(self, emit: Callable[[str], None], interval_s: float = 2.0) -> None:
        self.emit = emit
        self.interval_s = interval_s
        self._last: float | None = None

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if progress.finished or self._last is None or now - self._last >= self.interval_s:
            self._last = now
            self.emit(progress.line())


# Following the log


class Projector:
    """Keeps one read model up to date with the notification log."""

    def __init__(
        self,
        accounts: Accounts,
        model: ReadModel,
        *,
        batch_size: int = DEFAULT_BATCH,
        progress: ProgressSink | None = None,
    ) -> None:
        self.accounts = accounts
        self.model = model
        self.batch_size = batch_size
        self.progress = progress
        self.recorder = accounts.recorder
        self.mapper = facts_mapper(accounts.mapper)
        self._topics = frozenset(model.topics)
        self._position = model.position()
        self._log = log.bind(projection=model.name + model.suffix)
        # "database" while the database is down and this projector waits for it; else None.
        self._wait = DependencyWait(self._log, "projection")

    @property
    def position(self) -> int:
        return self._position

    def head(self) -> int:
        return self.recorder.max_notification_id() or 0

    def lag(self) -> int:
        return max(0, self.head() - self._position)

    def run_batch(self, until: int | None = None) -> int | None:
        """Apply the next batch; returns how many notifications it held (0: caught up), or
        None when another runner had moved the position (it is reloaded)."""
        notifications = self.recorder.select_notifications(
            start=self._position, limit=self.batch_size, stop=until, inclusive_of_start=False
        )
        if not notifications:
            return 0
        items = [Item(n, self._decode(n)) for n in notifications]
        last = notifications[-1].id
        try:
            self.model.record(items, Tracking(APPLICATION_NAME, last), self._position)
        except (PositionMovedError, IntegrityError) as error:
            self._position = self.model.position()
            self._log.info(
                "projection.position_moved", error=type(error).__name__, position=self._position
            )
            return None
        self._position = last
        return len(notifications)

    def _decode(self, notification: Notification) -> Any | None:
        if not self.model.decodes_events or notification.topic not in self._topics:
            return None
        return self.mapper.to_domain_event(notification)

    def catch_up(self, stop: threading.Event | None = None, until: int | None = None) -> int:
        """Apply batches until the head of the log (or `until`); returns events applied."""
        progress = Progress(
            self.model.name + self.model.suffix,
            self._position,
            total=max(0, (until or self.head()) - self._position),
            position=self._position,
        )
        while stop is None or not stop.is_set():
            if until is not None and self._position >= until:
                break
            processed = self.run_batch(until)
            if processed == 0:
                break
            if processed is None:
                continue
            progress.done += processed
            progress.position = self._position
            if self.progress is not None:
                if progress.done >= progress.total:
                    progress.total = max(
                        progress.done, (until or self.head()) - progress.start_position
                    )
                self.progress(progress)
        progress.finished = True
        progress.total = max(progress.total, progress.done)
        if self.progress is not None:
            self.progress(progress)
        return progress.done

    def run(self, stop: threading.Event, poll_interval_s: float = 1.0) -> None:
        """Catch up, then follow the log live until `stop` is set; a database that is down
        is waited out with capped backoff (`waiting_for` says so), then it goes on."""
        waiter = waiter_for(self.recorder, stop, poll_interval_s)
        delays = BACKOFF.delays()
        self._log.info("projection.started", position=self._position)
        try:
            while not stop.is_set():
                try:
                    applied = self.catch_up(stop)
                    self._wait.recovered()
                    delays.reset()
                    if applied:
                        self._log.info("projection.caught_up", position=self._position)
                    waiter.wait()
                except Exception as error:
                    self._waiting(error, delays.next_s)
                    delays.wait(stop)
                    waiter.reset()
                    try:
                        self._position = self.model.position()
                    except Exception as reload_error:
                        self._waiting(reload_error, delays.next_s)
        finally:
            waiter.close()
            self._log.info("projection.stopped", position=self._position)

    def _waiting(self, error: Exception, backoff: float) -> None:
        dependency = infrastructure_fault(error)
        if dependency is None:
            self._log.error(
                "projection.failed",
                error=type(error).__name__,
                position=self._position,
                retry_in_s=backoff,
            )
            return
        self._wait.waiting(
            dependency,
            "projection.waiting",
            error=type(error).__name__,
            position=self._position,
            retry_in_s=backoff,
        )

    @property
    def waiting_for(self) -> str | None:
        return self._wait.waiting_for


def run_all(
    accounts: Accounts,
    models: Iterable[ReadModel],
    stop: threading.Event,
    *,
    probe: Probe | None = None,
    **options: Any,
) -> None:
    """One thread per read model, each catching up then following, until `stop` is set;
    `probe` is ready while none of them waits for a dependency."""
    projectors = [Projector(accounts, model, **options) for model in models]
    if probe is not None:
        probe.watch(*projectors)
    threads = [
        threading.Thread(
            target=projector.run,
            args=(stop,),
            name=f"projection-{projector.model.name}",
            daemon=True,
        )
        for projector in projectors
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# Rebuilding


@dataclass(frozen=True)
class RebuildResult:
    name: str
    events: int
    position: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "events": self.events,
            "position": self.position,
            "seconds": round(self.seconds, 3),
        }


class RebuildCancelledError(Exception):
    pass


def rebuild(
    accounts: Accounts,
    model_class: type[ReadModel],
    *,
    batch_size: int = 1000,
    progress: ProgressSink | None = None,
    stop: threading.Event | None = None,
) -> RebuildResult:
    """Replay one read model from position 0 into shadow tables, then swap them in."""
    database = accounts.database
    started = time.monotonic()
    shadow = model_class(database, suffix=SHADOW_SUFFIX)
    shadow.drop()
    shadow.create()
    with heap_frozen():
        if shadow.folds_streams:
            events = _replay_streams(accounts, shadow, batch_size, progress, stop)
        else:
            replayed = Projector(accounts, shadow, batch_size=batch_size, progress=progress)
            events = replayed.catch_up(stop)
    if stop is not None and stop.is_set():
        shadow.drop()
        raise RebuildCancelledError(model_class.name)
    live = model_class(database)
    live.create()
    try:
        swap(shadow, live)
    except BaseException:
        shadow.drop()
        raise
    # What arrived between the replay's last batch and the swap.
    follow = Projector(accounts, live, batch_size=batch_size)
    events += follow.catch_up(stop)
    result = RebuildResult(model_class.name, events, follow.position, time.monotonic() - started)
    log.info("projection.rebuilt", **result.as_dict())
    return result


def _replay_streams(
    accounts: Accounts,
    shadow: ReadModel,
    batch_size: int,
    progress: ProgressSink | None,
    stop: threading.Event | None,
) -> int:
    """The log up to its head now, account by account (lifecycle.stored_fold: stored states
    decoded without event objects, personal values never opened), each batch of whole streams
    written in one transaction with one statement per account; the position moves to that
    head with the last batch. What arrives meanwhile is the follow-up's (`rebuild`)."""
    mapper = accounts.mapper
    assert isinstance(mapper, PersonalDataMapper)
    folder = StoredFold(mapper, opened=False)
    head = accounts.recorder.max_notification_id() or 0
    topics = frozenset(shadow.topics)
    done = Progress(shadow.name + shadow.suffix, 0, total=head)
    for streams in read_ahead(stream_pages(accounts.database, page=batch_size, until=head)):
        if stop is not None and stop.is_set():
            return done.done
        events = [
            (topic, folder.facts(originator_id, version, topic, state))
            for stream in streams
            for originator_id, version, topic, state in stream
            if topic in topics
        ]
        shadow.record_folded(events)
        done.done += sum(len(stream) for stream in streams)
        if progress is not None:
            progress(done)
    if head:
        shadow.record_folded([], position=head)
    done.position, done.finished, done.total = head, True, max(done.total, done.done)
    if progress is not None:
        progress(done)
    return done.done


def swap(shadow: ReadModel, live: ReadModel) -> None:
    """Replace the live tables by the shadow ones, in one transaction."""
    database = shadow.database
    suffix = shadow.suffix
    live_tracking = database.table(live.tracking_table)
    with database.ddl() as cursor:
        # The tracking table first, as every projector's transaction takes it first.
        database.dialect.lock_table(cursor, live_tracking)
        shadow.before_swap(cursor, live)
        for table in live.physical_tables:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
        for table in shadow.physical_tables:
            bare = table.rsplit(".", 1)[-1]
            cursor.execute(f"ALTER TABLE {table} RENAME TO {bare.removesuffix(suffix)}")
        _rename_indexes(database, cursor, live, suffix)


def _rename_indexes(database: Database, cursor: Cursor, live: ReadModel, suffix: str) -> None:
    """Index names are unique per schema, so the shadow's get the live names back."""
    bare_tables = [table.rsplit(".", 1)[-1] for table in live.physical_tables]
    database.dialect.rename_indexes(cursor, database.schema, bare_tables, suffix)
