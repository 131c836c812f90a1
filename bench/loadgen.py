"""The HTTP case's load generator: `wrk` (C, keep-alive connections, a Lua script per request
kind), the same one for the app and its bare baseline.

There is no fallback: a Python generator saturates a core of its own and then measures
itself, not the service (the bare baseline fell from 593 req/s at 8 clients to 276 at 32).
`make bench` installs wrk from Debian's packages; without it the HTTP case stops with a line
that says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

WRK_MISSING = (
    "wrk is not installed: the HTTP case measures the service only under wrk "
    "(`make bench` installs it: apt-get install -y wrk)"
)


@dataclass(frozen=True)
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


COMMON = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer @TOKEN@"
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local counter = 0

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

# Every registration has an e-mail of its own.
REGISTER = r"""
local template = [[@BODY@]]
function request()
  counter = counter + 1
  local email = string.format("w%s-%d-%d@example.com", "@RUN@", tid, counter)
  return wrk.format(nil, nil, nil, string.gsub(template, "@EMAIL@", email))
end
"""

# Each request scouts @PER@ distinct members (a window over the ids), every scout id new.
BULK_SCOUTS = r"""
local ids = {@IDS@}
local per = @PER@
function request()
  counter = counter + 1
  local n = #ids
  local start = (tid * 7919 + counter * per) % n
  local parts = {}
  for i = 0, per - 1 do
    parts[i + 1] = string.format(
      '{"account_id":"%s","scout_id":"w%s-%d-%d-%d","company_id":"c-1","job_id":"j-1"}',
      ids[((start + i) % n) + 1], "@RUN@", tid, counter, i)
  end
  return wrk.format(nil, nil, nil, '{"scouts":[' .. table.concat(parts, ",") .. ']}')
end
"""


def require_wrk() -> str:
    """wrk's version; raises with `WRK_MISSING` when it is not installed."""
    if not shutil.which("wrk"):
        raise RuntimeError(WRK_MISSING)
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    text = (done.stdout + done.stderr).split()
    return text[1] if len(text) > 1 and text[0] == "wrk" else "?"


def register_script(token: str, body: dict[str, Any], run_id: str) -> str:
    script = COMMON + REGISTER.replace("@BODY@", json.dumps(body))
    return script.replace("@TOKEN@", token).replace("@RUN@", run_id)


def bulk_scouts_script(token: str, account_ids: list[UUID], per: int, run_id: str) -> str:
    ids = ",".join(f'"{account_id}"' for account_id in account_ids)
    script = COMMON + BULK_SCOUTS.replace("@IDS@", ids).replace("@PER@", str(per))
    return script.replace("@TOKEN@", token).replace("@RUN@", run_id)


def wrk_load(url: str, script: str, connections: int, seconds: float) -> LoadResult:
    """`connections` keep-alive connections on two wrk threads for `seconds` (whole seconds)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        path = Path(handle.name)
    try:
        command = [
            "wrk",
            "-t",
            str(min(connections, 2)),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(path),
            url,
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
