"""The one backoff policy for every wait on something unavailable.

Every loop that waits out a failure (the relay, the projections, the consumer kit's dependency
waits and record retries, a migration step that lost a lock race) takes its delays from a
`Backoff`: the first wait is `initial_s`, each next one twice the last, never more than
`max_s`, and a success starts again from `initial_s`. A loop that can be told to stop waits on
its stop event, so a shutdown never sits out a delay. Twenty lines of ours rather than a
retry library: these loops keep state across attempts (a position to reload, `waiting_for` for
readiness, a log line per wait) that a call-wrapping retry decorator would only hide.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: `initial_s`, doubled after each failed attempt, at most
    `max_s`."""

    initial_s: float = 0.2
    max_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError("backoff needs 0 < initial_s <= max_s")

    def delays(self) -> Delays:
        """A loop's own place in this policy, starting at `initial_s`."""
        return Delays(self)


class Delays:
    """Where one loop is in its `Backoff`: `next_s` is the delay it waits next."""

    def __init__(self, policy: Backoff) -> None:
        self.policy = policy
        self.next_s = policy.initial_s

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Wait `next_s` (cut short when `stop` is set: then True), then double it, capped."""
        delay, self.next_s = self.next_s, min(self.next_s * 2, self.policy.max_s)
        if stop is None:
            time.sleep(delay)
            return False
        return stop.wait(delay)

    def reset(self) -> None:
        """After a success: the next failure waits `initial_s` again."""
        self.next_s = self.policy.initial_s
