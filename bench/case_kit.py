"""The consumer kit's throughput: the scout service over Kafka, with one and two group members.

Scout records for many accounts are produced to a topic of several partitions, then one or two
members of a fresh group (a fresh store schema each repetition), each in a process of its own,
consume them to the end. The rate counts from the first record applied to the last, so the
group's join is not measured; per member is the group's rate divided by its members. The
baseline is raw kafka-python reading the same records with no effect, from a group of one.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.core import Context, Row, Target, log
from consumers import scout
from consumers.kit import Consumer
from consumers.migrations import service_components
from consumers.store import ConsumerStore, open_database
from lifecycle.kafka.admin import TopicSettings, ensure_topics
from lifecycle.kafka.producer import KafkaPublisher
from lifecycle.kafka.source import KafkaSource
from lifecycle.logs import configure_logging
from lifecycle.migrator import migrate
from schemas.contract import ScoutReceivedV1, TopicNames, encode_record

PARTITIONS = 4
TARGET_PER_MEMBER = 2_000.0


def produce(bootstrap: str, topics: TopicNames, count: int) -> None:
    publisher = KafkaPublisher(bootstrap, client_id="bench-kit")
    accounts = [uuid.uuid4() for _ in range(max(1, count // 10))]
    now = datetime.now(UTC)
    try:
        for n in range(count):
            account = accounts[n % len(accounts)]
            record = encode_record(
                ScoutReceivedV1(
                    account_id=account,
                    scout_id=f"s{n}",
                    company_id="c1",
                    job_id="j1",
                    received_at=now,
                ),
                ce_id=f"{account}:{n + 2}",
                subject=str(account),
                time=now,
            )
            publisher.publish(topics.lifecycle, record.key, record.headers, record.value)
        publisher.flush()
    finally:
        publisher.close()


def member(
    *,
    bootstrap: str,
    database_url: str,
    schema: str,
    prefix: str,
    group: str,
    applied: Any,
    ready: Any,
    stop: Any,
) -> None:
    """One group member in a process of its own (as `lifecycle consume scout` runs)."""
    configure_logging("json", "WARNING")
    topics = TopicNames(prefix=prefix)
    database = open_database(database_url, schema)
    publisher = KafkaPublisher(bootstrap, client_id=f"{group}-outbox")
    source = KafkaSource(bootstrap, [topics.lifecycle], group)
    consumer = Consumer(
        "scout",
        source,
        ConsumerStore(database),
        scout.ScoutHandler(database, topics),
        publisher,
        dlq_topic=topics.dlq("scout"),
        poll_timeout_s=0.2,
    )
    halt = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(halt,))
    ready.wait(60)  # every member polls (joins the group) at the same moment
    thread.start()
    while not stop.wait(0.002):
        applied.value = consumer.stats.applied + consumer.stats.duplicates
    applied.value = consumer.stats.applied + consumer.stats.duplicates
    halt.set()
    thread.join(timeout=30)
    publisher.close()
    database.close()


def kit_pass(ctx: Context, topics: TopicNames, count: int, members: int) -> float:
    """Records per second of a group of `members` scout consumers, one process each, from the
    first record applied to the last."""
    assert ctx.kafka_bootstrap
    tag = uuid.uuid4().hex[:8]
    schema = f"bench_kit_{tag}"
    group = topics.group_id(f"bench-kit-{tag}")
    store = open_database(ctx.database_url, schema)
    migrate(store, service_components("scout"))  # `lifecycle migrate --service scout`
    store.close()
    spawn = multiprocessing.get_context("spawn")
    ready, stop = spawn.Barrier(members + 1), spawn.Event()
    counters = [spawn.Value("q", 0) for _ in range(members)]
    processes = [
        spawn.Process(
            target=member,
            kwargs={
                "bootstrap": ctx.kafka_bootstrap,
                "database_url": ctx.database_url,
                "schema": schema,
                "prefix": topics.prefix,
                "group": group,
                "applied": counter,
                "ready": ready,
                "stop": stop,
            },
        )
        for counter in counters
    ]
    try:
        for process in processes:
            process.start()
        ready.wait(120)  # each process imported and built its member
        first_at, first_count = 0.0, 0
        deadline = time.monotonic() + 120
        while True:
            applied = sum(counter.value for counter in counters)
            now = time.monotonic()
            if applied and not first_at:
                first_at, first_count = now, applied
            if applied >= count or now > deadline:
                break
            time.sleep(0.002)
        if applied < count:
            raise RuntimeError(f"kit consumed {applied} of {count} records in 120 s")
        return (count - first_count) / max(now - first_at, 1e-6)
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=30)
        with psycopg.connect(ctx.database_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def raw_pass(ctx: Context, topics: TopicNames, count: int) -> float:
    """kafka-python alone reading the records, no effect and no commit: the ceiling."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topics.lifecycle,
        bootstrap_servers=ctx.kafka_bootstrap,
        group_id=topics.group_id(f"bench-raw-{uuid.uuid4().hex[:8]}"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
    )
    try:
        seen, first_at, first_count = 0, 0.0, 0
        deadline = time.monotonic() + 120
        while seen < count and time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=200)
            seen += sum(len(batch) for batch in batches.values())
            if seen and not first_at:
                first_at, first_count = time.monotonic(), seen  # from the first record on
        return (seen - first_count) / max(time.monotonic() - first_at, 1e-6)
    finally:
        consumer.close()


def run(ctx: Context) -> list[Row]:
    if not ctx.kafka_bootstrap:
        ctx.note("kit", "skipped: no Kafka (LIFECYCLE_KAFKA_BOOTSTRAP)")
        return []
    count = 10_000 if ctx.quick else 40_000
    topics = TopicNames(prefix=f"bench{uuid.uuid4().hex[:8]}.")
    ensure_topics(ctx.kafka_bootstrap, topics, TopicSettings(partitions=PARTITIONS))
    log(f"  producing {count} scout records over {PARTITIONS} partitions")
    produce(ctx.kafka_bootstrap, topics, count)
    raw = [raw_pass(ctx, topics, count) for _ in range(ctx.repeats)]
    rows: list[Row] = []
    for members in (1, 2):
        group_rates = [kit_pass(ctx, topics, count, members) for _ in range(ctx.repeats)]
        log(f"  {members} member(s): {', '.join(f'{r:,.0f}' for r in group_rates)} records/s")
        rows.append(
            Row(
                case="kit",
                variant=f"scout, {members} member(s), per member",
                unit="records/s",
                samples=[rate / members for rate in group_rates],
                baseline=raw if members == 1 else None,
                baseline_name="raw kafka-python read" if members == 1 else "",
                target=Target("at_least", TARGET_PER_MEMBER),
                note=f"group: {', '.join(f'{r:,.0f}' for r in group_rates)}/s",
            )
        )
    ctx.note(
        "kit",
        f"{count} ScoutReceived records, {PARTITIONS} partitions, PostgreSQL store; a batch per "
        "poll (<= 500), one transaction and one offset commit each",
    )
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=ctx.kafka_bootstrap)
    try:
        admin.delete_topics(list(topics.all()))
    finally:
        admin.close()
    return rows
