"""A consumer's counters, shared between its loop and whoever reads them (metrics, tests)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Stats:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retries: int = 0
    published: int = 0
    batches: int = 0
    waits: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(
        self,
        *,
        duplicate: bool = False,
        outcome: str | None = None,
        retry: bool = False,
        wait: bool = False,
        published: int = 0,
        dead_lettered: int = 0,
        batch: bool = False,
    ) -> None:
        with self._lock:
            self.duplicates += duplicate
            self.retries += retry
            self.waits += wait
            self.published += published
            self.dead_lettered += dead_lettered
            self.batches += batch
            if outcome is not None:
                self.applied += 1
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def summary(self) -> dict[str, int]:
        """The counts a stopping consumer logs."""
        with self._lock:
            return {
                "applied": self.applied,
                "duplicates": self.duplicates,
                "dead_lettered": self.dead_lettered,
                "retries": self.retries,
                "waits": self.waits,
            }
