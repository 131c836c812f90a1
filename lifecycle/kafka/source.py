"""Where a consumer's records come from: a Kafka group member, or the in-process log.

Both hand out batches of `Incoming` records and take commits as the next offset to read per
partition (the highest offset handled + 1), so a consumer commits once per batch. A commit
does not wait for the broker: the next poll starts at once, and `close()` stores the last
commit not yet confirmed before it leaves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.security import KafkaSecurity, client_config
from lifecycle.logs import get_logger

log = get_logger(__name__)

TopicPartitionKey = tuple[str, int]

# How long the group waits for a member that stopped heartbeating before it gives the
# member's partitions to others. A static member (`group_instance_id`) restarted within it
# takes its partitions back at once; a new dynamic member waits it out first.
SESSION_TIMEOUT_MS = 10_000
CLOSE_REBALANCE_S = 5.0  # how long close() takes part in a rebalance to store its offsets
# A rebalance of a live group ends within a session timeout (members that stopped heartbeating
# are dropped by then). A member whose commits are refused as "rebalancing" three times as
# long is stuck in kafka-python's join (seen once on a loaded broker: a minute of refused
# commits, the join never answered) and is replaced by a new member.
REJOIN_STALL_S = 3 * SESSION_TIMEOUT_MS / 1000


@dataclass(frozen=True)
class Incoming:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: list[tuple[str, bytes]]
    value: bytes | None


class Source(Protocol):
    def poll(self, timeout_s: float) -> list[Incoming]: ...

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Store, per partition, the next offset to read (everything before it is done),
        possibly after returning: a commit lost on the way only brings records again."""
        ...

    def lag(self) -> dict[TopicPartitionKey, int]: ...

    def close(self) -> None: ...


def next_offsets(records: Sequence[Incoming]) -> dict[TopicPartitionKey, int]:
    """Per partition, the highest offset among `records` plus one: what to commit after them."""
    offsets: dict[TopicPartitionKey, int] = {}
    for record in records:
        key = (record.topic, record.partition)
        offsets[key] = max(offsets.get(key, 0), record.offset + 1)
    return offsets


def finished_prefix(batch: Sequence[Incoming], finished: set[int]) -> list[Incoming]:
    """Per partition, the records before the first unfinished one: what may be committed."""
    blocked: set[TopicPartitionKey] = set()
    done: list[Incoming] = []
    for index, incoming in enumerate(batch):
        key = (incoming.topic, incoming.partition)
        if index not in finished:
            blocked.add(key)
        elif key not in blocked:
            done.append(incoming)
    return done


