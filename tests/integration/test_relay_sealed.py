"""The relay opens only what a record carries: a Registered event's address and name (its
profile), read for the batch that holds it or for an edit whose profile needs them. Every
other event is published from its stored form with its personal values left sealed: no key is
looked up for it, and its records are exactly those of the fully opened event. With a backlog,
pages are read ahead on a thread of the relay's own, each once, and published in order."""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import pytest

from lifecycle.application import Accounts
from lifecycle.domain import Account
from lifecycle.kafka.producer import PublishError
from lifecycle.publishing import records_of
from lifecycle.relay import Relay
from schemas.contract import TopicNames

Captured = tuple[str, bytes, list[tuple[str, bytes]], bytes | None]


class Capture:
    def __init__(self) -> None:
        self.records: list[Captured] = []

    def publish(
        self, topic: str, key: bytes, headers: list[tuple[str, bytes]], value: bytes | None
    ) -> None:
        self.records.append((topic, key, list(headers), value))

    def flush(self) -> None:
        pass


def member(accounts: Accounts, tag: str) -> UUID:
    return accounts.register(
        email=f"{tag}@example.jp",
        display_name=f"Member {tag}",
        job_title="Engineer",
        work_history=[{"company": "Acme KK"}],
        consent_version="2026-04",
    )


def looked_up(accounts: Accounts) -> list[UUID]:
    """Record every account whose key the vault reads from the database (`find_key` on a
    cache miss reads through `prefetch` too)."""
    seen: list[UUID] = []
    vault = accounts.vault
    prefetch = vault.prefetch

    def prefetching(account_ids: Any) -> dict[UUID, bytes | None]:
        ids = list(account_ids)
        seen.extend(ids)
        return prefetch(ids)

    vault.prefetch = prefetching  # type: ignore[method-assign]
    return seen


def drain(relay: Relay) -> None:
    while relay.run_once():
        pass


def expected(accounts: Accounts, topics: TopicNames, after: int) -> list[Captured]:
    """The records of every Account event after notification `after`, made from the fully
    opened events (each edit's profile from its account's opened Registered event)."""
    registered: dict[UUID, Account.Registered] = {}
    found: list[Captured] = []
    for notification in accounts.recorder.select_notifications(start=1, limit=10_000):
        event = accounts.mapper.to_domain_event(notification)
        if isinstance(event, Account.Registered):
            registered[event.originator_id] = event
        if notification.id <= after or not isinstance(event, Account.Event):
            continue
        for topic, record in records_of(event, topics, registered.get(event.originator_id)):
            found.append((topic, record.key, list(record.headers), record.value))
    return found


def test_only_registrations_and_profile_edits_open_a_key(
    accounts: Accounts, topics: TopicNames
) -> None:
    quiet, profiled = member(accounts, "quiet"), member(accounts, "profiled")
    capture = Capture()
    relay = Relay(accounts, capture, name="sealed", topics=topics, batch_size=3)
    try:
        drain(relay)  # both registrations: their keys opened for their profile records
        after = relay.position
        accounts.hot_accounts.forget(quiet)
        accounts.edit_preferences(quiet, work_history=[{"company": "Globex"}], job_title="Lead")
        accounts.receive_scout(quiet, scout_id="s-1", company_id="acme", job_id="j")
        accounts.request_withdrawal(quiet, reason="hired_elsewhere", comment="Thanks, Acme!")
        accounts.edit_preferences(profiled, notifications={"scouts": False})
        accounts.vault.forget(quiet)
        accounts.vault.forget(profiled)
        seen = looked_up(accounts)
        capture.records.clear()
        drain(relay)
    finally:
        relay.close()
    # The quiet member's sealed edit and comment were published without its key; the
    # profiled member's edit needed the address and name of its Registered event.
    assert quiet not in seen
    assert set(seen) == {profiled}
    assert capture.records == expected(accounts, topics, after)
    assert [topic for topic, *_ in capture.records].count(topics.profile) == 1


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_batch_reads_its_registered_events_keys_in_one_query(
    accounts: Accounts, topics: TopicNames
) -> None:
    ids = [member(accounts, f"batch{n}") for n in range(5)]
    for account_id in ids:
        accounts.vault.forget(account_id)
    seen = looked_up(accounts)
    relay = Relay(accounts, Capture(), name="keys", topics=topics, batch_size=100)
    try:
        relay.run_once()
    finally:
        relay.close()
    assert sorted(seen) == sorted(ids)  # one prefetch of the five, no key asked again


