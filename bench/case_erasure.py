"""Case 4, erasure latency: `WithdrawalRequested` stored to `Purged` stored, p50/p99/max.

The pipeline runs as five processes, each as the CLI runs it (`bench.erasure_workers`):
relay, the scout, chat and mail reference consumers, and the erasure consumer, on topics
of their own. This process drives the load through `Accounts`: a steady 20 withdrawals/s
over a background of registrations and scouts, each stream paced on its own thread.

Latency of one erasure = `Purged` event's timestamp - `WithdrawalRequested` event's
timestamp; both are taken by the writer just before its save, on the same clock. Suppression
latency (its own row) = `WithdrawalRequested` stored -> the mail service's suppression
committed; each run also logs where the time went, per stage (`bench.erasure_stages`).
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg

from bench.core import Context, Row, Target, fresh_schema, log, percentile
from bench.erasure_stages import Stamps, describe, stages_ms, suppression_ms
from bench.erasure_workers import Pipeline
from bench.workload import (
    REGISTERED_EVENTS,
    bench_settings,
    fast_registration_kwargs,
    generate_log,
    open_accounts,
    unique_email,
)
from lifecycle.application import Accounts
from lifecycle.domain import Account
from lifecycle.kafka.admin import ensure_topics
from schemas.contract import ERASING_SERVICES, TopicNames

WITHDRAWALS_PER_S = 20.0
REGISTRATIONS_PER_S = 20.0
SCOUTS_PER_S = 40.0
TARGET_P99_MS = Target("at_most", 500.0)
SUPPRESSION_TARGET_P99_MS = Target("at_most", 200.0)
DRAIN_TIMEOUT_S = 90.0


def paced(rate: float, seconds: float, operation: Callable[[int], object]) -> tuple[int, int]:
    """Call `operation(i)` at `rate` per second for `seconds`; late calls run at once."""
    started = time.perf_counter()
    count = errors = 0
    while True:
        due = started + count / rate
        if due - started >= seconds:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            operation(count)
        except Exception:
            errors += 1
        count += 1
    return count, errors


def consumer_lag(bootstrap: str, topics: TopicNames) -> int:
    """Records on their topics not yet committed by the four consumer groups."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    from consumers import chat, mail, scout

    subscribed = {
        f"{topics.prefix}scout": scout.subscribed_topics(topics),
        f"{topics.prefix}chat": chat.subscribed_topics(topics),
        f"{topics.prefix}mail": mail.subscribed_topics(topics),
        f"{topics.prefix}lifecycle-erasure": list(topics.confirmations.values()),
    }
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-lag")
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="bench-lag")
    try:
        committed: dict[str, Any] = admin.list_group_offsets(list(subscribed))
        lag = 0
        for group, names in subscribed.items():
            offsets = committed.get(group) or {}
            partitions = [
                TopicPartition(topic, p)
                for topic in names
                for p in consumer.partitions_for_topic(topic) or ()
            ]
            ends = consumer.end_offsets(partitions)
            for partition in partitions:
                meta = offsets.get(partition)
                done = meta.offset if meta is not None and meta.offset >= 0 else 0
                lag += max(0, ends.get(partition, 0) - done)
        return lag
    finally:
        consumer.close()
        admin.close()


def relay_lag(accounts: Accounts) -> int:
    head = accounts.recorder.max_notification_id() or 0
    with accounts.database.transaction(commit=False) as cursor:
        try:
            row = cursor.execute(
                f"SELECT position FROM {accounts.database.table('relay_position')} WHERE name = %s",
                ("kafka",),
            ).fetchone()
        except Exception:
            return head
    return head - (int(row[0]) if row else 0)


def wait_idle(ctx: Context, accounts: Accounts, topics: TopicNames, pipeline: Pipeline) -> None:
    deadline = time.monotonic() + 180
    idle = 0
    while time.monotonic() < deadline:
        pipeline.check()
        if relay_lag(accounts) == 0 and consumer_lag(ctx.kafka_bootstrap, topics) == 0:
            idle += 1
            if idle == 2:
                return
        else:
            idle = 0
        time.sleep(0.5)
    raise RuntimeError("erasure pipeline did not catch up with the backlog in 180 s")


def purged_count(accounts: Accounts, ids: list[UUID]) -> int:
    from eventsourcing.utils import get_topic

    with accounts.database.transaction(commit=False) as cursor:
        row = cursor.execute(
            f"SELECT count(*) FROM {accounts.database.events_table} "
            "WHERE topic = %s AND originator_id = ANY(%s)",
            (get_topic(Account.Purged), ids),
        ).fetchone()
    return int(row[0]) if row else 0


def erasure_stamps(accounts: Accounts, ids: list[UUID]) -> tuple[Stamps, dict[UUID, datetime]]:
    """(withdrawn_at, purged_at) of those purged; withdrawn_at of every one withdrawn."""
    purged: Stamps = {}
    withdrawn: dict[UUID, datetime] = {}
    for account_id in ids:
        account = accounts.load_for_audit(account_id)
        if account.withdrawn_at is None:
            continue
        withdrawn[account_id] = account.withdrawn_at
        if account.purged_at is not None:
            purged[account_id] = (account.withdrawn_at, account.purged_at)
    return purged, withdrawn


