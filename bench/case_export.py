"""Case export: a data export from request to ready, p50/p99, on both backends; and the
download's peak memory for a member with 10,000 scouts and 2,000 chat messages.

The service runs as `lifecycle serve` does with Kafka off (`start_workers`: the relay
publishes the request from the event store, the intake takes the parts in), on SQLite and on
PostgreSQL. The services' answers come from `answering_services` (each section sealed to the
export's key at once, as the reference services do), so the figure is the service side's:
request stored -> the last part recorded and the export ready (the aggregate's own two
timestamps, taken by the same clock).

Baseline: the cryptography alone, sealing and opening the same sections in this process
(`seal_part` + `open_part`), no store, no log.

Memory: `tracemalloc`'s peak while the 10,000-scout, 2,000-message document streams (one
chunk opened at a time; the peak is per chunk, so it does not grow with the document).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.core import Context, Row, Target, fresh_schema, log, percentile
from bench.workload import bench_settings, open_accounts
from lifecycle.application import Accounts
from lifecycle.bootstrap import build_data_exports, migrate_lifecycle, migrate_service
from lifecycle.crypto import new_master_key
from lifecycle.data_export.service import DataExports
from lifecycle.data_export_aggregate import ExportStatus
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.source import InProcessSource
from lifecycle.sealed_box import new_key_pair, open_part, seal_part
from lifecycle.settings import Settings
from lifecycle.workers import start_workers
from schemas.contract import ERASING_SERVICES, TopicNames, decode_record
from schemas.data_export import ExportRequestedV1, encode_export_part

EXPORTS, QUICK_EXPORTS = 100, 20
SCOUTS_PER_MEMBER = 50
BIG_SCOUTS, BIG_MESSAGES = 10_000, 2_000
TARGET_P99_MS = Target("at_most", 2_000.0)
# The download holds one chunk (256 KiB) and its opened forms at a time, whatever the
# document's size: a bound in MiB (traced across the process's threads, workers included).
MEMORY_TARGET_MIB = Target("at_most", 16.0)
READY_TIMEOUT_S = 60.0
WHEN = "2026-04-01T09:30:00Z"


def sections(scouts: int, messages: int) -> dict[str, dict[str, Any]]:
    return {
        "scout": {
            "scouts": [
                {
                    "scout_id": f"scout-{n:06d}",
                    "company_id": f"company-{n % 97}",
                    "job_id": f"job-{n:06d}",
                    "received_at": WHEN,
                }
                for n in range(scouts)
            ]
        },
        "chat": {
            "threads": [
                {
                    "thread_id": f"thread-{t}",
                    "company_id": f"company-{t}",
                    "opened_at": WHEN,
                    "messages": [
                        {
                            "message_id": f"m-{t}-{n}",
                            "sender": "member" if n % 2 else "company",
                            "body": f"Message {n} about the position, with some detail " * 2,
                            "sent_at": WHEN,
                        }
                        for n in range(messages // 20)
                    ],
                }
                for t in range(20)
            ]
        },
        "mail": {"contact": None, "notices": []},
    }


def answering_services(
    publisher: InProcessPublisher, topics: TopicNames, answer: dict[str, bytes]
) -> tuple[threading.Event, threading.Thread]:
    """Answer every request at once, as each service would: its section sealed, on its topic."""
    stop = threading.Event()
    source = InProcessSource(publisher, [topics.export_requested])

    def run() -> None:
        while not stop.is_set():
            for incoming in source.poll(0.05):
                request = decode_record(incoming.headers, incoming.value, incoming.topic).data
                assert isinstance(request, ExportRequestedV1)
                for service, section in answer.items():
                    for part in seal_part(
                        request.public_key,
                        section,
                        export_id=request.export_id,
                        account_id=request.account_id,
                        service=service,
                    ):
                        record = encode_export_part(part)
                        publisher.publish(
                            topics.export_part(service), record.key, record.headers, record.value
                        )
                publisher.flush()

    thread = threading.Thread(target=run, name="bench-export-services", daemon=True)
    thread.start()
    return stop, thread


@contextmanager
def running(settings: Settings, answer: dict[str, bytes]) -> Iterator[tuple[Accounts, DataExports]]:
    """The service as `lifecycle serve` runs it with Kafka off (every store migrated first)."""
    migrate_lifecycle(settings)
    for name in ERASING_SERVICES:
        migrate_service(settings, name)
    accounts = open_accounts(settings)
    workers = start_workers(settings, accounts, poll_interval_s=0.02)
    assert workers.publisher is not None
    stop, thread = answering_services(workers.publisher, settings.topics, answer)
    try:
        yield accounts, build_data_exports(accounts, settings)
    finally:
        stop.set()
        thread.join(timeout=5)
        workers.stop()
        accounts.close()


def request_to_ready_ms(accounts: Accounts, exports: DataExports, count: int) -> list[float]:
    latencies: list[float] = []
    for n in range(count):
        account_id = accounts.register(
            email=f"export-{uuid.uuid4().hex[:12]}@example.com",
            display_name=f"Member {n}",
            consent_version="v1",
        )
        for s in range(SCOUTS_PER_MEMBER):
            accounts.receive_scout(account_id, scout_id=f"s{s}", company_id="c", job_id=f"j{s}")
        export_id = exports.request(account_id).export.id
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            export = exports.load(export_id)
            if export.status is ExportStatus.READY and export.ready_at is not None:
                latencies.append((export.ready_at - export.requested_at).total_seconds() * 1000)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"export {export_id} not ready in {READY_TIMEOUT_S:.0f}s")
            time.sleep(0.005)
    return latencies


def raw_seal_and_open_ms(answer: dict[str, bytes], count: int) -> list[float]:
    private, public = new_key_pair()
    samples: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        export_id, account_id = uuid.uuid4(), uuid.uuid4()
        for service, section in answer.items():
            for part in seal_part(
                public, section, export_id=export_id, account_id=account_id, service=service
            ):
                open_part(private, part)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def download_peak(exports: DataExports, accounts: Accounts) -> tuple[float, int]:
    """Peak traced memory (bytes) while the big document streams, and its size."""
    account_id = accounts.register(
        email=f"big-{uuid.uuid4().hex[:12]}@example.com", display_name="Big", consent_version="v1"
    )
    export_id = exports.request(account_id).export.id
    deadline = time.monotonic() + READY_TIMEOUT_S * 2
    while exports.load(export_id).status is not ExportStatus.READY:
        if time.monotonic() > deadline:
            raise TimeoutError("the big export is not ready")
        time.sleep(0.05)
    tracemalloc.start()
    size = 0
    try:
        for piece in exports.download(account_id, export_id):
            size += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return float(peak), size


def run(ctx: Context) -> list[Row]:
    count = QUICK_EXPORTS if ctx.quick else EXPORTS
    small = {k: json.dumps(v).encode() for k, v in sections(SCOUTS_PER_MEMBER, 20).items()}
    rows: list[Row] = []
    baseline = raw_seal_and_open_ms(small, count)
    backends: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        embedded = Settings(
            database_url=f"sqlite:///{Path(directory) / 'lifecycle.sqlite3'}",
            kafka_bootstrap=None,
            master_key=new_master_key(),
            log_format="json",
            log_level="WARNING",
        )
        with running(embedded, small) as (accounts, exports):
            backends["sqlite"] = request_to_ready_ms(accounts, exports, count)
    with fresh_schema(ctx.database_url, "export") as schema:
        settings = bench_settings(ctx.database_url, schema).model_copy(
            update={"kafka_bootstrap": None}
        )
        with running(settings, small) as (accounts, exports):
            backends["postgres"] = request_to_ready_ms(accounts, exports, count)
        big = {k: json.dumps(v).encode() for k, v in sections(BIG_SCOUTS, BIG_MESSAGES).items()}
        with running(settings, big) as (accounts, exports):
            peak, size = download_peak(exports, accounts)
    for backend, latencies in backends.items():
        log(f"  export {backend}: p50 {percentile(latencies, 0.5):.0f} ms")
        for share, name in ((0.5, "p50"), (0.99, "p99")):
            rows.append(
                Row(
                    "export",
                    f"request -> ready {name} ({backend})",
                    "ms",
                    [percentile(latencies, share)],
                    baseline=[percentile(baseline, share)],
                    baseline_name="seal_part + open_part of the same sections",
                    target=TARGET_P99_MS if name == "p99" else None,
                    lower_is_better=True,
                )
            )
    rows.append(
        Row(
            "export",
            f"download peak memory ({BIG_SCOUTS:,} scouts, {BIG_MESSAGES:,} messages)",
            "MiB",
            [peak / 2**20],
            target=MEMORY_TARGET_MIB,
            note=f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB document",
            lower_is_better=True,
        )
    )
    ctx.note(
        "export",
        f"{count} exports per backend, {SCOUTS_PER_MEMBER} scouts each, services answering at "
        f"once (bench.case_export.answering_services); download peak {peak / 2**20:.1f} MiB "
        f"for a {size / 2**20:.1f} MiB document",
    )
    return rows
