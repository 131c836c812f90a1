"""The consumer kit over the in-process log, with its store on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import OperationalError
from support import Running, scout_received, service_stores, wait_until, withdrawal

from consumers.faults import DLQ_ERROR_CODE, DLQ_ERROR_TYPE, RetryPolicy
from consumers.handler import Handler, HandlerResult, PoisonRecord
from consumers.kit import Consumer, Hooks
from consumers.member_data import erasure_confirmation
from consumers.migrations import kit_component
from consumers.store import ConsumerStore, Outgoing, PendingOutgoing
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.source import InProcessSource
from lifecycle.migrator import migrate
from lifecycle.storage import Cursor, Database
from schemas.contract import (
    Envelope,
    ErasureConfirmedV2,
    Record,
    TopicNames,
    decode_record,
)

TOPICS = TopicNames()
FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


def scout_record(account_id: UUID, version: int, scout_id: str = "s") -> Record:
    return scout_received(TOPICS, account_id, version, scout_id)[1]


def put(log: InProcessPublisher, topic: str, *records: Record) -> None:
    for record in records:
        log.publish(topic, record.key, record.headers, record.value)
    log.flush()


class RecordingHandler(Handler):
    """Writes one row per record in the kit's transaction; fails as told."""

    def __init__(self, database: Database, topics: TopicNames = TOPICS) -> None:
        self.database = database
        self.topics = topics
        self.table = database.table("effects")
        self.calls = 0
        self.failures: dict[str, list[Exception]] = {}
        with database.transaction() as cursor:
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (ce_id TEXT NOT NULL)")

    def handle(self, envelope: Envelope, cursor: Cursor) -> HandlerResult:
        self.calls += 1
        cursor.execute(f"INSERT INTO {self.table} (ce_id) VALUES (%s)", (envelope.id,))
        pending = self.failures.get(envelope.id)
        if pending:
            raise pending.pop(0)
        return HandlerResult(
            (erasure_confirmation(self.topics, envelope.account_id, "scout", 1),),
        )

    def effects(self) -> list[str]:
        with self.database.transaction(commit=False) as cursor:
            rows = cursor.execute(f"SELECT ce_id FROM {self.table} ORDER BY ce_id").fetchall()
        return [row[0] for row in rows]


@pytest.fixture
def log() -> InProcessPublisher:
    return InProcessPublisher()


@pytest.fixture
def database(service_store: Callable[[str], Database]) -> Database:
    return service_store("kit")


def make_consumer(
    log: InProcessPublisher,
    database: Database,
    handler: Handler,
    hooks: Hooks | None = None,
    *,
    store: ConsumerStore | None = None,
    outbox_check_interval_s: float = 30.0,
) -> Consumer:
    return Consumer(
        "scout",
        InProcessSource(log, [TOPICS.lifecycle]),
        store or ConsumerStore(database),
        handler,
        log,
        dlq_topic=TOPICS.dlq("scout"),
        retry=FAST,
        hooks=hooks,
        poll_timeout_s=0.05,
        lag_interval_s=0.0,
        outbox_check_interval_s=outbox_check_interval_s,
    )


def confirmations(log: InProcessPublisher) -> list[Envelope]:
    return [
        decode_record(item.record.headers, item.record.value)
        for item in log.read(TOPICS.erasure_confirmed("scout"), max_records=1000)
    ]


def test_each_record_applies_once_and_repeats_are_skipped(
    log: InProcessPublisher, database: Database, running: list[Running]
) -> None:
    account = uuid.uuid4()
    first, second = scout_record(account, 1), scout_record(account, 2, "t")
    put(log, TOPICS.lifecycle, first, second, first, second, first)
    handler = RecordingHandler(database)
    consumer = make_consumer(log, database, handler)
    running.append(Running(consumer))

    wait_until(lambda: consumer.stats.applied + consumer.stats.duplicates == 5)
    assert handler.effects() == [f"{account}:1", f"{account}:2"]
    assert consumer.stats.duplicates == 3
    assert handler.calls == 2
    wait_until(lambda: consumer.total_lag() == 0)
    # Confirmations left through the outbox, which is empty again (the kit counts a record
    # applied at its commit, before it publishes the outbox).
    wait_until(lambda: ConsumerStore(database).pending_outgoing() == [], "outbox published")
    # Each under an id of its own that nobody could have published before (a random nonce).
    ids = [e.id for e in confirmations(log)]
    assert len(set(ids)) == 2
    assert all(i.startswith(f"{account}:scout:erasure-confirmed:") for i in ids)
    assert ConsumerStore(database).pending_outgoing() == []


