"""Group commit: concurrent callers' saves go to the event store in one transaction.

Every PostgreSQL write of the library takes `LOCK TABLE ... IN EXCLUSIVE MODE` and commits
(one WAL flush) on its own, so concurrent writers queue behind each other one commit at a
time. `GroupCommitWriter` lets them share: the first caller to arrive while no save is
running becomes the leader and saves what every waiting caller handed in with one
`Application.save(*events, *aggregates)`, i.e. one lock, one INSERT, one commit; callers
arriving meanwhile queue for the next batch. Nothing waits for a batch to fill: with one
caller every save is a batch of one, as before.

Durability is unchanged: a caller returns only after the transaction holding its events
committed. If the batch fails on a conflict (`IntegrityError`, e.g. two callers raced on one
aggregate) or on a domain error raised while storing (a `LifecycleError` such as
`KeyDestroyedError` from the mapper), nothing of it was stored: the leader then saves each
caller's events on their own, so each caller gets exactly the outcome it would have had
alone (the one that conflicted gets its `IntegrityError`, and `Accounts` retries the command
from a fresh load). When the conflict names an aggregate only one caller wrote (an event
stored before it), that caller alone gets it and the rest are saved again as one batch.
Any other failure (the database is unreachable) reaches every caller of
the batch, as it would have reached each of them. A batch whose COMMIT was sent but whose
answer was lost is resolved as one by the recorder (`lifecycle.recorders`): stored, every
caller gets its recordings; not stored, it is inserted again; unknown, every caller gets
`WriteOutcomeUnknownError` (never run alone, which could store it twice).

`lifecycle.application.Accounts` saves through one writer; `max_batch=1` turns batching off.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol, MutableOrImmutableAggregate
from eventsourcing.persistence import IntegrityError, Recording

from lifecycle import tracing
from lifecycle.errors import LifecycleError
from lifecycle.pipeline_metrics import GROUP_COMMIT_BATCH

Event = DomainEventProtocol[UUID]
Aggregate = MutableOrImmutableAggregate[UUID]
SaveFunction = Callable[..., list[Recording[UUID]]]

# A batch is also bounded so that one transaction never grows without limit under a burst.
DEFAULT_MAX_BATCH = 256


class _Request:
    __slots__ = ("aggregates", "done", "error", "events", "recordings")

    def __init__(self, events: list[Event], aggregates: list[Aggregate]) -> None:
        self.events = events
        self.aggregates = aggregates
        self.done = False
        self.error: BaseException | None = None
        self.recordings: list[Recording[UUID]] = []


class GroupCommitWriter:
    """Batches concurrent `save` calls into one transaction; see the module docstring."""

    def __init__(self, save: SaveFunction, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._save = save
        self.max_batch = max_batch
        self._changed = threading.Condition()
        self._queue: list[_Request] = []
        self._leading = False
        # Counters, for metrics and tests.
        self.batches = 0
        self.saved_requests = 0
        self.fallbacks = 0

    def save(
        self, events: Sequence[Event], aggregates: Sequence[Aggregate] = ()
    ) -> list[Recording[UUID]]:
        """Store `events` (and let the application see `aggregates`, as `save` does);
        returns their recordings once committed, or raises what storing them raised."""
        # The caller's trace context, stamped in its own thread: the batch runs in the leader's.
        tracing.stamp(events)
        request = _Request(list(events), list(aggregates))
        with self._changed:
            self._queue.append(request)
            while not request.done:
                if self._leading:
                    self._changed.wait()
                    continue
                self._leading = True
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                self._changed.release()
                try:
                    self._run(batch)
                finally:
                    self._changed.acquire()
                    self._leading = False
                    self._changed.notify_all()
        if request.error is not None:
            raise request.error
        return request.recordings

    def _run(self, batch: list[_Request]) -> None:
        try:
            recordings = self._save(
                *(event for request in batch for event in request.events),
                *(aggregate for request in batch for aggregate in request.aggregates),
            )
        except (IntegrityError, LifecycleError) as error:
            # Nothing of the batch was stored: give each caller its own outcome.
            if len(batch) == 1:
                batch[0].error = error
            else:
                self.fallbacks += 1
                self._settle(batch, error)
        except BaseException as error:
            for request in batch:
                request.error = error
        else:
            _deliver(batch, recordings)
        self.batches += 1
        GROUP_COMMIT_BATCH.observe(len(batch))
        self.saved_requests += len(batch)
        for request in batch:
            request.done = True

    def _settle(self, batch: list[_Request], error: BaseException) -> None:
        """After a failed batch: a conflict with an event stored before names its aggregate
        (PostgreSQL's DETAIL); when one caller alone has events of it, that caller gets the
        conflict (alone it would meet it too) and the others go again as one batch. Otherwise
        (callers racing within the batch, or no aggregate named) each saves alone."""
        while len(batch) > 1:
            conflicting = conflicting_aggregate(error)
            losers = [r for r in batch if any(e.originator_id == conflicting for e in r.events)]
            if conflicting is None or len(losers) != 1:
                break
            losers[0].error = error
            batch = [request for request in batch if request is not losers[0]]
            try:
                recordings = self._save(
                    *(event for request in batch for event in request.events),
                    *(aggregate for request in batch for aggregate in request.aggregates),
                )
            except (IntegrityError, LifecycleError) as again:
                error = again
                continue
            except BaseException as failure:
                for request in batch:
                    request.error = failure
                return
            _deliver(batch, recordings)
            return
        for request in batch:
            self._run_alone(request)

    def _run_alone(self, request: _Request) -> None:
        try:
            request.recordings = self._save(*request.events, *request.aggregates)
        except BaseException as error:
            request.error = error


def _deliver(batch: list[_Request], recordings: list[Recording[UUID]]) -> None:
    start = 0
    for request in batch:
        end = start + len(request.events)
        request.recordings = recordings[start:end]
        start = end


# PostgreSQL's DETAIL of a unique violation on the events table's key.
_CONFLICT_DETAIL = re.compile(
    r"Key \(originator_id, originator_version\)=\(([0-9a-fA-F-]{36}), \d+\) already exists"
)


def conflicting_aggregate(error: BaseException) -> UUID | None:
    """The aggregate whose event conflicted with a stored one, when the error names it."""
    if not isinstance(error, IntegrityError):
        return None
    found = _CONFLICT_DETAIL.search(str(error))
    return UUID(found.group(1)) if found else None
