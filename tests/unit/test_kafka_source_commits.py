"""KafkaSource's commits (lifecycle.kafka.source): sent without waiting for the broker, a failed
one sent again before the next poll, the unconfirmed ones stored at close; over a stand-in for
kafka-python's consumer (the broker's side is in tests/consumers/test_kafka_consumers.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import CoordinatorLoadInProgressError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata

from lifecycle.kafka.source import KafkaSource

TP = TopicPartition("account.lifecycle.v1", 0)
OTHER = TopicPartition("account.lifecycle.v1", 1)


class StandIn:
    """Answers each async commit with the next of `answers` (an exception: it failed), at the
    next poll, as kafka-python runs commit callbacks in the polling thread."""

    def __init__(self, answers: list[BaseException | None]) -> None:
        self.answers = answers
        self.sent: list[dict[Any, Any]] = []
        self.synced: list[dict[Any, Any]] = []
        self.pending: list[Callable[[], None]] = []
        self.held = {TP, OTHER}
        self.rebalancing = 0  # how many sync commits the group refuses before a poll rejoins
        self.polls = 0

    def commit_async(self, offsets: dict[Any, Any], callback: Callable[..., None]) -> None:
        self.sent.append(dict(offsets))
        answer = self.answers.pop(0) if self.answers else None
        self.pending.append(lambda: callback(offsets, answer or object()))

    def poll(self, timeout_ms: int, max_records: int | None = None) -> dict[Any, Any]:
        self.polls += 1
        pending, self.pending = self.pending, []
        for answer in pending:
            answer()
        return {}

    def commit(self, offsets: dict[Any, Any]) -> None:
        if self.rebalancing:
            self.rebalancing -= 1
            raise RebalanceInProgressError()
        self.synced.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return set(self.held)

    def close(self, autocommit: bool, timeout_ms: int | None = None) -> None:
        assert autocommit is False
        self.closed = True


def source_over(consumer: StandIn, *later: StandIn) -> KafkaSource:
    """A source over `consumer`, then over each of `later` as it replaces its member."""
    source = KafkaSource.__new__(KafkaSource)  # no broker: only the commit bookkeeping
    members: Iterator[StandIn] = iter(later)
    source.__dict__.update(
        _consumer=consumer,
        _join=lambda: next(members),
        group_id="mail",
        _unconfirmed={},
        _confirmed={},
        _commit_failed=False,
        _refused_since=None,
        _unconfirmed_lock=threading.Lock(),
    )
    return source


def at(offset: int) -> OffsetAndMetadata:
    return OffsetAndMetadata(offset, "", -1)


def test_a_failed_commit_is_sent_again_before_the_next_poll_until_confirmed() -> None:
    consumer = StandIn([CoordinatorLoadInProgressError(), CoordinatorLoadInProgressError()])
    source = source_over(consumer)
    source.commit({(TP.topic, 0): 5})
    assert consumer.sent == [{TP: at(5)}]  # sent at once, nothing waited for
    source.poll(0.1)  # its failure arrives
    source.poll(0.1)  # sent again first; fails again
    source.poll(0.1)  # and again: confirmed now
    source.poll(0.1)
    assert consumer.sent == [{TP: at(5)}] * 3
    source.close()
    assert consumer.synced == []  # nothing left unconfirmed


def test_close_stores_what_is_unconfirmed_for_the_partitions_still_held() -> None:
    consumer = StandIn([])
    source = source_over(consumer)
    source.commit({(TP.topic, 0): 5, (OTHER.topic, 1): 7})
    source.poll(0.1)  # both confirmed
    source.commit({(TP.topic, 0): 9, (OTHER.topic, 1): 11})  # answers not in yet
    consumer.held = {TP}  # the other partition went to another member meanwhile
    source.close()
    assert consumer.synced == [{TP: at(9)}]


def test_close_during_a_rebalance_rejoins_and_then_stores_the_offsets() -> None:
    consumer = StandIn([])
    source = source_over(consumer)
    source.commit({(TP.topic, 0): 4})  # the answer not in yet
    consumer.rebalancing = 2  # the group refuses commits until this member took part
    source.close()
    assert consumer.polls == 2  # each refusal answered by a poll, which rejoins
    assert consumer.synced == [{TP: at(4)}]


def test_a_member_whose_commits_are_refused_as_rebalancing_too_long_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stuck = StandIn([RebalanceInProgressError()] * 100)  # never rejoins
    fresh = StandIn([])
    source = source_over(stuck, fresh)
    source.commit({(TP.topic, 0): 5})
    source.poll(0.1)  # the refusal arrives
    source.poll(0.1)  # sent again: refused again, within the bound
    assert source._consumer is stuck
    monkeypatch.setattr("lifecycle.kafka.source.REJOIN_STALL_S", 0.0)
    source.poll(0.1)
    assert source._consumer is fresh and getattr(stuck, "closed", False)
    # The new member starts from the group's committed offsets: nothing unconfirmed is resent
    # (its records come again), and a later commit goes through it.
    source.commit({(TP.topic, 0): 6})
    source.poll(0.1)
    assert fresh.sent == [{TP: at(6)}]
    assert source._refused_since is None


def test_a_confirmed_commit_ends_the_refusal_clock() -> None:
    consumer = StandIn([RebalanceInProgressError()])
    source = source_over(consumer)
    source.commit({(TP.topic, 0): 5})
    source.poll(0.1)
    assert source._refused_since is not None
    source.poll(0.1)  # sent again and confirmed
    source.poll(0.1)
    assert source._refused_since is None and source._consumer is consumer


def test_a_refusal_for_partitions_the_member_no_longer_holds_ends_the_refusal_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = StandIn([RebalanceInProgressError()])
    source = source_over(consumer)
    source.commit({(TP.topic, 0): 5})
    source.poll(0.1)  # refused: the group rebalanced and gave the partition to another member
    consumer.held = {OTHER}
    source.poll(0.1)  # nothing of ours to send again
    monkeypatch.setattr("lifecycle.kafka.source.REJOIN_STALL_S", 0.0)
    source.poll(0.1)
    assert source._refused_since is None and source._consumer is consumer  # not replaced