def test_a_failing_effect_rolls_back_with_its_mark_and_is_retried(
    log: InProcessPublisher, database: Database, running: list[Running]
) -> None:
    account = uuid.uuid4()
    handler = RecordingHandler(database)
    handler.failures[f"{account}:1"] = [OperationalError("connection lost"), OperationalError()]
    put(log, TOPICS.lifecycle, scout_record(account, 1))
    consumer = make_consumer(log, database, handler)
    running.append(Running(consumer))

    wait_until(lambda: consumer.stats.applied == 1)
    assert consumer.stats.retries == 2
    assert handler.calls == 3
    assert handler.effects() == [f"{account}:1"]  # the two failed attempts left nothing
    assert ConsumerStore(database).processed_count() == 1
    # The kit counts a record applied at its commit, before it publishes the outbox.
    wait_until(lambda: ConsumerStore(database).pending_outgoing() == [], "outbox published")
    assert len(confirmations(log)) == 1


def test_unknown_errors_after_retries_and_poison_are_dead_lettered_and_the_consumer_moves_on(
    log: InProcessPublisher, database: Database, running: list[Running]
) -> None:
    account = uuid.uuid4()
    handler = RecordingHandler(database)
    secret = "tanaka.hanako@example.jp"
    # One failure for the batch's shared transaction, then three attempts of its own.
    handler.failures[f"{account}:1"] = [RuntimeError(secret)] * 4
    handler.failures[f"{account}:2"] = [PoisonRecord("scout_unknown_company")]
    garbage = Record(b"k", [("x-note", b"\xff\xfe")], b"\x00not json at all")
    put(log, TOPICS.lifecycle, scout_record(account, 1), scout_record(account, 2, "t"))
    log.publish(TOPICS.lifecycle, garbage.key, garbage.headers, garbage.value)
    put(log, TOPICS.lifecycle, scout_record(account, 3, "u"))
    consumer = make_consumer(log, database, handler)
    running.append(Running(consumer))

    wait_until(lambda: consumer.stats.applied == 1 and consumer.stats.dead_lettered == 3)
    assert handler.effects() == [f"{account}:3"]
    dead = log.read(TOPICS.dlq("scout"), max_records=10)
    headers = [dict(item.record.headers) for item in dead]
    assert [(h[DLQ_ERROR_TYPE], h[DLQ_ERROR_CODE]) for h in headers] == [
        (b"RuntimeError", b"retries_exhausted"),
        (b"PoisonRecord", b"scout_unknown_company"),
        (b"ContractError", b"contract_violation"),
    ]
    assert [h["dlq_attempts"] for h in headers] == [b"3", b"1", b"1"]
    assert [h["dlq_source_offset"] for h in headers] == [b"0", b"1", b"2"]
    # A reference, never a copy: no value, the source's ids, no other original header, and
    # not the error's text.
    assert [item.record.value for item in dead] == [None, None, None]
    assert [h["dlq_source_topic"] for h in headers] == [TOPICS.lifecycle.encode()] * 3
    assert [h["dlq_source_partition"] for h in headers] == [b"0"] * 3
    assert headers[0]["ce_id"] == f"{account}:1".encode()
    assert headers[0]["ce_subject"] == str(account).encode()
    assert dead[0].record.key == str(account).encode()
    assert "x-note" not in headers[2] and dead[2].record.key == b""
    for item in dead:
        assert all(secret.encode() not in value for _, value in item.record.headers)
    # Dead letters are not marked processed: a replay after a fix is handled.
    assert ConsumerStore(database).processed_count() == 1


