"""What /readyz and /metrics answer from: state refreshed by background threads, never by a
request.

A readiness probe that opens a database connection or a Kafka admin client per call runs in
the request workers' pool: with the broker unreachable, 45 parallel probes (each waiting out
a 10 s client timeout) held up an authenticated member read for 9 s. Here each dependency is
checked by a thread of its own, at a fixed pace whatever the probe traffic, and /readyz reads
the last verdict in memory. A verdict older than `stale_after_s` (a check hung past its
timeouts) counts as not ready, so a stuck checker never reports a stale "ready".

The same holds for /metrics: `Refresher` recomputes the gauges that read the database (log
head, relay and projection positions, erasures by state, refused confirmations) every few
seconds, and a scrape only formats what it last found.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from lifecycle.logs import get_logger

T = TypeVar("T")

log = get_logger(__name__)


@dataclass(frozen=True)
class Verdict:
    """One dependency's last check: None when it answered, else a data-free detail."""

    problem: str | None


class Refresher(Generic[T]):
    """Runs `work` every `interval_s` on a daemon thread and keeps its last result.

    `latest()` returns (result, when it was computed) or None before the first run finished.
    A failing run keeps nothing new: the failure is what `on_error` turns into a result."""

    def __init__(
        self,
        name: str,
        work: Callable[[], T],
        interval_s: float,
        on_error: Callable[[BaseException], T] | None = None,
    ) -> None:
        self.name = name
        self._work = work
        self._on_error = on_error
        self.interval_s = interval_s
        self._latest: tuple[T, float] | None = None
        self._lock = threading.Lock()
        self._starting = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"refresh-{name}", daemon=True)

    def start(self) -> Refresher[T]:
        self._thread.start()
        return self

    def start_on_first_use(self) -> None:
        """The first call runs the work on the caller's thread, then starts the thread; later
        calls (and any call once stopped) do nothing. For a result only a reader needs: a
        process nobody reads never runs the work."""
        with self._starting:
            if self._thread.ident is not None or self._stop.is_set():
                return
            self.refresh()
            self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop, and wait a moment for a run in progress (a check waiting out an unreachable
        broker is left to finish on its daemon thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def latest(self) -> tuple[T, float] | None:
        with self._lock:
            return self._latest

    def refresh(self) -> None:
        """One run now, on the caller's thread (the first, at start-up)."""
        try:
            result = self._work()
        except Exception as error:
            if self._on_error is None:
                log.warning("refresh.failed", refresher=self.name, error=type(error).__name__)
                return
            result = self._on_error(error)
        with self._lock:
            self._latest = (result, time.monotonic())

    def _run(self) -> None:
        if self.latest() is not None:  # a run on the caller's thread at start-up was the first
            self._stop.wait(self.interval_s)
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval_s)


class Readiness:
    """Per dependency, a checker thread; `problem()` is what /readyz says (None: ready)."""

    def __init__(
        self,
        checks: dict[str, Callable[[], None]],
        *,
        interval_s: float = 1.0,
        stale_after_s: float = 30.0,
    ) -> None:
        self.stale_after_s = stale_after_s
        self._checkers: dict[str, Refresher[Verdict]] = {
            name: Refresher(
                f"ready-{name}", _verdict_of(check), interval_s, on_error=self._failing(name)
            )
            for name, check in checks.items()
        }

    def start(self) -> Readiness:
        for checker in self._checkers.values():
            checker.start()
        return self

    def stop(self) -> None:
        for checker in self._checkers.values():
            checker.stop()

    def refresh_first(self) -> None:
        """The first check of the first dependency (the database) on the caller's thread, at
        start-up: a server is ready as soon as it starts, without waiting a round."""
        for checker in list(self._checkers.values())[:1]:
            checker.refresh()

    def problem(self) -> str | None:
        """The first dependency that is not known to answer, as a detail; None when all do."""
        now = time.monotonic()
        for name, checker in self._checkers.items():
            latest = checker.latest()
            if latest is None:
                return f"{name} not checked yet"
            verdict, at = latest
            if now - at > self.stale_after_s:
                return f"{name} check overdue"
            if verdict.problem is not None:
                return verdict.problem
        return None

    def _failing(self, name: str) -> Callable[[BaseException], Verdict]:
        def failed(error: BaseException) -> Verdict:
            """Logged when the dependency was answering before (not every second)."""
            previous = self._checkers[name].latest()
            if previous is None or previous[0].problem is None:
                log.warning("not_ready", dependency=name, error_type=type(error).__name__)
            return Verdict(f"{name} does not answer")

        return failed


def _verdict_of(check: Callable[[], None]) -> Callable[[], Verdict]:
    def run() -> Verdict:
        check()
        return Verdict(None)

    return run
