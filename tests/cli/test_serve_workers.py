"""`lifecycle serve --workers 2` on PostgreSQL: both processes serve, and exactly one of them
runs the relay, the three services and the erasure consumer (chosen by the workers lock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import TOKENS, free_port, wait_until
from test_cli import call

from lifecycle.crypto import new_master_key
from lifecycle.settings import token_digest


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def pids_of(lines: list[dict[str, Any]], event: str) -> list[int]:
    return [line["pid"] for line in lines if line.get("event") == event and "pid" in line]


@pytest.fixture
def two_workers(postgres_url: str, pg_schema: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    env = {
        **clean,
        "LIFECYCLE_DATABASE_URL": postgres_url,
        "LIFECYCLE_DATABASE_SCHEMA": pg_schema,
        "LIFECYCLE_MASTER_KEY": new_master_key(),
        "LIFECYCLE_API_TOKENS": json.dumps(
            {token_digest(token): role for role, token in TOKENS.items()}
        ),
        "LIFECYCLE_LOG_FORMAT": "json",
    }
    # Kafka off: this also migrates the three services' stores, which `serve` runs in-process.
    subprocess.run(
        [sys.executable, "-m", "lifecycle", "migrate"], env=env, check=True, capture_output=True
    )
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "lifecycle", "serve", "--port", str(port), "--workers", "2"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.poll() is None, stderr.read_text()
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_until(ready, "the server answers /readyz")
        # Both workers have started (each logs api_started) before the test looks.
        wait_until(lambda: len(set(pids_of(log_lines(stderr), "api_started"))) == 2, "2 workers")
        yield base, stderr
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_two_workers_serve_and_one_runs_the_background_workers(
    two_workers: tuple[str, Path],
) -> None:
    base, stderr = two_workers
    token = TOKENS["service"]

    def one_request() -> None:
        call(base, token, "GET", f"/v1/accounts/{uuid.uuid4()}")

    def both_served() -> bool:
        # Fresh connections at once: the kernel hands them to whichever process accepts.
        threads = [threading.Thread(target=one_request) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return len(set(pids_of(log_lines(stderr), "request"))) == 2

    wait_until(both_served, "requests served by both worker processes")

    # A withdrawal goes all the way to Purged: the one set of workers does its job.
    status, created = call(
        base,
        token,
        "POST",
        "/v1/accounts",
        {"email": "two.workers@example.jp", "display_name": "Two", "consent_version": "v1"},
    )
    assert status == 201
    status, accepted = call(
        base,
        token,
        "POST",
        f"/v1/accounts/{created['account_id']}/withdrawal",
        {"reason": "hard_to_use"},
    )
    assert status == 202
    wait_until(
        lambda: call(base, token, "GET", accepted["erasure"])[1]["state"] == "purged",
        "the account purged by the in-process workers",
    )

    lines = log_lines(stderr)
    serving = set(pids_of(lines, "api_started"))
    [elected] = pids_of(lines, "workers.elected")
    assert pids_of(lines, "workers.standby") == list(serving - {elected})
    assert pids_of(lines, "workers.started") == [elected]
    assert pids_of(lines, "relay.active") == [elected]
    consumers = [line for line in lines if line.get("event") == "consumer.started"]
    assert sorted(line["consumer"] for line in consumers) == sorted(
        ["scout", "chat", "mail", "lifecycle-erasure", "lifecycle-export"]
    )
    assert {line["pid"] for line in consumers} == {elected}
    assert "two.workers@example.jp" not in stderr.read_text()