def test_a_crash_after_commit_leaves_the_confirmation_in_the_outbox_for_the_next_start(
    log: InProcessPublisher, database: Database, running: list[Running]
) -> None:
    account = uuid.uuid4()
    put(log, TOPICS.lifecycle, scout_record(account, 1))

    class CrashError(Exception):
        pass

    def crash(envelope: Envelope) -> None:
        raise CrashError()

    handler = RecordingHandler(database)
    crashed = Running(make_consumer(log, database, handler, Hooks(after_commit=crash)))
    crashed.thread.join(timeout=10)
    assert isinstance(crashed.error, CrashError)
    assert confirmations(log) == []
    assert len(ConsumerStore(database).pending_outgoing()) == 1

    restarted = make_consumer(log, database, handler)
    running.append(Running(restarted))
    wait_until(lambda: len(confirmations(log)) == 1)
    wait_until(lambda: restarted.stats.duplicates == 1)  # the record itself comes again: a skip
    assert handler.effects() == [f"{account}:1"]
    assert ConsumerStore(database).pending_outgoing() == []
    [confirmation] = confirmations(log)
    assert isinstance(confirmation.data, ErasureConfirmedV2)
    assert confirmation.data.rows_removed == 1


class CountingStore(ConsumerStore):
    """Counts the reads of the outbox table and the look-ups of marks before a transaction."""

    reads = 0
    lookups = 0

    def pending_outgoing(self, limit: int = 100) -> list[PendingOutgoing]:
        self.reads += 1
        return super().pending_outgoing(limit)

    def processed_among(self, ce_ids: Sequence[str]) -> set[str]:
        self.lookups += 1
        return super().processed_among(ce_ids)


class PreparingHandler(RecordingHandler):
    def prepare(self, envelope: Envelope) -> None:
        """A step before the transaction, which must not run again for a record handled."""


class HarmlesslyPreparingHandler(PreparingHandler):
    prepare_repeats_harmlessly = True  # as mail's: it finds what was done


@pytest.mark.parametrize(
    "handler_type", [RecordingHandler, PreparingHandler, HarmlesslyPreparingHandler]
)
def test_marks_are_looked_up_before_the_transaction_only_for_a_handler_that_prepares(
    log: InProcessPublisher,
    database: Database,
    running: list[Running],
    handler_type: type[RecordingHandler],
) -> None:
    store = CountingStore(database)
    handler = handler_type(database)
    consumer = make_consumer(log, database, handler, store=store)
    running.append(Running(consumer))
    account = uuid.uuid4()
    first, second = scout_record(account, 1), scout_record(account, 2, "t")
    put(log, TOPICS.lifecycle, first, first)  # a repeat in the batch
    wait_until(lambda: consumer.stats.applied + consumer.stats.duplicates == 2)
    put(log, TOPICS.lifecycle, first, second)  # a repeat of an earlier batch
    wait_until(lambda: consumer.stats.applied + consumer.stats.duplicates == 4)
    assert handler.effects() == [f"{account}:1", f"{account}:2"]
    assert (handler.calls, consumer.stats.duplicates) == (2, 2)
    assert (store.lookups > 0) is (handler_type is PreparingHandler)


def test_the_outbox_table_is_read_at_start_not_after_each_batch(
    log: InProcessPublisher, database: Database, running: list[Running]
) -> None:
    store = CountingStore(database)
    consumer = make_consumer(log, database, RecordingHandler(database), store=store)
    running.append(Running(consumer))
    account = uuid.uuid4()
    for version in range(1, 6):  # five batches, each published before the next is sent
        put(log, TOPICS.lifecycle, scout_record(account, version, f"s{version}"))
        wait_until(lambda n=version: len(confirmations(log)) == n, "published")
    # Read once, at start (until it is empty); each batch's rows were published from memory
    # and deleted.
    assert store.reads == 1
    assert ConsumerStore(database).pending_outgoing() == []


