"""`lifecycle project` and `lifecycle audit export|replay|verify|erasure-proof`, end to end
through the CLI, on SQLite and PostgreSQL; the tamper test edits one stored event with SQL; the
registry of resting places names every table and topic the service makes, and a table or topic
made without an entry fails it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from typer.testing import CliRunner

from lifecycle.application import Accounts
from lifecycle.audit.proof import value_digest
from lifecycle.audit.registry import (
    LIFECYCLE,
    list_tables,
    list_topics,
    unregistered_tables,
    unregistered_topics,
)
from lifecycle.bootstrap import (
    kafka_consumer,
    kafka_erasure_consumer,
    migrate_service,
    service_database,
)
from lifecycle.cli import cli
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.relay import Relay
from lifecycle.settings import Settings
from lifecycle.storage import Database
from projections.directory import AccountDirectory
from projections.hashchain import HashChain
from schemas.contract import ERASING_SERVICES, TopicNames


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    assert settings.master_key is not None
    return {
        "LIFECYCLE_DATABASE_URL": settings.database_url,
        "LIFECYCLE_DATABASE_SCHEMA": settings.database_schema,
        "LIFECYCLE_MASTER_KEY": settings.resolved_master_key(),
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


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_replay_checks_every_aggregate(
    env: dict[str, str], accounts: Accounts, members: list[UUID], workers: list[str]
) -> None:
    code, stdout, stderr = run(env, "audit", "replay", *workers)

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


# The registry of resting places


@pytest.fixture
def deployed(
    settings: Settings, accounts: Accounts, kafka_bootstrap: str, topics: TopicNames
) -> Iterator[Settings]:
    """Every table the migrations make (lifecycle, the three services) and the processes use
    (API, relay, services, erasure), and the contract's topics under this test's prefix:
    settings that reach them all."""
    with_kafka = settings.model_copy(
        update={"kafka_bootstrap": kafka_bootstrap, "topic_prefix": topics.prefix}
    )
    for name in ERASING_SERVICES:
        migrate_service(settings, name, service_schema(settings, name))
    Relay(accounts, InProcessPublisher(), topics=topics).close()
    built = [kafka_erasure_consumer(with_kafka, accounts, topics=topics)]
    for name in ERASING_SERVICES:
        schema = service_schema(settings, name)
        built.append(kafka_consumer(name, with_kafka, topics=topics, schema=schema))
    for run_ in built:
        run_.consumer.source.close()
        run_.close()
    yield with_kafka
    if not settings.is_embedded:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            for name in ERASING_SERVICES:
                conn.execute(f"DROP SCHEMA IF EXISTS {service_schema(settings, name)} CASCADE")


def service_schema(settings: Settings, name: str) -> str:
    return f"{settings.database_schema}_{name}"


def proof_args(settings: Settings) -> list[str]:
    if settings.is_embedded:
        return []
    return [
        arg
        for name in ERASING_SERVICES
        for arg in ("--service-schema", f"{name}={service_schema(settings, name)}")
    ]


def service_store(settings: Settings, name: str) -> Database:
    return service_database(settings, name, service_schema(settings, name))


def test_the_registry_names_every_table_and_topic_the_service_makes(
    deployed: Settings, accounts: Accounts, topics: TopicNames
) -> None:
    assert unregistered_tables(LIFECYCLE, list_tables(accounts.database)) == []
    for name in ERASING_SERVICES:
        store = service_store(deployed, name)
        try:
            tables = list_tables(store)
        finally:
            store.close()
        assert tables, name
        assert unregistered_tables(name, tables) == [], name
    assert deployed.kafka_bootstrap is not None
    present = list_topics(deployed.kafka_bootstrap)
    assert set(topics.all()) <= present
    assert unregistered_topics(topics, present) == []


def test_a_table_or_topic_made_without_an_entry_fails_the_registry_and_the_proof(
    deployed: Settings, accounts: Accounts, topics: TopicNames, tmp_path: Path
) -> None:
    email = "quince.vellichor@registry-probe.example"
    account_id = accounts.register(email=email, display_name="Quince", consent_version="1")
    accounts.request_withdrawal(account_id, reason="other")
    assert accounts.purge(account_id)
    env = {
        "LIFECYCLE_DATABASE_URL": deployed.database_url,
        "LIFECYCLE_DATABASE_SCHEMA": deployed.database_schema,
        "LIFECYCLE_MASTER_KEY": deployed.resolved_master_key(),
        "LIFECYCLE_KAFKA_BOOTSTRAP": deployed.kafka_bootstrap or "",
        "LIFECYCLE_TOPIC_PREFIX": topics.prefix,
        "LIFECYCLE_LOG_LEVEL": "WARNING",
    }
    args = ["audit", "erasure-proof", str(account_id), "--digest", value_digest(email)]
    args += proof_args(deployed)

    code, stdout, stderr = run(env, *args)
    assert code == 0, stdout + stderr
    assert json.loads(stdout)["unregistered"] == []

    # A new resting place, made without its entry: a mail table and a topic.
    mail = service_store(deployed, "mail")
    try:
        with mail.ddl() as cursor:
            cursor.execute(f"CREATE TABLE {mail.table('nicknames')} (account_id TEXT, nick TEXT)")
        assert unregistered_tables("mail", list_tables(mail)) == ["nicknames"]
    finally:
        mail.close()
    bootstrap = deployed.kafka_bootstrap
    assert bootstrap is not None
    extra = f"{topics.prefix}account.nicknames.v1"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(extra, 1, 1)])
        # The broker answers a creation before its metadata lists the topic (as ensure_topics).
        admin.wait_for_topics([extra], timeout_ms=30_000)
        assert unregistered_topics(topics, list_topics(bootstrap)) == [extra]
        code, stdout, stderr = run(env, *args)
    finally:
        admin.delete_topics([extra])
        admin.close()

    report = json.loads(stdout)
    assert code == 1, stderr
    assert report["unregistered"] == sorted([extra, "mail:nicknames"])
    assert report["erased"] is False and report["values_found_anywhere"] == 0
