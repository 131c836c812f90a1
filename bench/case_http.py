"""Case 2, HTTP: `POST /v1/accounts` requests per second and p50/p99 latency through uvicorn.

Each target runs in its own uvicorn process (bench/http_server.py); the load generator is
`wrk` (C, keep-alive connections, a Lua script that gives every request a unique e-mail)
when it is installed, else the asyncio+httpx generator in bench/loadgen.py; the same one
drives both targets. Baseline: a bare FastAPI route doing the same one-row INSERT.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.core import Context, Row, Target, bench_env, fresh_schema, log
from bench.loadgen import LoadResult, python_load
from bench.workload import REGISTRATION, SERVICE_TOKEN
from lifecycle.crypto import new_master_key

CONCURRENCY = (1, 8, 32)
TARGET = Target("ratio_at_least", 0.6)
# The stored size of the Registered event of REGISTRATION (case 1 measures it).
ROW_SIZE = 964

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer @TOKEN@"
local template = [[@BODY@]]
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local counter = 0
function request()
  counter = counter + 1
  local email = string.format("w%s-%d-%d@example.com", "@RUN@", tid, counter)
  return wrk.format(nil, nil, nil, string.gsub(template, "@EMAIL@", email))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
    '"socket_errors": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50.0), latency:percentile(99.0), latency.mean))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One uvicorn process serving a target until stopped."""

    def __init__(self, target: str, schema: str, ctx: Context, master_key: str) -> None:
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


def wrk_load(url: str, connections: int, seconds: float, run_id: str) -> LoadResult:
    body = json.dumps({"email": "@EMAIL@", **REGISTRATION})
    script = WRK_SCRIPT.replace("@TOKEN@", SERVICE_TOKEN).replace("@BODY@", body)
    script = script.replace("@RUN@", run_id)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        path = Path(handle.name)
    try:
        threads = min(connections, 2)
        command = [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(path),
            f"{url}/v1/accounts",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        path.unlink(missing_ok=True)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
            seconds_run = data["duration_us"] / 1e6
            ok = data["requests"] - data["status_errors"]
            return LoadResult(
                rps=ok / seconds_run,
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                errors=data["status_errors"] + data["socket_errors"],
                requests=data["requests"],
            )
    raise RuntimeError(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")


def load(url: str, connections: int, seconds: float) -> LoadResult:
    run_id = uuid.uuid4().hex[:8]
    if shutil.which("wrk"):
        return wrk_load(url, connections, seconds, run_id)
    return python_load(url, connections, seconds, SERVICE_TOKEN, run_id)


def run(ctx: Context) -> list[Row]:
    """Both servers run side by side; every repetition loads one, then the other."""
    generator = "wrk " + _wrk_version() if shutil.which("wrk") else "python asyncio+httpx"
    ctx.versions.setdefault("load generator", generator)
    master_key = new_master_key()
    measured: dict[str, dict[int, list[LoadResult]]] = {"app": {}, "bare": {}}
    with fresh_schema(ctx.database_url, "http") as schema:
        with psycopg.connect(ctx.database_url, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE {schema}.raw_events (originator_id uuid NOT NULL, "
                "originator_version bigint NOT NULL, topic text, state bytea, "
                "notification_id bigserial, PRIMARY KEY (originator_id, originator_version))"
            )
            conn.execute(f"CREATE UNIQUE INDEX ON {schema}.raw_events (notification_id ASC)")
        servers: dict[str, Server] = {}
        try:
            for target in ("app", "bare"):
                servers[target] = Server(target, schema, ctx, master_key)
                load(servers[target].url, max(CONCURRENCY), ctx.warmup_seconds)
            for connections in CONCURRENCY:
                log(f"http: {connections} connections, app and bare, load by {generator}")
                for _ in range(ctx.repeats):
                    for target, server in servers.items():
                        result = load(server.url, connections, ctx.seconds)
                        measured[target].setdefault(connections, []).append(result)
        finally:
            for server in servers.values():
                server.stop()
    rows: list[Row] = []
    for connections in CONCURRENCY:
        app, bare = measured["app"][connections], measured["bare"][connections]
        errors = sum(r.errors for r in app)
        base_errors = sum(r.errors for r in bare)
        note = (
            f"{sum(r.requests for r in app)} requests"
            + (f", {errors} errors" if errors else "")
            + (f"; bare {base_errors} errors" if base_errors else "")
        )
        rows.append(
            Row(
                case="http",
                variant=f"POST /v1/accounts c={connections}",
                unit="req/s",
                samples=[r.rps for r in app],
                baseline=[r.rps for r in bare],
                baseline_name=f"bare route c={connections}",
                target=TARGET,
                note=note,
            )
        )
        for name in ("p50", "p99"):
            rows.append(
                Row(
                    case="http",
                    variant=f"  latency {name} c={connections}",
                    unit="ms",
                    samples=[getattr(r, f"{name}_ms") for r in app],
                    baseline=[getattr(r, f"{name}_ms") for r in bare],
                    baseline_name="bare",
                    lower_is_better=True,
                )
            )
    ctx.note(
        "http",
        f"load generator: {generator}, same for both targets; each target is one uvicorn "
        "process (the app exactly as `lifecycle serve` builds it, INFO logging); latency "
        "ratio = app/bare (how many times slower)",
    )
    return rows


def _wrk_version() -> str:
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    text = (done.stdout + done.stderr).split()
    return text[1] if len(text) > 1 and text[0] == "wrk" else "?"
