"""A small HTTP load generator, used when `wrk` is not installed: asyncio + httpx.

`connections` coroutines each keep one connection and POST registrations back to back until
the time is up; every request carries a unique e-mail. It is slower than wrk, so when it is
used both targets are measured with it and only their ratio means anything.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass

import httpx

from bench.core import percentile
from bench.workload import REGISTRATION


@dataclass(frozen=True)
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


async def _run(url: str, connections: int, seconds: float, token: str, run_id: str) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    serial = itertools.count()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        deadline = time.perf_counter() + seconds

        async def worker(index: int) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                body = json.dumps(
                    {"email": f"p{run_id}-{index}-{next(serial)}@example.com", **REGISTRATION}
                )
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/accounts", content=body, headers=headers)
                    ok = response.status_code < 400
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        begun = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        elapsed = time.perf_counter() - begun
    return LoadResult(
        rps=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        errors=errors,
        requests=len(latencies) + errors,
    )


def python_load(url: str, connections: int, seconds: float, token: str, run_id: str) -> LoadResult:
    return asyncio.run(_run(url, connections, seconds, token, run_id))