def test_rows_another_member_left_in_the_outbox_are_published_within_the_check_interval(
    log: InProcessPublisher, database: Database, running: list[Running]
) -> None:
    running.append(
        Running(
            make_consumer(log, database, RecordingHandler(database), outbox_check_interval_s=0.1)
        )
    )
    account = uuid.uuid4()
    confirmation = erasure_confirmation(TOPICS, account, "scout", 1)
    store = ConsumerStore(database)
    with store.transaction() as cursor:  # a member that died after its commit
        store.add_outgoing(cursor, [confirmation])
    wait_until(lambda: len(confirmations(log)) == 1, "the orphan published, no record needed")
    wait_until(lambda: store.pending_outgoing() == [], "and deleted")


def test_lag_is_end_offset_minus_committed_position(
    log: InProcessPublisher, database: Database, running: list[Running]
) -> None:
    account = uuid.uuid4()
    put(log, TOPICS.lifecycle, *(scout_record(account, v, f"s{v}") for v in range(1, 5)))
    gate = threading.Event()

    class GatedHandler(RecordingHandler):
        def prepare(self, envelope: Envelope) -> None:
            gate.wait(10)

    consumer = make_consumer(log, database, GatedHandler(database))
    source = consumer.source
    assert source.lag() == {(TOPICS.lifecycle, 0): 4}
    running.append(Running(consumer))
    gate.set()
    wait_until(lambda: consumer.lag() == {(TOPICS.lifecycle, 0): 0})
    put(log, TOPICS.lifecycle, scout_record(account, 5, "s5"))
    wait_until(lambda: consumer.stats.applied == 5 and consumer.total_lag() == 0)


def test_outbox_rows_keep_topic_key_headers_and_value(database: Database) -> None:
    migrate(database, [kit_component("x_")])  # a second kit in the same schema
    store = ConsumerStore(database, table_prefix="x_")
    record = Record(b"key", [("ce_id", b"a:1"), ("bin", b"\x00\xff")], None)
    with store.transaction() as cursor:
        assert store.mark_processed(cursor, "a:1")
        assert not store.mark_processed(cursor, "a:1")
        store.add_outgoing(cursor, [Outgoing("topic.v1", record)])
    [pending] = store.pending_outgoing()
    assert (pending.topic, pending.record) == ("topic.v1", record)
    store.delete_outgoing([pending.row_id])
    assert store.pending_outgoing() == []
    assert store.is_processed("a:1")
    assert not store.is_processed("a:2")


