"""Step 5 of `consumers.kit`: what a batch's transactions kept in the `outbox`, sent.

The records a transaction kept are held in memory with their row ids, published and their rows
deleted once the broker acknowledged them: the outbox table is not read back after each batch.
It is read (`flush`) only when its contents are unknown: at start, after a transaction whose
commit is in doubt, and every `check_interval_s`, for rows a member of the same group left
when it died between its commit and its publish.
"""

from __future__ import annotations

import time
from typing import Any

from consumers.batch import Kept
from consumers.stats import Stats
from consumers.store import ConsumerStore
from lifecycle.kafka.producer import Publisher


class Outbox:
    """One consumer loop's view of its outbox (not thread-safe: the loop's own)."""

    def __init__(
        self,
        store: ConsumerStore,
        publisher: Publisher,
        stats: Stats,
        log: Any,
        *,
        check_interval_s: float = 30.0,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.stats = stats
        self.check_interval_s = check_interval_s
        self._log = log
        self._kept: list[Kept] = []  # committed by this loop, not yet published
        self._read_at: float | None = None  # None: the table's contents are unknown
        self._erased_from: set[str] = set()  # tables rows were erased from, not yet vacuumed

    def keep(self, kept: Kept) -> None:
        """A transaction committed `kept`."""
        if kept.row_ids:
            self._kept.append(kept)
        self._erased_from.update(kept.erased_from)

    def in_doubt(self) -> None:
        """A transaction failed, maybe after its commit: read the table before publishing."""
        self._read_at = None

    @property
    def due(self) -> bool:
        """Whether the table is to be read now (`flush`)."""
        return self._read_at is None or time.monotonic() - self._read_at >= self.check_interval_s

    def flush(self) -> None:
        """Publish every row of the table (ours among them), then delete them."""
        while pending := self.store.pending_outgoing(limit=500):
            for item in pending:
                record = item.record
                self.publisher.publish(item.topic, record.key, record.headers, record.value)
            self.publisher.flush()
            self.store.delete_outgoing([item.row_id for item in pending])
            self._published(len(pending))
        self._kept = []
        self._read_at = time.monotonic()

    def publish_kept(self) -> None:
        """What this loop kept, from memory; the whole table instead while it is unknown."""
        if self._read_at is None:
            self.flush()
            return
        if not self._kept:
            return
        for item in (item for kept in self._kept for item in kept.outgoing):
            record = item.record
            self.publisher.publish(item.topic, record.key, record.headers, record.value)
        self.publisher.flush()
        self.store.delete_outgoing([row_id for kept in self._kept for row_id in kept.row_ids])
        published = sum(len(kept.outgoing) for kept in self._kept)
        self._kept = []
        self._published(published)

    def after_erasure(self) -> None:
        """The store leaves no copy of the rows erased since the last call
        (`Database.after_erasure`), once their confirmations are out; a failure is logged, and
        the next erasure's call covers these tables too."""
        tables, self._erased_from = sorted(self._erased_from), set()
        if not tables:
            return
        try:
            self.store.database.after_erasure(tables)
        except Exception as error:
            self._log.warning("consumer.after_erasure_failed", error=type(error).__name__)

    def _published(self, records: int) -> None:
        self.stats.count(published=records)
        self._log.info("consumer.outbox_published", records=records)
