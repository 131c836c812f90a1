"""The in-process log: the publisher when Kafka is off (the embedded default).

It takes the same records as `lifecycle.kafka.producer.KafkaPublisher`, so consumers run the
same handlers either way; `InProcessSource` reads it back for them.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from lifecycle.kafka.producer import Headers
from lifecycle.logs import get_logger
from schemas.contract import Record


@dataclass(frozen=True)
class Delivered:
    """A record as the in-process log keeps it: its topic, offset and the record itself."""

    topic: str
    offset: int
    record: Record


Subscriber = Callable[[Delivered], None]


class InProcessPublisher:
    """Kafka off (the embedded default): records become visible to readers on `flush()`.

    Readers either register a subscriber per topic (called after each flush, in order, on the
    flushing thread) or pull with `read(topic, offset)`, which waits on a condition variable.
    Records stay in memory for the life of the process; there is no compaction.
    """

    def __init__(self) -> None:
        self._logs: dict[str, list[Record]] = defaultdict(list)
        self._buffer: list[tuple[str, Record]] = []
        self._subscribers: dict[str, list[Subscriber]] = defaultdict(list)
        self._changed = threading.Condition()
        self._log = get_logger(__name__)

    def publish(self, topic: str, key: bytes, headers: Headers, value: bytes | None) -> None:
        with self._changed:
            self._buffer.append((topic, Record(key, list(headers), value)))

    def flush(self) -> None:
        delivered: list[Delivered] = []
        with self._changed:
            for topic, record in self._buffer:
                log = self._logs[topic]
                delivered.append(Delivered(topic, len(log), record))
                log.append(record)
            self._buffer = []
            self._changed.notify_all()
            subscribers = {topic: list(found) for topic, found in self._subscribers.items()}
        for item in delivered:
            for subscriber in subscribers.get(item.topic, ()):
                try:
                    subscriber(item)
                except Exception as error:  # a subscriber's failure is its own
                    self._log.error(
                        "kafka.subscriber_failed",
                        topic=item.topic,
                        offset=item.offset,
                        error=type(error).__name__,
                    )

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        with self._changed:
            self._subscribers[topic].append(subscriber)

    def read(
        self, topic: str, offset: int = 0, *, max_records: int = 500, timeout_s: float = 0.0
    ) -> list[Delivered]:
        """Records from `offset` on, waiting up to `timeout_s` for the first one."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while len(self._logs[topic]) <= offset:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._changed.wait(remaining)
            records = self._logs[topic][offset : offset + max_records]
        return [Delivered(topic, offset + index, record) for index, record in enumerate(records)]

    def end_offset(self, topic: str) -> int:
        with self._changed:
            return len(self._logs[topic])