def cut_connections(postgres_url: str, application_name: str) -> int:
    """`pg_terminate_backend` on every backend of that application name."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return len(rows)


class GatedHandler(RecordingHandler):
    """Holds the first handling of each gate record inside the kit's transaction until the
    test has cut the connection under it."""

    def __init__(self, database: Database, gates: set[str]) -> None:
        super().__init__(database)
        self.gates = gates
        self.held = threading.Event()
        self.released = threading.Event()

    def handle(self, envelope: Envelope, cursor: Cursor) -> HandlerResult:
        result = super().handle(envelope, cursor)
        if envelope.id in self.gates:
            self.gates.discard(envelope.id)
            self.held.set()
            assert self.released.wait(30), "the test never released the gate"
            self.released.clear()
        return result


def test_cut_database_connections_are_waited_out_and_every_record_applies_once(
    postgres_url: str,
    tmp_path: Path,
    log: InProcessPublisher,
    running: list[Running],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    application_name = f"kit-cut-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PGAPPNAME", application_name)  # libpq names the store's connections
    accounts = [uuid.uuid4() for _ in range(1_500)]
    rounds = range(0, len(accounts), 300)
    with service_stores("postgres", tmp_path, postgres_url) as make:
        database = make("kit")
        handler = GatedHandler(database, {f"{accounts[chunk]}:1" for chunk in rounds})
        consumer = make_consumer(log, database, handler)
        running.append(Running(consumer))
        cuts = []
        for chunk in rounds:  # five rounds, each cut inside the transaction handling it
            put(log, TOPICS.lifecycle, *(scout_record(a, 1) for a in accounts[chunk : chunk + 300]))
            assert handler.held.wait(30), "the round's transaction never began"
            handler.held.clear()
            cuts.append(cut_connections(postgres_url, application_name))
            handler.released.set()
            wait_until(lambda n=chunk + 300: consumer.stats.applied == n, "the round applied")
        wait_until(lambda: consumer.healthy and ConsumerStore(database).pending_outgoing() == [])
        assert all(cuts), cuts  # each round terminated the store's connections
        assert consumer.stats.waits >= len(rounds)  # each round met its cut, and waited
        assert consumer.stats.dead_lettered == 0
        assert log.read(TOPICS.dlq("scout"), max_records=10) == []
        assert handler.effects() == sorted(f"{a}:1" for a in accounts)  # each exactly once


def test_pre_published_future_ids_shadow_no_real_record_and_foreign_ids_are_refused(
    log: InProcessPublisher, database: Database, running: list[Running]
) -> None:
    """Issue 19: ids are predictable (`<account>:<version>`), and the kit de-duplicated on the
    id alone, so a record published in advance under a member's next id made the real
    withdrawal a "duplicate". Now the key is (source, type, id), and an id that names another
    account than the record's subject breaks the contract."""
    account, other = uuid.uuid4(), uuid.uuid4()
    real = withdrawal(TOPICS, account, 3)[1]
    # The same id, of another type, and of the same type from another source.
    scout = scout_record(account, 3, "forged")
    elsewhere = Record(
        real.key,
        [(k, b"/intruder" if k == "ce_source" else v) for k, v in real.headers],
        real.value,
    )
    # Another member's id on this member's record.
    foreign = Record(
        real.key,
        [(k, f"{other}:3".encode() if k == "ce_id" else v) for k, v in real.headers],
        real.value,
    )
    put(log, TOPICS.lifecycle, scout, elsewhere, foreign, real, real)
    handler = RecordingHandler(database)
    consumer = make_consumer(log, database, handler)
    running.append(Running(consumer))

    wait_until(
        lambda: (
            consumer.stats.applied + consumer.stats.duplicates + consumer.stats.dead_lettered == 5
        )
    )
    assert consumer.stats.applied == 3  # the forged two and the real withdrawal, each once
    assert consumer.stats.duplicates == 1  # the real one's own repeat
    assert consumer.stats.dead_lettered == 1
    [letter] = log.read(TOPICS.dlq("scout"))
    assert dict(letter.record.headers)[DLQ_ERROR_CODE] == b"contract_violation"


def test_the_loop_forgets_marks_older_than_the_retention_and_younger_ones_still_skip_repeats(
    log: InProcessPublisher, database: Database, running: list[Running]
) -> None:
    account = uuid.uuid4()
    old, recent = scout_record(account, 1, "old"), scout_record(account, 2, "recent")
    put(log, TOPICS.lifecycle, old, recent)
    handler = RecordingHandler(database)
    store = ConsumerStore(database)
    consumer = Consumer(
        "scout",
        InProcessSource(log, [TOPICS.lifecycle]),
        store,
        handler,
        log,
        dlq_topic=TOPICS.dlq("scout"),
        retry=FAST,
        poll_timeout_s=0.05,
        sweep_interval_s=0.0,  # a sweep after every poll
    )
    running.append(Running(consumer))
    wait_until(lambda: consumer.stats.applied == 2)
    assert store.processed_count() == 2
    with database.transaction() as cursor:  # the first mark made long ago
        cursor.execute(
            f"UPDATE {store.processed_table} SET processed_at = %s WHERE ce_id LIKE %s",
            ("2000-01-01 00:00:00+00:00", f"% {account}:1"),
        )

    wait_until(lambda: store.processed_count() == 1, "the old mark forgotten")
    put(log, TOPICS.lifecycle, recent)  # redelivered within the retention: still a repeat
    wait_until(lambda: consumer.stats.duplicates == 1)
    assert handler.effects() == [f"{account}:1", f"{account}:2"]
