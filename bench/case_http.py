"""Case 2, HTTP: requests per second and p50/p99 latency through uvicorn, under wrk.

`POST /v1/accounts` (one registration a request) and `POST /v1/scouts` (bulk scouts,
`BULK_ITEMS` members a request, scored in scouts per second). Each target runs as its own
uvicorn with the same number of worker processes (bench/http_server.py): the app as
`lifecycle serve` builds it, and a bare FastAPI + psycopg app doing the same durable writes
(one INSERT a registration; one multi-row INSERT a bulk request). The load generator is
wrk, the same for both (bench/loadgen.py); without it the case stops and says so.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

import httpx
import psycopg

from bench.core import Context, Row, Target, bench_env, fresh_schema, log
from bench.loadgen import (
    LoadResult,
    bulk_scouts_script,
    register_script,
    require_wrk,
    wrk_load,
)
from bench.workload import (
    REGISTRATION,
    SERVICE_TOKEN,
    bench_settings,
    generate_log,
    open_accounts,
)
from lifecycle.crypto import new_master_key

CONCURRENCY = (1, 8, 32)
TARGET = Target("ratio_at_least", 0.6)
# The stored size of the Registered event of REGISTRATION (case 1 measures it).
ROW_SIZE = 964
# Bulk scouts: members per request, connections, members registered beforehand.
BULK_ITEMS = 200
BULK_CONNECTIONS = (1, 4)
BULK_MEMBERS = 5000
BULK_TARGET = Target("at_least", 8000.0)  # issue 25
BULK_RATIO_TARGET = Target("ratio_at_least", 0.3)
# `lifecycle serve`'s default on PostgreSQL: one worker process per core, for both targets.
WORKERS = os.cpu_count() or 1


def free_port() -> int:
    """A free port below Linux's ephemeral range (no outgoing connection takes it meanwhile)."""
    for _ in range(200):
        port = random.randint(20000, 32767)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


class Server:
    """One uvicorn process serving a target until stopped."""

    def __init__(
        self, target: str, schema: str, ctx: Context, master_key: str, scout_row_size: int
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = bench_env()
        env["LIFECYCLE_DATABASE_URL"] = ctx.database_url
        command = [
            sys.executable,
            "-m",
            "bench.http_server",
            target,
            "--port",
            str(self.port),
            "--schema",
            schema,
            "--master-key",
            master_key,
            "--row-size",
            str(ROW_SIZE),
            "--scout-row-size",
            str(scout_row_size),
            "--workers",
            str(WORKERS),
        ]
        # Kept open for the server's life; closed in stop().
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=self._log
        )
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.seek(0)
                tail = self._log.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"http server exited: {tail}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("http server not ready in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def run(ctx: Context) -> list[Row]:
    """Both servers run side by side; every repetition loads one, then the other."""
    generator = f"wrk {require_wrk()}"
    ctx.versions.setdefault("load generator", generator)
    master_key = new_master_key()
    with fresh_schema(ctx.database_url, "http") as schema:
        _create_raw_tables(ctx.database_url, schema)
        members, scout_row_size = _prepare_members(ctx.database_url, schema, master_key)
        servers: dict[str, Server] = {}
        try:
            for target in ("app", "bare"):
                servers[target] = Server(target, schema, ctx, master_key, scout_row_size)
            registrations = _measure(
                ctx,
                servers,
                "/v1/accounts",
                CONCURRENCY,
                lambda run_id: register_script(
                    SERVICE_TOKEN, {"email": "@EMAIL@", **REGISTRATION}, run_id
                ),
            )
            bulk = _measure(
                ctx,
                servers,
                "/v1/scouts",
                BULK_CONNECTIONS,
                lambda run_id: bulk_scouts_script(SERVICE_TOKEN, members, BULK_ITEMS, run_id),
            )
        finally:
            for server in servers.values():
                server.stop()
    rows = _registration_rows(registrations) + _bulk_rows(bulk)
    ctx.note(
        "http",
        f"load generator: {generator}, same for both targets; each target is uvicorn with "
        f"{WORKERS} worker process(es) (the app exactly as `lifecycle serve` builds it, INFO "
        "logging); latency ratio = app/bare (how many times slower); bulk scouts: "
        f"{BULK_ITEMS} distinct members a request out of {BULK_MEMBERS}, every scout new, "
        "baseline = one multi-row INSERT a request",
    )
    return rows


Measured = dict[str, dict[int, list[LoadResult]]]


