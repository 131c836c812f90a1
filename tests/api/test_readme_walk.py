"""The README's quick start is true: its curl walk, parsed out of README.md, runs in order against
the app `make run` serves (`served_app`: the embedded default, its workers in-process), and
every request body in it is accepted.

A step added to the walk needs its expected answer here (`EXPECTED`), so the two move together.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import TOKENS, migrate_embedded, wait_until

from lifecycle.application import Accounts
from lifecycle.cli.service import served_app
from lifecycle.crypto import new_master_key
from lifecycle.settings import Settings, token_digest

README = Path(__file__).resolve().parents[2] / "README.md"
# The shell variables of the walk that hold a token, and whose token each is.
TOKEN_VARIABLES = {"SERVICE": "service", "SCOUT": "scout", "OPS": "ops", "AUDITOR": "auditor"}
# Each step's status, in the walk's order.
EXPECTED = [201, 201, 200, 202, 200, 200, 200, 200, 410]


@dataclass
class Step:
    method: str
    path: str  # with $VARIABLES still in it
    role: str
    body: Any
    keep: tuple[str, str] | None  # (variable, response field) for `VAR=$(curl ... ["field"])`


def walk() -> list[Step]:
    """The curl commands of the README's first `sh` block that calls the API."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL)
    block = next(text for text in blocks if "$API/" in text)
    commands = [line.strip() for line in block.replace("\\\n", " ").splitlines()]
    steps = []
    for command in commands:
        if "curl " not in command or command.startswith("#"):
            continue
        method = re.search(r"-X (\w+)", command)
        body = re.search(r"-d '([^']*)'", command)
        keep = re.match(r"(\w+)=\$\(curl .*\[\"(\w+)\"\]", command)
        steps.append(
            Step(
                method=method.group(1) if method else "GET",
                path=re.search(r"\$API(/\S*)", command).group(1),  # type: ignore[union-attr]
                role=TOKEN_VARIABLES[re.search(r"Bearer \$(\w+)", command).group(1)],  # type: ignore[union-attr]
                body=json.loads(body.group(1)) if body else None,
                keep=(keep.group(1), keep.group(2)) if keep else None,
            )
        )
    return steps


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """What `make run` serves on a first run: SQLite migrated, Kafka off, workers in-process."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'lifecycle.sqlite3'}",
        kafka_bootstrap=None,
        master_key=new_master_key(),
        api_tokens={token_digest(token): role for role, token in TOKENS.items()},
        log_format="json",
    )
    migrate_embedded(settings)  # `make run` runs `lifecycle migrate` first
    with TestClient(served_app(settings, Accounts(env=settings.application_env()))) as client:
        yield client


def wait_purged(client: TestClient, status: str, headers: dict[str, str]) -> None:
    wait_until(
        lambda: client.get(status, headers=headers).json()["state"] == "purged",
        "the walk's withdrawal reached Purged",
        timeout_s=30,
    )


def test_the_walk_has_a_body_for_every_write_and_an_expected_answer_for_every_step() -> None:
    steps = walk()
    assert len(steps) == len(EXPECTED)
    assert all(step.body is not None for step in steps if step.method != "GET")
    assert steps[0].keep == ("ACCOUNT", "account_id")


def test_the_readme_walk_runs_as_written(client: TestClient) -> None:
    variables: dict[str, str] = {}
    answers = []
    for step, expected in zip(walk(), EXPECTED, strict=True):
        path = re.sub(r"\$(\w+)", lambda name: variables[name.group(1)], step.path)
        headers = {"Authorization": f"Bearer {TOKENS[step.role]}"}
        response = client.request(step.method, path, json=step.body, headers=headers)
        assert response.status_code == expected, (step, response.text)
        if step.keep is not None:
            variables[step.keep[0]] = response.json()[step.keep[1]]
        if path.endswith("/withdrawal"):  # what step 5 says: purged within a moment
            wait_purged(client, path.removesuffix("/withdrawal") + "/erasure", headers)
        answers.append(response.json())

    scout, preview, asked, erasure, receipt, audit, gone = answers[1], answers[2], *answers[4:]
    assert asked["state"] == "purged"  # what step 5's loop waits for
    assert scout == {"scout_id": "scout-1", "recorded": True}
    assert preview["gift_lost_on_withdrawal"] is True
    assert erasure["state"] == "purged"
    assert {s["state"] for s in erasure["services"].values()} == {"confirmed"}
    assert receipt["account_id"] == variables["ACCOUNT"] and receipt["key"]["destroyed"]
    registered = audit["events"][0]["data"]
    assert registered["email"] == registered["display_name"] == "[redacted]"
    assert "hanako" not in json.dumps(audit).lower()
    assert gone["code"] == "account_purged"
