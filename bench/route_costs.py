"""`python -m bench.route_costs [--n N] [--profile K]`: what `POST /v1/accounts` costs over the
command it runs, in Python CPU per request (a measure load barely moves).

The service's ASGI app (`create_app`, as `lifecycle serve` builds it: every middleware,
authentication, validation, logging at INFO) is called in-process with a ready-made request,
no socket and no server: what is left over the same registration called on `Accounts`
directly is the route's own cost (body parsing and validation, dependencies, the thread hop,
middleware, the response, the access log). Both run N times in turns, one caller, after a
warm-up; stderr (the log lines) goes to /dev/null while measuring, as a server's would go to
its collector. `--profile K` prints the K functions with most own time over N requests
(cProfile), the command's included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.core import fresh_schema, services_env
from bench.workload import (
    SERVICE_TOKEN,
    bench_settings,
    fast_registration_kwargs,
    open_accounts,
    registration_body,
    unique_email,
)
from lifecycle.logs import configure_logging

WARM_UP = 50


def request_scope(body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/accounts",
        "raw_path": b"/v1/accounts",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {SERVICE_TOKEN}".encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def post(app: Any) -> int:
    """One registration through the ASGI app; its status."""
    body = json.dumps(registration_body(unique_email("route"))).encode()
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(request_scope(body), receive, send)
    return status


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """fd 2 to /dev/null (the log lines are written, as a server writes them, then dropped)."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def cpu_us(n: int, call: Callable[[], object]) -> float:
    cpu = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - cpu) / n * 1e6


async def measure(app: Any, accounts: Any, n: int, rounds: int) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()

    def route() -> None:
        status = asyncio.run_coroutine_threadsafe(post(app), loop).result()
        if status != 201:
            raise RuntimeError(f"POST /v1/accounts answered {status}")

    def command() -> None:
        accounts.register(**fast_registration_kwargs(unique_email("command")))

    def measured() -> dict[str, list[float]]:
        found: dict[str, list[float]] = {"route": [], "command": []}
        for _ in range(WARM_UP):
            route()
            command()
        for _ in range(rounds):
            found["route"].append(cpu_us(n, route))
            found["command"].append(cpu_us(n, command))
        return found

    # Requests are driven from a thread of their own while this loop serves them, as
    # uvicorn's loop would; the command runs on that same thread.
    return await asyncio.to_thread(measured)


async def profile(app: Any, n: int, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        await post(app)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


async def run(n: int, rounds: int, top: int) -> int:
    from lifecycle.api.app import create_app

    database_url = services_env()["LIFECYCLE_DATABASE_URL"]
    with fresh_schema(database_url, "route") as schema:
        settings = bench_settings(database_url, schema).model_copy(update={"log_level": "INFO"})
        configure_logging(settings.log_format, settings.log_level)
        accounts = open_accounts(settings)
        app = create_app(settings, accounts)
        try:
            async with app.router.lifespan_context(app):
                with quiet_stderr():
                    found = await measure(app, accounts, n, rounds)
                    report = await profile(app, n, top) if top else ""
        finally:
            accounts.close()
    route, command = found["route"], found["command"]
    print(f"{'':<28} {'CPU µs per request, each round':>40}   (n={n})")
    print(f"{'POST /v1/accounts':<28} {' '.join(f'{v:.0f}' for v in route):>40}")
    print(f"{'Accounts.register alone':<28} {' '.join(f'{v:.0f}' for v in command):>40}")
    print(
        f"{'the route own':<28} "
        f"{' '.join(f'{r - c:.0f}' for r, c in zip(route, command, strict=True)):>40}"
    )
    if report:
        print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.route_costs")
    parser.add_argument("--n", type=int, default=300, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of route then command")
    parser.add_argument("--profile", type=int, default=0, help="print the K costliest functions")
    args = parser.parse_args(argv)
    configure_logging("json", "WARNING")
    return asyncio.run(run(args.n, args.rounds, args.profile))


if __name__ == "__main__":
    sys.exit(main())
