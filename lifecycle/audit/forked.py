"""Parts of one CPU-bound pass run side by side: the first here, each other in a forked
process of its own, each reporting its progress as it goes; results handed back in order.

The audit replay folds the log in Python: one process uses one core, however many the
machine has, so `lifecycle audit replay` splits the log's id space over processes
(lifecycle.audit.replay). Forked, not spawned: a child starts from this process's imports
and configuration at once (spawning re-imports the service, about a second). A child never
touches what it inherited from the parent (its connection pool, its threads): each part opens
what it needs itself, and a child leaves through `os._exit` (multiprocessing's), so nothing
inherited is closed on the parent's behalf.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, TypeVar

T = TypeVar("T")
# A part: given where to tell how far it got (a count), returns its result (picklable).
Part = Callable[[Callable[[int], None]], T]
# How often the parent, once its own part is done, reports the children's progress.
PROGRESS_SECONDS = 0.5
# A child whose count has not moved for this long is stuck (a page takes well under a
# second): the pass fails rather than wait for ever.
STALLED_SECONDS = 300.0


class PartFailedError(Exception):
    """A part running in a child process raised, or the child died without an answer."""


def run_forked(parts: Sequence[Part[T]], progress: Callable[[int], None] | None = None) -> list[T]:
    """Every part's result, in order; `progress` is told the parts' summed counts."""
    context = multiprocessing.get_context("fork")
    counts = context.Array("q", len(parts), lock=False)

    def told(index: int) -> Callable[[int], None]:
        def tell(done: int) -> None:
            counts[index] = done
            if index == 0 and progress is not None:
                progress(sum(counts))

        return tell

    children: list[tuple[Any, Connection]] = []
    try:
        for index, part in enumerate(parts[1:], start=1):
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(
                target=_run_child,
                args=(part, told(index), sender),
                name=f"part-{index}",
                daemon=True,  # ended with the parent, whatever happens to it
            )
            child.start()
            sender.close()
            children.append((child, receiver))
        results = [parts[0](told(0))]
        for index, (child, receiver) in enumerate(children, start=1):
            results.append(_answer(child, receiver, progress, counts, index))
        _tell(progress, counts)
        return results
    finally:
        for child, receiver in children:
            if child.is_alive():  # the parent's own part failed: the others are not wanted
                child.terminate()
            child.join()
            receiver.close()


def _run_child(part: Part[Any], tell: Callable[[int], None], sender: Connection) -> None:
    try:
        answer: tuple[str, Any] = ("done", part(tell))
    except BaseException as error:  # reported to the parent, raised there
        answer = ("failed", f"{type(error).__name__}: {error}")
    sender.send(answer)
    sender.close()


def _answer(
    child: Any,
    receiver: Connection,
    progress: Callable[[int], None] | None,
    counts: Sequence[int],
    index: int,
) -> Any:
    """The child's result; while it works, `progress` is told the summed counts and the
    child's own count is watched for a stall."""
    seen, moved_at = counts[index], time.monotonic()
    while not receiver.poll(PROGRESS_SECONDS):
        _tell(progress, counts)
        if not child.is_alive() and not receiver.poll(0):
            raise PartFailedError(f"{child.name} ended with code {child.exitcode}, no answer")
        if counts[index] != seen:
            seen, moved_at = counts[index], time.monotonic()
        elif time.monotonic() - moved_at > STALLED_SECONDS:
            raise PartFailedError(f"{child.name} made no progress for {STALLED_SECONDS:.0f} s")
    try:
        kind, value = receiver.recv()
    except EOFError:
        raise PartFailedError(f"{child.name} ended without an answer") from None
    if kind == "failed":
        raise PartFailedError(f"{child.name}: {value}")
    return value


def _tell(progress: Callable[[int], None] | None, counts: Sequence[int]) -> None:
    if progress is not None:
        progress(sum(counts))
