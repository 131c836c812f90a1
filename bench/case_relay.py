"""Case 3, relay: events per second from the notification log to Kafka.

The log is a realistic mix (bench.workload.generate_log). Each measured pass is a relay of
its own (its own name, so it starts at position 0) over a fresh `Accounts` (cold key cache,
as a separate `lifecycle relay` process would have), publishing through `KafkaPublisher`
until its position reaches the end of the log. Baseline: kafka-python's producer with the
same settings (the KafkaPublisher's own config) sending the very records the relay sent, with
one flush at the end. For context, Kafka's own `ProducerPerformance` (Java) sends the same
number of records of the same mean size with the same acks/idempotence/linger settings.

Latency: a relay running live (`Relay.run`, idle between commits) while members register at
a steady rate; each event's time from its commit (its timestamp) to Kafka's acknowledgement,
as the relay reports it. Once woken by NOTIFY (the default on PostgreSQL), once with the
poll-only fallback the relay used before (sleep `poll_interval_s` between polls).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lifecycle.relay
from bench.core import ROOT, Context, Row, Target, fresh_schema, log, percentile
from bench.workload import bench_settings, generate_log, open_accounts, registration_kwargs
from lifecycle.kafka.admin import TopicSettings, ensure_topics
from lifecycle.kafka.producer import KafkaPublisher
from lifecycle.notify import LogWaiter
from lifecycle.relay import Relay
from schemas.contract import TopicNames

TARGET = Target("ratio_at_least", 0.8)  # issue 12
# The Java tool runs long enough to leave the JVM's warm-up behind.
JAVA_RECORDS = 200_000
KAFKA_TOOLS_LIBS = ROOT / ".services" / "kafka-tools-libs"
KAFKA_TOOLS_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>lifecycle.local</groupId>
  <artifactId>kafka-tools-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>@VERSION@</version>
    </dependency>
  </dependencies>
</project>
"""

Captured = tuple[str, bytes, list[tuple[str, bytes]], bytes | None]


class RecordingPublisher:
    """Publishes through the real publisher and keeps a copy of every record."""

    def __init__(self, inner: KafkaPublisher, keep: bool) -> None:
        self.inner = inner
        self.keep = keep
        self.records: list[Captured] = []

    def publish(
        self, topic: str, key: bytes, headers: Sequence[tuple[str, bytes]], value: bytes | None
    ) -> None:
        if self.keep:
            self.records.append((topic, key, list(headers), value))
        self.inner.publish(topic, key, headers, value)

    def flush(self) -> None:
        self.inner.flush()


def relay_pass(ctx: Context, settings: Any, topics: TopicNames, keep: bool) -> tuple[float, Any]:
    """One relay from position 0 to the end of the log: (seconds, recording publisher)."""
    accounts = open_accounts(settings)
    publisher = RecordingPublisher(KafkaPublisher(ctx.kafka_bootstrap), keep)
    relay = Relay(
        accounts, publisher, name=f"bench-{uuid.uuid4().hex[:8]}", topics=topics, batch_size=200
    )
    last = accounts.recorder.max_notification_id() or 0
    try:
        started = time.perf_counter()
        while relay.position < last:
            if relay.run_once() == 0 and relay.position < last:
                raise RuntimeError("relay made no progress (lock held elsewhere?)")
        seconds = time.perf_counter() - started
    finally:
        relay.close()
        publisher.inner.close()
        accounts.close()
    return seconds, publisher


@contextmanager
def poll_only() -> Iterator[None]:
    """The relay as it was before NOTIFY: it sleeps the poll interval whenever idle."""
    wake = lifecycle.relay.waiter_for
    lifecycle.relay.waiter_for = lambda _recorder, stop, poll: LogWaiter(stop, poll)
    try:
        yield
    finally:
        lifecycle.relay.waiter_for = wake


def latency_pass(ctx: Context, topics: TopicNames, seconds: float, rate: float) -> list[float]:
    """A live relay over a fresh log while members register at `rate`/s: each event's
    commit-to-ack seconds."""
    with fresh_schema(ctx.database_url, "relay_live") as schema:
        return _latency_pass(ctx, bench_settings(ctx.database_url, schema), topics, seconds, rate)