# A backlog: the next page is read on the relay's reader thread while the one before is
# published; what goes out is exactly what page-by-page reading makes.


def reads_of(relay: Relay) -> list[tuple[int, str]]:
    """Record each page read: its start and the thread that read it."""
    seen: list[tuple[int, str]] = []
    read = relay._pages.read

    def reading(start: int, limit: int) -> Any:
        seen.append((start, threading.current_thread().name))
        return read(start, limit)

    relay._pages.read = reading  # type: ignore[method-assign]
    return seen


def test_a_backlog_is_read_ahead_once_per_page_and_published_in_order(
    accounts: Accounts, topics: TopicNames
) -> None:
    ids = [member(accounts, f"ahead{n}") for n in range(4)]
    for account_id in ids:
        accounts.edit_preferences(account_id, notifications={"scouts": False})
        accounts.receive_scout(account_id, scout_id="s", company_id="c", job_id="j")
    capture = Capture()
    relay = Relay(accounts, capture, name="ahead", topics=topics, batch_size=3)
    reads = reads_of(relay)
    try:
        drain(relay)
    finally:
        relay.close()
    starts = [start for start, _ in reads]
    assert starts == sorted(set(starts))  # no page read twice
    # Every page but the first was read ahead (and the end of the log, once more).
    ahead = [start for start, thread in reads if thread.startswith("relay-ahead-read")]
    assert len(ahead) >= 4
    assert len(reads) - len(ahead) <= 2
    assert relay.position == accounts.recorder.max_notification_id()
    assert capture.records == expected(accounts, topics, 0)


def test_a_page_that_fails_to_read_ahead_is_read_again_by_its_own_batch(
    accounts: Accounts, topics: TopicNames
) -> None:
    for n in range(3):
        member(accounts, f"retry{n}")
    capture = Capture()
    relay = Relay(accounts, capture, name="retry", topics=topics, batch_size=2)
    read = relay._pages.read
    failed: list[int] = []

    def failing_ahead(start: int, limit: int) -> Any:
        if threading.current_thread().name.startswith("relay-retry-read"):
            failed.append(start)
            raise ConnectionError("database away")  # only the read ahead fails
        return read(start, limit)

    relay._pages.read = failing_ahead  # type: ignore[method-assign]
    try:
        drain(relay)
    finally:
        relay.close()
    assert len(failed) >= 2
    assert relay.position == accounts.recorder.max_notification_id()
    assert capture.records == expected(accounts, topics, 0)


class FailingOnce(Capture):
    """Its first flush fails: the records published since the last flush are lost."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def flush(self) -> None:
        if not self.failed:
            self.failed = True
            self.records.clear()
            raise PublishError("KafkaTimeoutError")


def test_a_page_read_ahead_is_not_used_when_the_batch_before_failed(
    accounts: Accounts, topics: TopicNames
) -> None:
    for n in range(3):
        member(accounts, f"failed{n}")
    publisher = FailingOnce()
    relay = Relay(accounts, publisher, name="failed", topics=topics, batch_size=2)
    try:
        with pytest.raises(PublishError):
            relay.run_once()  # the next page was being read ahead meanwhile
        assert relay.position == 0
        drain(relay)
    finally:
        relay.close()
    assert publisher.records == expected(accounts, topics, 0)  # the failed page again, first


def test_a_relay_closed_from_another_thread_reads_nothing_ahead_after(
    accounts: Accounts, topics: TopicNames
) -> None:
    """A stop whose join timed out closes the relay while its thread may still be in a batch:
    no reader is made (or used) once it is closed."""
    for n in range(3):
        member(accounts, f"closing{n}")
    relay = Relay(accounts, Capture(), name="closing", topics=topics, batch_size=2)
    relay.close()
    reads = reads_of(relay)
    relay.run_once()  # the batch the running thread was in: a full page, so a backlog
    assert [thread for _, thread in reads if thread.startswith("relay-closing-read")] == []
    assert relay._reader is None
