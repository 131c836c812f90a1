"""Fixtures every tier shares: the servers, the backend (every backend-dependent test runs on
SQLite and on the real PostgreSQL), settings, the application, an SMTP sink, per-test topics.

`make test` runs the tests on several pytest-xdist workers at once. Isolation comes with the
fixtures: every schema (`pg_schema`, `lifecycle_schema`) and topic prefix (`topics`,
`unique_topics`) is named by `support.unique_tag()`, the worker's id and a random part, so no
two tests running at once, on one worker or two, share a table, a topic or a consumer group.
A migrated schema is not made per test: a worker empties one a test is done with and hands it
to its next test (`lifecycle_schema`, `support.MigratedSchemas`). Tests that need a server of
their own (the fault tier's) are grouped on one worker by the fixture they use
(`SERVER_GROUPS`). Every worker collects the tests itself, so parameters must be fixed values
(no `uuid4()` in a test id).

Each tier's own fixtures live in its folder's conftest.py; helpers live in support.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import structlog
from support import (
    TOKENS,
    WORKER,
    MigratedSchemas,
    SmtpSink,
    migrate_embedded,
    smtp_sink,
    unique_tag,
    unique_topics,
)

from lifecycle.application import Accounts
from lifecycle.bootstrap import migrate_service
from lifecycle.crypto import new_master_key
from lifecycle.settings import Settings, token_digest
from schemas.contract import ERASING_SERVICES, TopicNames

ROOT = Path(__file__).resolve().parent.parent
SERVICES_ENV = ROOT / ".services" / "env"


def _services_env() -> dict[str, str]:
    """Addresses written by `scripts/services up`, unless the environment already has them."""
    found: dict[str, str] = {}
    if SERVICES_ENV.exists():
        for line in SERVICES_ENV.read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            if value:
                found[name.strip()] = value.strip().strip("'\"")
    found.update({k: v for k, v in os.environ.items() if k.startswith("LIFECYCLE_")})
    return found


# What marks a test as needing a server: a fixture it requests (directly or through others)
# or the value of a parameter. `pytest -m "not postgres and not kafka"` then runs without any.
# The fault tier's own servers count too: they are started from the same binaries and jars.
SERVER_FIXTURES = {
    "postgres_url": "postgres",
    "pg_schema": "postgres",
    "lifecycle_schema": "postgres",
    "kafka_bootstrap": "kafka",
    "throwaway_postgres": "postgres",
    "throwaway_kafka": "kafka",
    "kafka_cluster": "kafka",
}
SERVER_PARAMS = {("backend", "postgres"): "postgres"}
# Modules and tests marked `slow` (a node id up to its parameters, or a whole module): they
# start interpreters or tools as subprocesses, or generate many examples (property-based,
# fuzzing). `make test-fast` leaves them out with the server tiers, so it stays a loop to run
# while editing (about 50 s of CPU); `make test` runs them all.
SLOW = (
    "tests/cli/test_cli.py",
    "tests/api/test_openapi_fuzz.py",
    "tests/unit/test_account_properties.py",
    "tests/unit/test_alert_rules.py",
    "tests/unit/test_kit_imports.py",
    "tests/unit/test_transcoding.py::test_decodes_like_the_library",
    "tests/api/test_problems.py::test_no_client_input_causes_a_server_error",
    "tests/integration/test_migrations.py::test_migrate_on_the_command_line_reports_and_is_idempotent",
    "tests/integration/test_key_rotation.py::test_rotation_resumes_after_kill_9",
    "tests/integration/test_backup_restore.py::test_reshred_on_the_embedded_default_reports_nothing_to_do",
)
# Tests of many seconds each beyond the slow ones (pipelines on threads, CLI processes, dumps):
# xdist hands tests out in collection order, so these and the slow ones are collected first,
# and no worker is left running a long one alone while the others have finished.
LONG = (
    "tests/e2e/",
    "tests/kafka/",
    "tests/cli/",
    "tests/consumers/test_kafka_consumers.py",
    "tests/integration/test_backup_restore.py",
    "tests/integration/test_audit_cli.py",
    "tests/integration/test_key_rotation.py",
    "tests/projections/test_runner.py",
)
# Fixtures of servers that one worker starts once per run: every test using one goes to that
# worker (`--dist loadgroup`; xdist hands out the biggest group first).
SERVER_GROUPS = {
    "throwaway_postgres": "faults",
    "throwaway_kafka": "faults",
    "kafka_cluster": "faults",
}


def _fast_temporary_files() -> None:
    """Temporary files (`tmp_path`, SQLite databases, the fault tier's servers) on a RAM disk
    when there is one: a SQLite commit on disk costs an fsync, five times the setup of an API
    test. `TMPDIR` set by the caller wins."""
    ram = "/dev/shm"
    if "TMPDIR" in os.environ or not os.access(ram, os.W_OK):
        return
    if shutil.disk_usage(ram).free < 2 * 1024**3:
        return
    os.environ["TMPDIR"] = ram  # subprocesses (the CLI, the servers) too
    tempfile.tempdir = None


_fast_temporary_files()
# Every libpq connection of the tests and of the processes they start commits without waiting
# for its WAL flush: as visible to every other session at once, only not durable across a
# crash of the shared server, which no test causes (the fault tier's servers run fsync=off).
# DDL-heavy setup (a schema per test) is about a fifth faster. No query plans parallel
# workers either: the tests' tables are small, and a catalog query that started two (the
# check of a schema's shape, `support.MigratedSchemas`) took three times the server's CPU.
os.environ.setdefault("PGOPTIONS", "-c synchronous_commit=off -c max_parallel_workers_per_gather=0")
# Every application the tests and their processes open keeps one PostgreSQL connection, not
# the production ten: most tests use one, and each more is a server backend started and
# configured (about 5 ms of the server's CPU each; two per application made 3,700 sessions a
# run, one makes 2,800). The pool still grows by up to 20 under a test's load (races, group
# commits), as it does in production.
os.environ.setdefault("LIFECYCLE_DATABASE_POOL_SIZE", "1")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs PostgreSQL or Kafka (and the slow ones), so the fast tier
    can leave them out, group the tests sharing a server of their own on one worker, and put
    the long tests first."""
    for item in items:
        module, _, test = item.nodeid.partition("::")
        if module in SLOW or f"{module}::{test.partition('[')[0]}" in SLOW:
            item.add_marker(pytest.mark.slow)
        fixtures = getattr(item, "fixturenames", ())
        for group in sorted({SERVER_GROUPS[name] for name in fixtures if name in SERVER_GROUPS}):
            item.add_marker(pytest.mark.xdist_group(group))
        needs = {SERVER_FIXTURES[name] for name in fixtures if name in SERVER_FIXTURES}
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            needs |= {
                marker
                for (param, value), marker in SERVER_PARAMS.items()
                if callspec.params.get(param) == value
            }
        for marker in sorted(needs - {mark.name for mark in item.iter_markers()}):
            item.add_marker(marker)
    items.sort(
        key=lambda item: (not item.nodeid.startswith(LONG), not item.get_closest_marker("slow"))
    )


# Niceness of a worker's other tests. The fault tier times recovery under a load of its own; the
# rest of the suite only has to finish, so on a busy machine it yields the cores to it.
YIELDING_NICENESS = 10
_yielding = [WORKER == "main"]  # without xdist nothing runs beside the fault tier


# Where the machine allows it (root), the fault tier's worker, its servers and its processes
# also go above the shared servers, which serve the other workers at niceness 0.
FAULT_TIER_NICENESS = -5


def pytest_runtest_setup(item: pytest.Item) -> None:
    """On an xdist worker, before its first test outside a server group (xdist hands out the
    fault tier first), lower this process's priority and that of everything it starts; before
    a test of the group, raise it where permitted (before its servers start)."""
    if _yielding[0]:
        return
    if any(mark.name == "xdist_group" for mark in item.iter_markers()):
        if WORKER != "main" and os.getpriority(os.PRIO_PROCESS, 0) > FAULT_TIER_NICENESS:
            with contextlib.suppress(PermissionError):
                os.setpriority(os.PRIO_PROCESS, 0, FAULT_TIER_NICENESS)
        return
    os.setpriority(os.PRIO_PROCESS, 0, YIELDING_NICENESS)
    _yielding[0] = True


# A failed test shows how its Kafka members joined their groups (joins, assignments, leaves:
# a handful of lines per member), the evidence a rebalance that never ends needs.
logging.getLogger("kafka.coordinator").setLevel(logging.INFO)


@pytest.fixture(autouse=True)
def _default_logging() -> Iterator[None]:
    """A CLI run in-process configures logging for the whole process; undo it per test."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = _services_env().get("LIFECYCLE_DATABASE_URL", "")
    if not url.startswith("postgres"):
        pytest.fail("no PostgreSQL configured: run `scripts/services up` first")
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL at LIFECYCLE_DATABASE_URL unreachable: {error}")
    return url


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = _services_env().get("LIFECYCLE_KAFKA_BOOTSTRAP", "")
    if not bootstrap:
        pytest.fail("no Kafka configured: run `scripts/services up` first")
    return bootstrap


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A new, empty schema of its own per test, dropped afterwards, so tests never see each
    other (on one xdist worker or two: the name carries the worker's id). The tests of
    migrations and of what `lifecycle migrate` does take this one; the others take
    `lifecycle_schema`."""
    schema = f"t_{unique_tag()}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="session")
def migrated_schemas(postgres_url: str) -> Iterator[MigratedSchemas]:
    schemas = MigratedSchemas(postgres_url)
    yield schemas
    schemas.close()


@pytest.fixture
def lifecycle_schema(migrated_schemas: MigratedSchemas) -> Iterator[str]:
    """A schema of this test alone with the lifecycle database migrated, as `lifecycle
    migrate` leaves it: one of this worker's, emptied after the test that had it before
    (`support.MigratedSchemas`), so no test migrates one again."""
    schema = migrated_schemas.take()
    yield schema
    migrated_schemas.give_back(schema)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of migrated embedded databases (lifecycle and the three services' stores),
    made once per session: each SQLite test copies the files instead of migrating."""
    directory = tmp_path_factory.mktemp("migrated")
    migrate_embedded(
        Settings(
            database_url=f"sqlite:///{directory / 'lifecycle.sqlite3'}",
            kafka_bootstrap=None,
            master_key=new_master_key(),
        )
    )
    return directory


@pytest.fixture(scope="session")
def pg_service_stores(postgres_url: str) -> None:
    """The reference services' default schemas (`scout`, `chat`, `mail`), which `serve` with
    Kafka off runs in-process, migrated once per session (idempotent, in turns)."""
    for name in ERASING_SERVICES:
        migrate_service(Settings(database_url=postgres_url, kafka_bootstrap=None), name)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Service settings on the requested backend, with one known token per role, its database
    migrated. Embedded (no Kafka, no topic prefix) even when the shell exports the services'
    LIFECYCLE_* lines."""
    common: dict[str, object] = {
        "kafka_bootstrap": None,
        "topic_prefix": "",
        "master_key": new_master_key(),
        "api_tokens": {token_digest(token): role for role, token in TOKENS.items()},
        "log_format": "json",
    }
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        for file in template.glob("*.sqlite3"):
            shutil.copyfile(file, tmp_path / file.name)
        return Settings(database_url=f"sqlite:///{tmp_path / 'lifecycle.sqlite3'}", **common)
    postgres_url: str = request.getfixturevalue("postgres_url")
    schema: str = request.getfixturevalue("lifecycle_schema")
    request.getfixturevalue("pg_service_stores")
    return Settings(database_url=postgres_url, database_schema=schema, **common)


@pytest.fixture
def accounts(settings: Settings) -> Iterator[Accounts]:
    app = Accounts(env=settings.application_env())
    yield app
    app.close()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with smtp_sink() as sink:
        yield sink


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[TopicNames]:
    """Topics of this test alone on the shared broker, deleted afterwards."""
    with unique_topics(kafka_bootstrap) as names:
        yield names