def _measure(
    ctx: Context,
    servers: dict[str, Server],
    path: str,
    concurrency: tuple[int, ...],
    script: Callable[[str], str],
) -> Measured:
    measured: Measured = {"app": {}, "bare": {}}
    for server in servers.values():
        wrk_load(server.url + path, script(uuid.uuid4().hex[:8]), max(concurrency), 1)
    for connections in concurrency:
        log(f"http: POST {path}, {connections} connections, app and bare")
        for _ in range(ctx.repeats):
            for target, server in servers.items():
                result = wrk_load(
                    server.url + path, script(uuid.uuid4().hex[:8]), connections, ctx.seconds
                )
                measured[target].setdefault(connections, []).append(result)
    return measured


def _create_raw_tables(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {schema}.raw_events (originator_id uuid NOT NULL, "
            "originator_version bigint NOT NULL, topic text, state bytea, "
            "notification_id bigserial, PRIMARY KEY (originator_id, originator_version))"
        )
        conn.execute(f"CREATE UNIQUE INDEX ON {schema}.raw_events (notification_id ASC)")
        conn.execute(
            f"CREATE TABLE {schema}.raw_scouts (originator_id uuid NOT NULL, "
            "scout_id text NOT NULL, topic text, state bytea, "
            "notification_id bigserial, PRIMARY KEY (originator_id, scout_id))"
        )
        conn.execute(f"CREATE UNIQUE INDEX ON {schema}.raw_scouts (notification_id ASC)")


def _prepare_members(database_url: str, schema: str, master_key: str) -> tuple[list[UUID], int]:
    """Registered members for the bulk scouts (written with COPY), and the stored size of
    one ScoutReceived event (the bare route's row size)."""
    log(f"http: registering {BULK_MEMBERS} members for the bulk scouts")
    accounts = open_accounts(bench_settings(database_url, schema, master_key))
    try:
        made = generate_log(accounts, BULK_MEMBERS * 3, registered_only=True, keep_ids=True)
        account = accounts.get_account(made.account_ids[0])
        account.receive_scout(
            scout_id="size-probe", company_id="c-1", job_id="j-1", received_at=datetime.now(UTC)
        )
        [event] = account.collect_events()
        size = len(accounts.mapper.to_stored_event(event).state)
    finally:
        accounts.close()
    return made.account_ids, size


def _note(app: list[LoadResult], bare: list[LoadResult]) -> str:
    errors = sum(r.errors for r in app)
    base_errors = sum(r.errors for r in bare)
    return (
        f"{sum(r.requests for r in app)} requests"
        + (f", {errors} errors" if errors else "")
        + (f"; bare {base_errors} errors" if base_errors else "")
    )


def _latency_rows(app: list[LoadResult], bare: list[LoadResult], suffix: str) -> list[Row]:
    return [
        Row(
            case="http",
            variant=f"  latency {name} {suffix}",
            unit="ms",
            samples=[getattr(r, f"{name}_ms") for r in app],
            baseline=[getattr(r, f"{name}_ms") for r in bare],
            baseline_name="bare",
            lower_is_better=True,
        )
        for name in ("p50", "p99")
    ]


def _registration_rows(measured: Measured) -> list[Row]:
    rows: list[Row] = []
    for connections in CONCURRENCY:
        app, bare = measured["app"][connections], measured["bare"][connections]
        rows.append(
            Row(
                case="http",
                variant=f"POST /v1/accounts c={connections}",
                unit="req/s",
                samples=[r.rps for r in app],
                baseline=[r.rps for r in bare],
                baseline_name=f"bare route c={connections}",
                target=TARGET,
                note=_note(app, bare),
            )
        )
        rows += _latency_rows(app, bare, f"c={connections}")
    return rows


def _bulk_rows(measured: Measured) -> list[Row]:
    rows: list[Row] = []
    for connections in BULK_CONNECTIONS:
        app, bare = measured["app"][connections], measured["bare"][connections]
        scouts = [r.rps * BULK_ITEMS for r in app]
        rows.append(
            Row(
                case="http",
                variant=f"POST /v1/scouts x{BULK_ITEMS} c={connections}",
                unit="scouts/s",
                samples=scouts,
                baseline=[r.rps * BULK_ITEMS for r in bare],
                baseline_name=f"multi-row INSERT c={connections}",
                target=BULK_RATIO_TARGET,
                note=_note(app, bare),
            )
        )
        rows.append(
            Row(
                case="http",
                variant=f"  scouts/s c={connections}",
                unit="scouts/s",
                samples=scouts,
                target=BULK_TARGET,
            )
        )
        rows += _latency_rows(app, bare, f"c={connections}")
    return rows