def one_run(
    ctx: Context,
    accounts: Accounts,
    withdraw: list[UUID],
    scouted: list[UUID],
    seconds: float,
    *,
    pipeline: Pipeline,
    topics: TopicNames,
    background: bool = True,
) -> dict[str, Any]:
    withdrawn: list[UUID] = []
    results: dict[str, tuple[int, int]] = {}

    def withdrawals() -> None:
        def one(i: int) -> None:
            account_id = withdraw.pop()
            accounts.request_withdrawal(account_id, reason="hired_elsewhere")
            withdrawn.append(account_id)

        results["withdrawals"] = paced(WITHDRAWALS_PER_S, seconds, one)

    def registrations() -> None:
        results["registrations"] = paced(
            REGISTRATIONS_PER_S,
            seconds,
            lambda i: accounts.register(**fast_registration_kwargs(unique_email("e"))),
        )

    def scouts() -> None:
        run_id = uuid.uuid4().hex[:8]
        results["scouts"] = paced(
            SCOUTS_PER_S,
            seconds,
            lambda i: accounts.receive_scout(
                scouted[i % len(scouted)],
                scout_id=f"b-{run_id}-{i}",
                company_id=f"c-{i % 50}",
                job_id=f"j-{i}",
            ),
        )

    streams = (withdrawals, registrations, scouts) if background else (withdrawals,)
    threads = [threading.Thread(target=t) for t in streams]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while purged_count(accounts, withdrawn) < len(withdrawn) and time.monotonic() < deadline:
        time.sleep(0.25)
    purged, withdrawn_at = erasure_stamps(accounts, withdrawn)
    found = [(p - w).total_seconds() * 1000 for w, p in purged.values()]
    suppression, unsuppressed = suppression_ms(pipeline.log_of("mail"), withdrawn_at)
    stages = stages_ms(ctx.kafka_bootstrap, topics, purged, ERASING_SERVICES)
    return {
        "latencies_ms": found,
        "missing": len(withdrawn) - len(found),
        "suppression_ms": suppression,
        "unsuppressed": unsuppressed,
        "stages": describe(stages),
        "elapsed_s": elapsed,
        "rates": {
            name: results[name][0] / elapsed if name in results else 0.0
            for name in ("withdrawals", "registrations", "scouts")
        },
        "errors": {name: errors for name, (_, errors) in results.items()},
        "background": background,
    }


def run(ctx: Context) -> list[Row]:
    if not ctx.kafka_bootstrap:
        raise RuntimeError("no Kafka (LIFECYCLE_KAFKA_BOOTSTRAP)")
    runs = 1 if ctx.quick else 3
    seconds = 4.0 if ctx.quick else 20.0
    warmup = 1.0 if ctx.quick else 3.0
    scouted_members = 20 if ctx.quick else 200
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    topics = TopicNames(prefix=prefix)
    ensure_topics(ctx.kafka_bootstrap, topics)
    measured: list[dict[str, Any]] = []
    # The full run adds one run of withdrawals alone: the pipeline's own latency, unloaded.
    quiet_runs = 0 if ctx.quick else 1
    quiet: list[dict[str, Any]] = []
    try:
        with fresh_schema(ctx.database_url, "erasure") as schema:
            settings = bench_settings(ctx.database_url, schema)
            accounts = open_accounts(settings)
            pipeline = Pipeline(ctx, schema, prefix, settings.resolved_master_key())
            try:
                wanted = int(WITHDRAWALS_PER_S * (seconds * (runs + quiet_runs) + warmup)) + 10
                # Members that only registered: the backlog every consumer must work through
                # before the first run stays short.
                pool = generate_log(
                    accounts,
                    REGISTERED_EVENTS * (wanted + scouted_members),
                    keep_ids=True,
                    registered_only=True,
                ).account_ids
                withdraw, scouted = pool[:wanted], pool[wanted:]
                log(f"erasure: {len(pool)} members; starting relay, erasure, {ERASING_SERVICES}")
                pipeline.start()
                wait_idle(ctx, accounts, topics, pipeline)
                log(f"erasure: warm-up ({warmup:g} s)")
                one_run(ctx, accounts, withdraw, scouted, warmup, pipeline=pipeline, topics=topics)
                for index in range(runs):
                    wait_idle(ctx, accounts, topics, pipeline)
                    log(f"erasure: run {index + 1}/{runs}, {seconds:g}s at 20 withdrawals/s")
                    result = one_run(
                        ctx, accounts, withdraw, scouted, seconds, pipeline=pipeline, topics=topics
                    )
                    pipeline.check()
                    lat = result["latencies_ms"]
                    sup = result["suppression_ms"]
                    log(
                        f"erasure: {len(lat)} purged, {result['missing']} not within "
                        f"{DRAIN_TIMEOUT_S:g}s; p50 {percentile(lat, 0.5):.0f} ms, "
                        f"p99 {percentile(lat, 0.99):.0f} ms; suppression p50 "
                        f"{percentile(sup, 0.5):.0f} ms, p99 {percentile(sup, 0.99):.0f} ms; "
                        f"{result['stages']}; rates {result['rates']}"
                    )
                    measured.append(result)
                for _ in range(quiet_runs):
                    wait_idle(ctx, accounts, topics, pipeline)
                    log(f"erasure: {seconds:g}s at 20 withdrawals/s without background load")
                    quiet.append(
                        one_run(
                            ctx,
                            accounts,
                            withdraw,
                            scouted,
                            seconds,
                            pipeline=pipeline,
                            topics=topics,
                            background=False,
                        )
                    )
            finally:
                pipeline.stop()
                accounts.close()
                with psycopg.connect(ctx.database_url, autocommit=True) as conn:
                    for name in ERASING_SERVICES:
                        conn.execute(f"DROP SCHEMA IF EXISTS {schema}_{name} CASCADE")
    finally:
        from bench.case_relay import delete_topics

        delete_topics(ctx.kafka_bootstrap, list(topics.all()))

    rows = [*_rows(measured, seconds), *_quiet_rows(quiet)]
    ctx.extra["erasure"] = {
        "runs": [
            {k: v for k, v in r.items() if k not in ("latencies_ms", "suppression_ms")}
            | {
                "p50_ms": percentile(r["latencies_ms"], 0.5),
                "p99_ms": percentile(r["latencies_ms"], 0.99),
                "max_ms": max(r["latencies_ms"], default=float("nan")),
                "suppression_p50_ms": percentile(r["suppression_ms"], 0.5),
                "suppression_p99_ms": percentile(r["suppression_ms"], 0.99),
            }
            for r in [*measured, *quiet]
        ],
        "finished": datetime.now(UTC).isoformat(),
    }
    ctx.note(
        "erasure",
        "pipeline: relay, erasure, scout, chat, mail as 5 processes (lifecycle.workers entry "
        "points, INFO logging); load from this process through Accounts, each stream paced on "
        "its own thread; latency = Purged.timestamp - WithdrawalRequested.timestamp; "
        "suppressed = the mail service's `mail.suppressed` line, logged after its commit",
    )
    return rows


