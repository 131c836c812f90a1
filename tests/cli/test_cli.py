"""The `lifecycle` command as a newcomer and ops meet it: help, one-line failures, first run."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import free_port

COMMANDS = ("serve", "migrate", "topics", "relay", "consume", "erasure", "audit", "schemas")


def lifecycle(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    return subprocess.run(
        [sys.executable, "-m", "lifecycle", *args],
        env={**clean, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_help_lists_every_subcommand() -> None:
    result = lifecycle("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert re.search(rf"^\W*{command}\b", result.stdout, re.MULTILINE), command


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (
            ("audit", "reshred"),
            {
                "LIFECYCLE_DATABASE_URL": "postgresql://nobody:secretpw@127.0.0.1:1/none",
                "LIFECYCLE_MASTER_KEY": "A" * 43 + "=",
                "LIFECYCLE_DATABASE_CONNECT_TIMEOUT_S": "1",
            },
            "database unusable",
        ),
        (("audit", "reshred"), {"LIFECYCLE_DATABASE_URL": "mysql://x/y"}, "invalid configuration"),
        (
            ("audit", "reshred"),
            {"LIFECYCLE_DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db"},
            "LIFECYCLE_KEYRING_DIR (or LIFECYCLE_MASTER_KEY) is required",
        ),
        (
            ("topics",),
            {
                "LIFECYCLE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
                "LIFECYCLE_KAFKA_BOOTSTRAP_TIMEOUT_S": "1",
            },
            "Kafka unusable",
        ),
        (("relay",), {}, "needs LIFECYCLE_KAFKA_BOOTSTRAP"),
        (("erasure",), {}, "needs LIFECYCLE_KAFKA_BOOTSTRAP"),
        (("consume", "billing"), {"LIFECYCLE_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, "billing"),
    ],
)
def test_bad_configuration_fails_fast_with_one_line(
    args: tuple[str, ...], env: dict[str, str], says: str, tmp_path: Path
) -> None:
    result = lifecycle(*args, env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("lifecycle:")]
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert "Traceback" not in result.stderr
    assert "secretpw" not in result.stderr


@pytest.fixture
def embedded_server(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """`lifecycle migrate`, then `lifecycle serve`, as `make run` runs them: nothing configured."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    migrated = lifecycle("migrate", env={"LIFECYCLE_LOG_FORMAT": "json"}, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    stdout = tmp_path / "stdout.txt"
    stderr = tmp_path / "stderr.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "lifecycle", "serve", "--port", str(port)],
            cwd=tmp_path,
            env={**clean, "LIFECYCLE_LOG_FORMAT": "json"},
            stdout=out,
            stderr=err,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, stderr.read_text()
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.1)  # polling a port that is not open yet, inside a deadline
        match = re.search(r"^\s*service\s+(\S+)", stdout.read_text(), re.MULTILINE)
        assert match, stdout.read_text()
        yield base, match.group(1), tmp_path
    finally:
        process.terminate()
        process.wait(timeout=30)


def call(base: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_first_run_registers_and_erases_in_one_process(
    embedded_server: tuple[str, str, Path],
) -> None:
    base, token, cwd = embedded_server
    # The erasure process's tables come from the migrations, before any request needs them.
    with sqlite3.connect(cwd / "data" / "lifecycle.sqlite3") as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert {"erasure_confirmations", "erasure_retries"} <= tables
    status, created = call(
        base,
        token,
        "POST",
        "/v1/accounts",
        {"email": "first.run@example.jp", "display_name": "First", "consent_version": "v1"},
    )
    assert status == 201
    account = created["account_id"]
    status, accepted = call(
        base, token, "POST", f"/v1/accounts/{account}/withdrawal", {"reason": "hard_to_use"}
    )
    assert status == 202
    deadline = time.monotonic() + 60
    while True:
        status, erasure = call(base, token, "GET", accepted["erasure"])
        if erasure["state"] == "purged":
            break
        assert time.monotonic() < deadline, erasure
        time.sleep(0.1)  # the in-process workers purge on their own; poll with a deadline
    assert {s["state"] for s in erasure["services"].values()} == {"confirmed"}
    assert call(base, token, "GET", f"/v1/accounts/{account}")[0] == 410
    assert (cwd / "data" / "lifecycle.sqlite3").exists()
    assert "first.run@example.jp" not in (cwd / "stderr.txt").read_text()
