"""Deleted rows leave no copy behind: at once, or soon after when the engine is busy.

`Database.after_erasure` asks its dialect to clean up after an erasure (SQLite: checkpoint the
write-ahead log and truncate it; PostgreSQL: VACUUM the tables). The dialect answers False when
it could not yet: a reader held SQLite's WAL through every wait, or this process vacuumed a
moment ago. The tables are then owed, and one background thread per database asks again on
the backoff policy until the cleanup is done or the database closes; an erasure in the
meantime takes the owed tables with its own. Without this, a purge made while a reader held
the WAL left the destroyed key's page image there until the next erasure came along.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from lifecycle.backoff import Backoff
from lifecycle.logs import get_logger

RETRY = Backoff(initial_s=0.05, max_s=2.0)


class ErasureCleanup:
    """The owed cleanup of one database; `clean(tables)` is its dialect's, True when done."""

    def __init__(self, clean: Callable[[list[str]], bool], backoff: Backoff = RETRY) -> None:
        self._clean = clean
        self._backoff = backoff
        self._lock = threading.Lock()  # one cleanup at a time; owed tables change under it
        self._owed: set[str] = set()
        self._retrying: threading.Thread | None = None
        self._closed = threading.Event()
        self._log = get_logger(__name__)

    @property
    def owed(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._owed)

    def after_erasure(self, tables: Iterable[str]) -> None:
        """Clean up now; a failure propagates, and the tables stay owed (retried)."""
        with self._lock:
            self._owed.update(tables)
            try:
                self._settle()
            finally:
                self._retry_if_owed()

    def close(self) -> None:
        self._closed.set()

    def _settle(self) -> bool:
        if not self._owed:
            return True
        tables = sorted(self._owed)
        done = self._clean(tables)
        if done:
            self._owed.difference_update(tables)
        return done

    def _retry_if_owed(self) -> None:
        if self._owed and self._retrying is None and not self._closed.is_set():
            self._retrying = threading.Thread(
                target=self._retry, name="erasure-cleanup", daemon=True
            )
            self._retrying.start()

    def _retry(self) -> None:
        delays = self._backoff.delays()
        while not delays.wait(self._closed):
            with self._lock:
                try:
                    if self._settle():
                        self._retrying = None
                        return
                except Exception as error:  # the database may be away: wait it out
                    self._log.warning("storage.cleanup_failed", error=type(error).__name__)
        with self._lock:
            self._retrying = None