def _rows(measured: list[dict[str, Any]], seconds: float) -> list[Row]:
    def stat(
        share: float | None, key: str = "latencies_ms", absent: str = "missing"
    ) -> list[float]:
        """Per run; an erasure that never completed counts as infinitely late."""
        values = []
        for result in measured:
            lat = result[key] + [float("inf")] * result[absent]
            values.append(max(lat) if share is None else percentile(lat, share))
        return values

    total = sum(len(r["latencies_ms"]) for r in measured)
    missing = sum(r["missing"] for r in measured)
    rates = {
        name: statistics.mean(r["rates"][name] for r in measured)
        for name in ("withdrawals", "registrations", "scouts")
    }
    load = (
        f"{rates['withdrawals']:.1f} withdrawals/s over {rates['registrations']:.0f} reg/s + "
        f"{rates['scouts']:.0f} scouts/s"
    )
    rows = [
        Row(
            case="erasure",
            variant="withdrawal->purged p50",
            unit="ms",
            samples=stat(0.5),
            lower_is_better=True,
            note=f"{total} erasures in {len(measured)} run(s) of {seconds:g}s",
        ),
        Row(
            case="erasure",
            variant="withdrawal->purged p99",
            unit="ms",
            samples=stat(0.99),
            target=TARGET_P99_MS,
            lower_is_better=True,
            note=load,
        ),
        Row(
            case="erasure",
            variant="withdrawal->purged max",
            unit="ms",
            samples=stat(None),
            lower_is_better=True,
            note=f"{missing} not purged within {DRAIN_TIMEOUT_S:g}s" if missing else "",
        ),
        Row(
            case="erasure",
            variant="withdrawal->suppressed p99",
            unit="ms",
            samples=stat(0.99, "suppression_ms", "unsuppressed"),
            target=SUPPRESSION_TARGET_P99_MS,
            lower_is_better=True,
            note="stored -> mail suppression committed; p50 "
            + "/".join(f"{v:.0f}" for v in stat(0.5, "suppression_ms", "unsuppressed"))
            + " ms",
        ),
    ]
    return rows


def _quiet_rows(quiet: list[dict[str, Any]]) -> list[Row]:
    rows = []
    for result in quiet:
        lat = result["latencies_ms"] + [float("inf")] * result["missing"]
        for name, share in (("p50", 0.5), ("p99", 0.99)):
            rows.append(
                Row(
                    case="erasure",
                    variant=f"  {name}, withdrawals alone",
                    unit="ms",
                    samples=[percentile(lat, share)],
                    lower_is_better=True,
                    note="same pipeline, no background load (diagnostic)",
                )
            )
    return rows
