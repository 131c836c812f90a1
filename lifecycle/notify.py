"""Waking followers of the notification log when events are committed.

The library's PostgreSQL recorder runs `NOTIFY <channel>` in every transaction that inserts
events; PostgreSQL delivers it at commit. A `ListeningWaiter` holds `LISTEN <channel>` on a
connection of its own and returns from `wait()` as soon as one arrives, so the relay and the
read models act within milliseconds of a commit instead of a poll interval. The poll stays
as the fallback: `wait()` also returns after `poll_interval_s`, and when the listening
connection breaks it waits out that interval and listens again on a new one. On SQLite
(no NOTIFY) `LogWaiter` simply polls.

The connection listens from construction on, so a commit made while the caller reads the
log is queued there and ends the next `wait()` at once: nothing committed goes unnoticed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg.sql import SQL, Identifier

# How often a listening wait looks at `stop`.
STOP_CHECK_S = 0.1


class LogWaiter:
    """Blocks until the log may have grown: the poll interval passed, or stop was set."""

    def __init__(self, stop: threading.Event, poll_interval_s: float) -> None:
        self.stop = stop
        self.poll_interval_s = poll_interval_s

    def wait(self) -> bool:
        """Returns True when woken by a commit, False after the interval or on stop."""
        self.stop.wait(self.poll_interval_s)
        return False

    def reset(self) -> None:
        """Drop what the waiter holds (e.g. after a database failure); it recovers lazily."""
        return None

    def close(self) -> None:
        return None


class ListeningWaiter(LogWaiter):
    """LISTEN on the events table's channel, on a connection of its own."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        channel: str,
        stop: threading.Event,
        poll_interval_s: float,
    ) -> None:
        super().__init__(stop, poll_interval_s)
        configured = datastore.pool.kwargs
        kwargs: dict[str, Any] = dict(configured() if callable(configured) else configured or {})
        kwargs.pop("row_factory", None)
        self._connect_kwargs = kwargs
        self.channel = channel
        self._conn: psycopg.Connection[Any] | None = None
        self._listen()

    def _listen(self) -> psycopg.Connection[Any] | None:
        """The listening connection, (re)made when missing; None while the database is away."""
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.reset()
        try:
            conn = psycopg.connect(
                **self._connect_kwargs,
                autocommit=True,
                application_name="lifecycle-listen",
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
            conn.execute(SQL("LISTEN {0}").format(Identifier(self.channel)))
        except psycopg.Error:
            return None
        self._conn = conn
        return conn

    def wait(self) -> bool:
        deadline = time.monotonic() + self.poll_interval_s
        conn = self._listen()
        if conn is None:
            return super().wait()  # the fallback: poll; listen again next time
        try:
            while not self.stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Exhausted before draining: the generator holds the connection's lock.
                timeout = min(STOP_CHECK_S, remaining)
                woken = bool(list(conn.notifies(timeout=timeout, stop_after=1)))
                if woken:
                    self._drain(conn)
                    return True
        except psycopg.Error:
            self.reset()
            self.stop.wait(max(0.0, deadline - time.monotonic()))
        return False

    @staticmethod
    def _drain(conn: psycopg.Connection[Any]) -> None:
        """Many commits, one wake-up: the caller reads everything committed so far."""
        for _ in conn.notifies(timeout=0):
            pass

    def reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.close()

    def close(self) -> None:
        self.reset()


def waiter_for(recorder: object, stop: threading.Event, poll_interval_s: float) -> LogWaiter:
    """A listening waiter for a PostgreSQL application recorder, else a polling one."""
    if isinstance(recorder, PostgresApplicationRecorder):
        return ListeningWaiter(recorder.datastore, recorder.channel_name, stop, poll_interval_s)
    return LogWaiter(stop, poll_interval_s)
