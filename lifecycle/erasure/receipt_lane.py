"""Erasure receipts issued on a thread beside the erasure consumer, off its poll loop.

A receipt costs a load of the account, a walk of the hash chain since the previous receipt, a
signature and an insert: tens of milliseconds a purge. Issued in turn before the next poll, as
before, they delayed every later erasure's `Purged` (a third of the loop's time at 20
withdrawals a second). With this lane the process hands each completed account to `issue` (a
queue) and goes on polling.

Nothing is lost on a crash, as a receipt is owed by the stored facts, not by the queue: at start
the lane issues every receipt still owed (`Receipts.owed`: every service confirmed, no receipt
stored), and a redelivered confirmation hands its account over again. Issuing is idempotent. A
database that is down is waited out with backoff; another failure is logged and left to the
next start's sweep.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import TypeVar
from uuid import UUID

from consumers.faults import DependencyWait, RetryPolicy
from lifecycle.erasure.process import PurgeReceipts
from lifecycle.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class ReceiptLane:
    """`issue` queues; `run` (its own thread, see `bootstrap.ConsumerRun`) issues."""

    name = "erasure-receipts"

    def __init__(
        self,
        receipts: PurgeReceipts,
        owed: Callable[[], Iterable[UUID]],
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.receipts = receipts
        self.owed = owed
        self.retry = retry or RetryPolicy()
        self._queue: queue.SimpleQueue[UUID] = queue.SimpleQueue()
        self._log = log.bind(consumer=self.name)
        self._wait = DependencyWait(self._log, "erasure_receipts")

    @property
    def waiting_for(self) -> str | None:
        return self._wait.waiting_for

    def issue(self, account_id: UUID) -> None:
        self._queue.put(account_id)

    def run(self, stop: threading.Event) -> None:
        owed = self._attempt(lambda: list(self.owed()), stop, "owed") or []
        if owed:
            self._log.info("erasure_receipts.owed", accounts=len(owed))
        for account_id in owed:
            self._attempt(partial(self.receipts.issue, account_id), stop, "issue")
        while not stop.is_set():
            try:
                account_id = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self._attempt(partial(self.receipts.issue, account_id), stop, "issue")
        # Stopping: what is queued is issued once more (a failure is owed at the next start).
        while True:
            try:
                account_id = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                self.receipts.issue(account_id)
            except Exception as error:
                self._log.warning("erasure_receipts.left_owed", error=type(error).__name__)

    def _attempt(self, work: Callable[[], T], stop: threading.Event, step: str) -> T | None:
        """`work()`, waited out while a dependency is down; None when stopped or it failed
        otherwise (logged: the receipt stays owed)."""
        return self._wait.attempt(work, stop, self.retry.backoff, step)