def _latency_pass(
    ctx: Context, settings: Any, topics: TopicNames, seconds: float, rate: float
) -> list[float]:
    accounts = open_accounts(settings)
    publisher = KafkaPublisher(ctx.kafka_bootstrap)
    waits: list[float] = []
    relay = Relay(
        accounts,
        publisher,
        name=f"bench-live-{uuid.uuid4().hex[:8]}",
        topics=topics,
        observe_ack_latency=waits.append,
    )
    stop = threading.Event()
    try:
        runner = threading.Thread(target=relay.run, args=(stop,), daemon=True)
        runner.start()
        pause = threading.Event()
        started = time.monotonic()
        written = 0
        while time.monotonic() - started < seconds:
            accounts.register(**registration_kwargs(f"live-{uuid.uuid4().hex}@example.jp"))
            written += 1
            pause.wait(max(0.0, started + written / rate - time.monotonic()))
        head = accounts.recorder.max_notification_id() or 0
        deadline = time.monotonic() + 30
        while relay.position < head and time.monotonic() < deadline:
            pause.wait(0.01)
    finally:
        stop.set()
        relay.close()
        publisher.close()
        accounts.close()
    return waits


def latency_rows(ctx: Context, topics: TopicNames) -> tuple[list[Row], list[float], list[float]]:
    """Commit-to-ack percentiles, woken by NOTIFY against the poll-only fallback."""
    live_s, rate = (3.0, 20.0) if ctx.quick else (10.0, 20.0)
    log(f"relay: live latency, {rate:.0f} registrations/s for {live_s:.0f}s, NOTIFY")
    notified = latency_pass(ctx, topics, live_s, rate)
    log("relay: live latency, poll only (the fallback, as before)")
    with poll_only():
        polled = latency_pass(ctx, topics, live_s, rate)
    rows = [
        Row(
            case="relay",
            variant=f"commit -> Kafka ack p{share * 100:.0f}",
            unit="ms",
            samples=[1000 * percentile(notified, share)],
            baseline=[1000 * percentile(polled, share)],
            baseline_name="poll only (0.5 s)",
            lower_is_better=True,
            note=f"{len(notified)} events at {rate:.0f}/s, woken by NOTIFY",
        )
        for share in (0.5, 0.99)
    ]
    return rows, notified, polled


def raw_pass(ctx: Context, records: list[Captured]) -> float:
    """kafka-python, the relay publisher's settings, the same records, one flush at the end."""
    from kafka import KafkaProducer

    config = dict(KafkaPublisher(ctx.kafka_bootstrap)._config)
    started = time.perf_counter()
    producer = KafkaProducer(**config)
    futures = [
        producer.send(topic, key=key, value=value, headers=headers)
        for topic, key, headers, value in records
    ]
    producer.flush(timeout=60)
    seconds = time.perf_counter() - started
    failed = sum(1 for future in futures if future.failed())
    producer.close(timeout=10)
    if failed:
        raise RuntimeError(f"raw kafka-python: {failed} records failed")
    return seconds


def ensure_kafka_tools(kafka_version: str) -> Path | None:
    """kafka-tools (ProducerPerformance) and its dependencies, fetched once with mvn."""
    stamp = KAFKA_TOOLS_LIBS / ".stamp"
    if stamp.exists() and stamp.read_text().strip() == f"kafka-tools={kafka_version}":
        return KAFKA_TOOLS_LIBS
    with tempfile.TemporaryDirectory(prefix="bench-kafka-tools-") as work:
        pom = Path(work) / "pom.xml"
        pom.write_text(KAFKA_TOOLS_POM.replace("@VERSION@", kafka_version))
        target = Path(work) / "libs"
        done = subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                "-Dstyle.color=never",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={target}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not any(target.glob("kafka-tools-*.jar")):
            log(f"relay: mvn could not fetch kafka-tools: {done.stdout[-500:]}{done.stderr[-500:]}")
            return None
        if KAFKA_TOOLS_LIBS.exists():
            for old in KAFKA_TOOLS_LIBS.iterdir():
                old.unlink()
        KAFKA_TOOLS_LIBS.mkdir(parents=True, exist_ok=True)
        for jar in target.iterdir():
            jar.rename(KAFKA_TOOLS_LIBS / jar.name)
    stamp.write_text(f"kafka-tools={kafka_version}\n")
    return KAFKA_TOOLS_LIBS


