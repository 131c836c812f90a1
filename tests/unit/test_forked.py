"""Parts of a pass run side by side in forked processes (lifecycle.audit.forked)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from lifecycle.audit.forked import PartFailedError, run_forked


def counting(n: int, result: object) -> Callable[[Callable[[int], None]], object]:
    def part(tell: Callable[[int], None]) -> object:
        for done in range(1, n + 1):
            tell(done)
        return result

    return part


def test_results_come_back_in_order_and_progress_sums_every_part() -> None:
    told: list[int] = []
    pids: list[int] = []

    def here(tell: Callable[[int], None]) -> object:
        pids.append(os.getpid())
        return counting(3, "first")(tell)

    results = run_forked([here, counting(5, {"second": os.getpid()}), counting(7, 3)], told.append)

    assert results == ["first", {"second": os.getpid()}, 3]
    assert pids == [os.getpid()]  # the first part runs in the caller's process
    assert told[-1] == 3 + 5 + 7


def test_a_child_that_raises_fails_the_pass_with_its_error() -> None:
    def failing(tell: Callable[[int], None]) -> object:
        raise ValueError("a page does not parse")

    with pytest.raises(PartFailedError, match="part-1: ValueError: a page does not parse"):
        run_forked([counting(1, None), failing])


def test_a_child_that_dies_without_an_answer_fails_the_pass() -> None:
    def dying(tell: Callable[[int], None]) -> object:
        os.kill(os.getpid(), signal.SIGKILL)
        return None

    with pytest.raises(PartFailedError, match="part-1"):
        run_forked([counting(1, None), dying])


def test_a_child_that_stops_making_progress_fails_the_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def stuck(tell: Callable[[int], None]) -> object:
        tell(1)
        signal.pause()  # as a child blocked on a lock it inherited held
        return None

    monkeypatch.setattr("lifecycle.audit.forked.STALLED_SECONDS", 1.0)
    with pytest.raises(PartFailedError, match="part-1 made no progress"):
        run_forked([counting(1, None), stuck])


def test_when_the_callers_part_fails_the_children_are_ended() -> None:
    def endless(tell: Callable[[int], None]) -> object:
        signal.pause()
        return None

    def failing(tell: Callable[[int], None]) -> object:
        raise RuntimeError("the database went away")

    before = set(os.listdir("/proc"))
    with pytest.raises(RuntimeError, match="went away"):
        run_forked([failing, endless, endless])
    children = {p for p in set(os.listdir("/proc")) - before if p.isdigit()}
    assert not [p for p in children if _parent(p) == os.getpid()]


def _parent(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None
