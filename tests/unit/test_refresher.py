"""The background refresh behind /readyz and /metrics: when it runs, and on which thread."""

from __future__ import annotations

import threading
import time

from support import wait_until

from lifecycle.api.readiness import Refresher


class Counted:
    def __init__(self) -> None:
        self.runs: list[tuple[str, float]] = []

    def __call__(self) -> int:
        self.runs.append((threading.current_thread().name, time.monotonic()))
        return len(self.runs)


def test_first_use_runs_once_on_the_callers_thread_then_the_thread_waits_an_interval() -> None:
    work = Counted()
    refresher = Refresher("t", work, interval_s=0.2)
    assert refresher.latest() is None and work.runs == []  # made, never run: nothing read
    try:
        refresher.start_on_first_use()
        refresher.start_on_first_use()
        assert [name for name, _ in work.runs] == [threading.current_thread().name]
        latest = refresher.latest()
        assert latest is not None and latest[0] == 1
        wait_until(lambda: len(work.runs) >= 2, "the thread's first run")
        (_, first), (thread, second) = work.runs[:2]
        assert thread == "refresh-t"
        assert second - first >= 0.2  # the caller's run counted as the first
    finally:
        refresher.stop()


def test_a_stopped_refresher_is_not_started_by_a_late_reader() -> None:
    work = Counted()
    refresher = Refresher("t", work, interval_s=60)
    refresher.stop()
    refresher.start_on_first_use()
    assert work.runs == [] and refresher.latest() is None