def producer_performance(
    libs: Path, bootstrap: str, topic: str, records: int, record_size: int
) -> float | None:
    """Records/s reported by Kafka's ProducerPerformance with the relay's producer settings."""
    command = [
        "java",
        "-Xmx512M",
        "-cp",
        f"{libs}/*",
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--record-size",
        str(record_size),
        "--throughput",
        "-1",
        "--producer-props",
        f"bootstrap.servers={bootstrap}",
        "acks=all",
        "enable.idempotence=true",
        "linger.ms=5",
        "max.in.flight.requests.per.connection=5",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    found = re.findall(r"(\d+) records sent, ([\d.]+) records/sec", done.stdout)
    if done.returncode != 0 or not found:
        log(f"relay: ProducerPerformance failed: {done.stderr[-800:]}")
        return None
    return float(found[-1][1])


def delete_topics(bootstrap: str, names: list[str]) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
    try:
        admin.delete_topics(names, timeout_ms=30_000)
    except Exception as error:  # leftovers only cost disk on a throwaway broker
        log(f"relay: could not delete topics: {error}")
    finally:
        admin.close()


def run(ctx: Context) -> list[Row]:
    if not ctx.kafka_bootstrap:
        raise RuntimeError("no Kafka (LIFECYCLE_KAFKA_BOOTSTRAP)")
    events = 3_000 if ctx.quick else 20_000
    topics = TopicNames(prefix=f"bench-{uuid.uuid4().hex[:8]}.")
    ensure_topics(ctx.kafka_bootstrap, topics, TopicSettings())
    rows: list[Row] = []
    try:
        with fresh_schema(ctx.database_url, "relay") as schema:
            settings = bench_settings(ctx.database_url, schema)
            accounts = open_accounts(settings)
            try:
                generated = generate_log(accounts, events)
            finally:
                accounts.close()
            log(
                f"relay: log of {generated.events} events ({generated.account_events} account "
                f"events) in {generated.seconds:.1f}s; warm-up pass"
            )
            _, recorder = relay_pass(ctx, settings, topics, keep=True)
            records: list[Captured] = recorder.records
            raw_pass(ctx, records)
            relay_seconds: list[float] = []
            raw_seconds: list[float] = []
            for index in range(ctx.repeats):
                log(f"relay: pass {index + 1}/{ctx.repeats}, relay then raw kafka-python")
                relay_seconds.append(relay_pass(ctx, settings, topics, keep=False)[0])
                raw_seconds.append(raw_pass(ctx, records))
        count = generated.account_events
        rows.append(
            Row(
                case="relay",
                variant="log -> Kafka",
                unit="events/s",
                samples=[count / s for s in relay_seconds],
                baseline=[count / s for s in raw_seconds],
                baseline_name="kafka-python, same records",
                target=TARGET,
                note=f"{count} account events -> {len(records)} records, "
                f"{generated.events} notifications",
            )
        )
        record_bytes = [
            len(key) + len(value or b"") + sum(len(n) + len(v) for n, v in headers)
            for _, key, headers, value in records
        ]
        mean_size = round(statistics.mean(record_bytes))
        raw_records_per_s = [len(records) / s for s in raw_seconds]
        java: list[float] = []
        java_records = max(len(records), JAVA_RECORDS)
        libs = None if ctx.quick else ensure_kafka_tools(ctx.versions.get("kafka", "4.4.0"))
        if ctx.quick:
            ctx.note("relay", "Kafka's ProducerPerformance runs in the full run only")
        elif libs is None:
            ctx.note("relay", "Kafka's ProducerPerformance unavailable: mvn could not fetch it")
        else:
            log(f"relay: Kafka ProducerPerformance, {java_records} records of {mean_size} B")
            for _ in range(3):
                found = producer_performance(
                    libs, ctx.kafka_bootstrap, topics.lifecycle, java_records, mean_size
                )
                if found is not None:
                    java.append(found)
        rows.append(
            Row(
                case="relay",
                variant="raw kafka-python (context)",
                unit="records/s",
                samples=raw_records_per_s,
                baseline=java or None,
                baseline_name="Kafka ProducerPerformance (Java)",
                note=f"{len(records)} records, mean {mean_size} B incl. key+headers",
            )
        )
        latency, notified, polled = latency_rows(ctx, topics)
        rows.extend(latency)
        ctx.extra["relay"] = {
            "events": generated.events,
            "account_events": count,
            "records": len(records),
            "mean_record_bytes": mean_size,
            "relay_seconds": relay_seconds,
            "raw_seconds": raw_seconds,
            "java_records_per_s": java,
            "ack_latency_notify_s": notified,
            "ack_latency_poll_s": polled,
        }
        ctx.note(
            "relay",
            "each relay pass: new Accounts (cold key cache), Relay(batch_size=200) from "
            "position 0 through KafkaPublisher (acks=all, idempotent, linger 5 ms); raw: same "
            "producer config, same records, one flush; ProducerPerformance: --record-size = "
            "mean record bytes, at least 200k records (JVM warm-up), acks=all, idempotence, "
            "linger.ms=5, no headers",
        )
    finally:
        delete_topics(ctx.kafka_bootstrap, list(topics.all()))
    return rows
