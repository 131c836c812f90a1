"""`lifecycle project` and `lifecycle audit export|replay|verify`, end to end through the CLI,
on SQLite and PostgreSQL; the tamper test edits one stored event with SQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from uuid import UUID

import pytest
from typer.testing import CliRunner

from lifecycle.application import Accounts
from lifecycle.cli import cli
from lifecycle.settings import Settings
from projections.directory import AccountDirectory
from projections.hashchain import HashChain


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    assert settings.master_key is not None
    return {
        "LIFECYCLE_DATABASE_URL": settings.database_url,
        "LIFECYCLE_DATABASE_SCHEMA": settings.database_schema,
        "LIFECYCLE_MASTER_KEY": settings.master_key,
        "LIFECYCLE_LOG_FORMAT": "json",
        "LIFECYCLE_LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def members(accounts: Accounts) -> Iterator[list[UUID]]:
    ids = []
    for n in range(3):
        account_id = accounts.register(
            email=f"cli-{n}@example.jp", display_name="Quince Vellichor", consent_version="1"
        )
        accounts.receive_scout(account_id, scout_id="s", company_id="acme", job_id="j")
        ids.append(account_id)
    accounts.request_withdrawal(ids[0], reason="hard_to_use", comment="Vellichor leaves")
    yield ids


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_project_once_catches_up_every_read_model(
    env: dict[str, str], accounts: Accounts, members: list[UUID]
) -> None:
    code, _, stderr = run(env, "project", "--once")

    assert code == 0, stderr
    directory = AccountDirectory(accounts.database)
    assert directory.counts_by_status() == {"active": 2, "withdrawing": 1, "purged": 0}
    assert directory.position() == accounts.recorder.max_notification_id()
    assert "account_directory: " in stderr and "events/s" in stderr


def test_project_rebuild_reports_progress(
    env: dict[str, str], accounts: Accounts, members: list[UUID]
) -> None:
    run(env, "project", "--once", "account_directory")

    code, stdout, stderr = run(env, "project", "--rebuild", "account_directory")

    head = accounts.recorder.max_notification_id()
    assert code == 0, stderr
    assert f"rebuilt account_directory: {head} events" in stdout
    assert f"account_directory__rebuild: {head}/{head} events (100.0%)" in stderr
    assert AccountDirectory(accounts.database).position() == head


def test_project_refuses_an_unknown_name(env: dict[str, str]) -> None:
    code, _, stderr = run(env, "project", "--once", "nope")

    assert code == 2
    assert stderr.startswith("lifecycle: unknown projection nope")


def test_export_streams_json_lines(
    env: dict[str, str], accounts: Accounts, members: list[UUID]
) -> None:
    code, stdout, stderr = run(env, "audit", "export", "--from", "2", "--to", "4")

    assert code == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [line["notification_id"] for line in lines] == [2, 3, 4]
    assert "events exported: 3" in stderr
    assert "Vellichor" not in stdout


def test_export_refuses_a_bad_bound(env: dict[str, str]) -> None:
    code, _, stderr = run(env, "audit", "export", "--from", "last week")

    assert code == 2 and stderr.startswith("lifecycle: ")


def test_replay_checks_every_aggregate(
    env: dict[str, str], accounts: Accounts, members: list[UUID]
) -> None:
    code, stdout, stderr = run(env, "audit", "replay")

    report = json.loads(stdout)
    assert code == 0, stderr
    assert report["ok"] is True
    assert report["aggregates"] == 6  # three accounts, three e-mail claims
    assert report["events"] == accounts.recorder.max_notification_id()
    assert "replay (events): " in stderr


def test_verify_finds_the_one_event_edited_with_sql(
    env: dict[str, str], accounts: Accounts, members: list[UUID]
) -> None:
    assert run(env, "project", "--once", "hash_chain")[0] == 0
    code, stdout, _ = run(env, "audit", "verify")
    assert code == 0 and json.loads(stdout)["ok"] is True
    # Find the withdrawal's notification, then change its reason in place.
    target = next(
        n
        for n in accounts.recorder.select_notifications(start=1, limit=100)
        if n.topic.endswith("WithdrawalRequested")
    )
    db = accounts.database
    with db.transaction() as cursor:
        cursor.execute(
            f"UPDATE {db.events_table} SET state = %s "
            "WHERE originator_id = %s AND originator_version = %s",
            (
                bytes(target.state).replace(b"hard_to_use", b"hired_elsewhere"),
                db.id_param(members[0]),
                target.originator_version,
            ),
        )

    code, stdout, stderr = run(env, "audit", "verify")

    result = json.loads(stdout)
    assert code == 1
    assert result["ok"] is False and result["mismatches"] == 1
    assert result["first_mismatch"].startswith(f"notification {target.id} ")
    assert str(members[0]) in result["first_mismatch"]
    assert f"hash chain broken: notification {target.id} " in stderr
    assert HashChain(accounts.database).position() == accounts.recorder.max_notification_id()