class KafkaSource:
    """A group member: manual offset commits, earliest offset for a group that has none.

    With `group_instance_id` (unique per process, stable across its restarts) the member is
    static: a restart within the session timeout gets its partitions back at once, without a
    rebalance. Without it, `close()` leaves the group, so the others take over at once.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        *,
        client_id: str | None = None,
        group_instance_id: str | None = None,
        max_poll_records: int = 500,
        security: KafkaSecurity | None = None,
        **overrides: Any,
    ) -> None:
        self.group_id = group_id
        config: dict[str, Any] = {
            **client_config(bootstrap, security),
            "group_id": group_id,
            "client_id": client_id or group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "allow_auto_create_topics": False,
            "max_poll_records": max_poll_records,
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": 1_000,
            # kafka-python backs off reconnecting up to 30 s: a broker back after an outage
            # would wait that long, and the group would drop the member meanwhile.
            "reconnect_backoff_max_ms": 1_000,
            # A topic the member's metadata lacked at the group's assignment gets its
            # partitions at the next refresh: 30 s rather than kafka-python's 5 minutes.
            "metadata_max_age_ms": 30_000,
            **overrides,
        }
        if group_instance_id:
            config["group_instance_id"] = group_instance_id
        self._config = config
        self._topics = list(topics)
        # Offsets sent with `commit_async` and not yet confirmed, per partition: `close()`
        # stores them synchronously. Callbacks run in the polling thread; the lock is cheap.
        self._unconfirmed: dict[Any, Any] = {}
        self._unconfirmed_lock = threading.Lock()
        self._commit_failed = False  # sent again before the next poll
        # The group's committed offset per partition held, as the broker confirmed it (our
        # commits) or told it once (`lag`): lag needs no round trip per partition.
        self._confirmed: dict[Any, int] = {}
        self._refused_since: float | None = None  # first commit refused as "rebalancing"
        self._consumer = self._join()

    def _join(self) -> Any:
        """A new member of the group, subscribed once it knows every topic's partitions: the
        group's first assignment uses the leader's metadata, and a topic just created may be
        missing from it (the range assignor then gives it to nobody until the next refresh)."""
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(**self._config)
        deadline = time.monotonic() + 10.0
        pause = threading.Event()
        missing = set(self._topics)
        while missing := {t for t in missing if not consumer.partitions_for_topic(t)}:
            if time.monotonic() > deadline:
                log.warning("kafka.topics_unknown", topics=sorted(missing))
                break
            pause.wait(0.1)
        consumer.subscribe(self._topics)
        return consumer

    def _replace_member(self, refused_for_s: float) -> None:
        """Leave (bounded) and join again as a new member. Offsets not confirmed are dropped:
        their records come again from the last committed offset, and handlers are idempotent."""
        log.warning(
            "kafka.member_replaced", group=self.group_id, refused_for_s=round(refused_for_s, 1)
        )
        try:
            self._consumer.close(autocommit=False, timeout_ms=2_000)
        except Exception as error:  # the group drops the old member after its session timeout
            log.warning("kafka.close_failed", group=self.group_id, error=type(error).__name__)
        with self._unconfirmed_lock:
            self._unconfirmed, self._confirmed = {}, {}
        self._commit_failed, self._refused_since = False, None
        self._consumer = self._join()

    def poll(self, timeout_s: float) -> list[Incoming]:
        if self._refused_since is not None:
            refused_for_s = time.monotonic() - self._refused_since
            if refused_for_s > REJOIN_STALL_S:
                self._replace_member(refused_for_s)
        if self._commit_failed:
            self._commit_again()
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        return [
            Incoming(
                record.topic,
                record.partition,
                record.offset,
                record.key,
                list(record.headers or []),
                record.value,
            )
            for batch in batches.values()
            for record in batch
        ]

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Sent without waiting for the broker's answer (a synchronous commit cost a round trip
        to the group coordinator before every next poll). Commits go out in order on one
        connection; one that fails is logged and sent again before the next poll (an idle
        member would otherwise keep its committed offsets behind), and `close()` waits for
        what is still unconfirmed."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        if not offsets:
            return
        wanted = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for (topic, partition), offset in offsets.items()
        }
        with self._unconfirmed_lock:
            self._unconfirmed.update(wanted)
        self._consumer.commit_async(wanted, callback=self._committed)

    def _commit_again(self) -> None:
        """The offsets of a failed commit (and any later ones unconfirmed), sent again, for the
        partitions still held."""
        self._commit_failed = False
        held = self._consumer.assignment()
        with self._unconfirmed_lock:
            pending = {tp: offset for tp, offset in self._unconfirmed.items() if tp in held}
            self._unconfirmed = dict(pending)
        if pending:
            self._consumer.commit_async(pending, callback=self._committed)
        else:  # the partitions went to other members: no refusal is still owed an answer
            self._refused_since = None

    def _committed(self, offsets: Mapping[Any, Any], response: object) -> None:
        from kafka.errors import RebalanceInProgressError

        if isinstance(response, BaseException):
            self._commit_failed = True
            if isinstance(response, RebalanceInProgressError) and self._refused_since is None:
                self._refused_since = time.monotonic()
            log.warning(
                "kafka.commit_failed",
                group=self.group_id,
                error=type(response).__name__,
                partitions=len(offsets),
            )
            return
        self._refused_since = None
        with self._unconfirmed_lock:
            for partition, offset in offsets.items():
                if self._unconfirmed.get(partition) == offset:
                    del self._unconfirmed[partition]
                self._confirmed[partition] = max(self._confirmed.get(partition, 0), offset.offset)

    def assigned(self) -> set[TopicPartitionKey]:
        """The partitions this member holds now (shared with the group's other members)."""
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def lag(self) -> dict[TopicPartitionKey, int]:
        """Per assigned partition: end offset minus the group's committed position.

        Asked between two polls, so it asks the broker as little as it can: the end is the
        high watermark of the last fetch, the committed offset the one our commits had
        confirmed; only a partition new to this member costs a request (its committed offset,
        once; where the group has none, its beginning, and its end before the first fetch)."""
        partitions = list(self._consumer.assignment())
        if not partitions:
            return {}
        with self._unconfirmed_lock:
            known = {tp: self._confirmed[tp] for tp in partitions if tp in self._confirmed}
            self._confirmed = dict(known)  # partitions given up are asked again if they return
        for tp in partitions:
            if tp not in known:
                committed = self._consumer.committed(tp)
                if committed is not None:
                    known[tp] = committed
                    with self._unconfirmed_lock:
                        self._confirmed.setdefault(tp, committed)
        ends = {tp: self._consumer.highwater(tp) for tp in partitions}
        unfetched = [tp for tp, end in ends.items() if end is None]
        if unfetched:
            ends.update(self._consumer.end_offsets(unfetched))
        uncommitted = [tp for tp in partitions if tp not in known]
        if uncommitted:
            known.update(self._consumer.beginning_offsets(uncommitted))
        return {(tp.topic, tp.partition): max(0, ends[tp] - known[tp]) for tp in partitions}

    def close(self) -> None:
        """Store the offsets committed but not yet confirmed (bounded by the consumer's request
        timeout; a rebalance in progress is joined first, for up to CLOSE_REBALANCE_S), then
        leave."""
        with self._unconfirmed_lock:
            pending, self._unconfirmed = dict(self._unconfirmed), {}
        try:
            self._store_at_close(pending)
        except Exception as error:  # the records come again after a restart, as skips
            log.warning(
                "kafka.commit_failed", group=self.group_id, error=type(error).__name__, at="close"
            )
        finally:
            self._consumer.close(autocommit=False)

    def _store_at_close(self, pending: dict[Any, Any]) -> None:
        from kafka.errors import RebalanceInProgressError

        deadline = time.monotonic() + CLOSE_REBALANCE_S
        while True:
            # Only partitions still ours: a member's commit is not checked against what it
            # holds, and an old offset there would bring another member's records again.
            held = self._consumer.assignment()
            pending = {tp: offset for tp, offset in pending.items() if tp in held}
            if not pending:
                return
            try:
                self._consumer.commit(pending)
                return
            except RebalanceInProgressError:
                if time.monotonic() > deadline:
                    raise
                # The group refuses commits until this member has rejoined, which a poll
                # does; its records are not handled (their next holder reads them again).
                self._consumer.poll(timeout_ms=200, max_records=1)


class InProcessSource:
    """Kafka off: reads the in-process log of the same topics, one partition each."""

    def __init__(
        self, publisher: InProcessPublisher, topics: Sequence[str], *, max_records: int = 500
    ) -> None:
        self.publisher = publisher
        self.topics = list(topics)
        self.max_records = max_records
        self._next = dict.fromkeys(self.topics, 0)
        self._committed = dict.fromkeys(self.topics, 0)

    def poll(self, timeout_s: float) -> list[Incoming]:
        delivered = [
            item
            for topic in self.topics
            for item in self.publisher.read(topic, self._next[topic], max_records=self.max_records)
        ]
        if not delivered:
            first = self.topics[0]
            wait = timeout_s if len(self.topics) == 1 else min(timeout_s, 0.1)
            delivered = self.publisher.read(
                first, self._next[first], max_records=self.max_records, timeout_s=wait
            )
        for item in delivered:
            self._next[item.topic] = item.offset + 1
        return [
            Incoming(
                item.topic,
                0,
                item.offset,
                item.record.key,
                list(item.record.headers),
                item.record.value,
            )
            for item in delivered
        ]

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        for (topic, _partition), offset in offsets.items():
            self._committed[topic] = max(self._committed[topic], offset)

    def lag(self) -> dict[TopicPartitionKey, int]:
        return {
            (topic, 0): max(0, self.publisher.end_offset(topic) - self._committed[topic])
            for topic in self.topics
        }

    def close(self) -> None:
        return None
