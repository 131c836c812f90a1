"""The one backoff policy (lifecycle.backoff) that every wait uses."""

from __future__ import annotations

import threading
import time

import pytest

from consumers.faults import RetryPolicy
from lifecycle.backoff import Backoff
from lifecycle.migrator import LOCK_RACE_BACKOFF


def schedule(policy: Backoff, waits: int) -> list[float]:
    delays = policy.delays()
    found = []
    stop = threading.Event()
    stop.set()  # every wait returns at once: only the schedule is under test
    for _ in range(waits):
        found.append(delays.next_s)
        assert delays.wait(stop) is True
    return found


def test_delays_double_up_to_the_cap_and_start_again_after_a_success() -> None:
    policy = Backoff(initial_s=0.5, max_s=5.0)
    assert schedule(policy, 6) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    delays = policy.delays()
    stop = threading.Event()
    stop.set()
    delays.wait(stop)
    delays.wait(stop)
    delays.reset()
    assert delays.next_s == 0.5


def test_a_wait_without_a_stop_event_sleeps_the_delay() -> None:
    delays = Backoff(initial_s=0.01, max_s=0.01).delays()
    began = time.monotonic()
    assert delays.wait() is False
    assert time.monotonic() - began >= 0.01


def test_a_wait_on_a_stop_event_that_is_not_set_waits_the_delay() -> None:
    delays = Backoff(initial_s=0.01, max_s=0.01).delays()
    assert delays.wait(threading.Event()) is False


@pytest.mark.parametrize(("initial", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_a_policy_that_cannot_back_off_is_refused(initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial_s=initial, max_s=cap)


def test_the_kits_retry_policy_and_the_migrators_lock_races_use_it() -> None:
    assert RetryPolicy(initial_backoff_s=0.3, max_backoff_s=3.0).backoff == Backoff(0.3, 3.0)
    assert schedule(LOCK_RACE_BACKOFF, 4) == [0.1, 0.2, 0.4, 0.8]
