"""Every connection pool replaces broken connections and recovers from a full cut in one attempt.

A cut (`pg_terminate_backend` on every backend) or a server restart kills every pooled
connection at once; the pool must not hand them out one by one (one failure per connection).
The application's pool (also the projections' and the admin routes'), and a consumer store's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import psycopg
import pytest
from servers import ThrowawayPostgres

from lifecycle.application import Accounts
from lifecycle.bootstrap import migrate_lifecycle
from lifecycle.crypto import new_master_key
from lifecycle.settings import Settings
from lifecycle.storage import Database

pytestmark = pytest.mark.postgres

POOL_SIZE = 5


@pytest.fixture
def accounts(throwaway_postgres: ThrowawayPostgres) -> Iterator[Accounts]:
    """The application in a schema of its own on the fault tier's server (the pipeline of
    `test_faults` uses `public`)."""
    with psycopg.connect(throwaway_postgres.url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS pooltest_app")
    settings = Settings(
        database_url=throwaway_postgres.url,
        database_schema="pooltest_app",
        master_key=new_master_key(),
    )
    migrate_lifecycle(settings)
    app = Accounts(env=settings.application_env())
    yield app
    app.close()
    with psycopg.connect(throwaway_postgres.url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA pooltest_app CASCADE")


@pytest.fixture
def store(throwaway_postgres: ThrowawayPostgres) -> Iterator[Database]:
    database = Database.open(throwaway_postgres.url, "pooltest", pool_size=POOL_SIZE)
    yield database
    database.close()


def fill(database: Database, connections: int) -> None:
    """`connections` transactions open at once, so the pool holds that many connections."""
    with ExitStack() as stack:
        for _ in range(connections):
            cursor = stack.enter_context(database.transaction(commit=False))
            cursor.execute("SELECT 1").fetchone()


def first_attempt_s(database: Database) -> float:
    """One transaction, which must succeed at its first attempt; how long it took."""
    began = time.monotonic()
    with database.transaction(commit=False) as cursor:
        assert cursor.execute("SELECT 1").fetchone() == (1,)
    return time.monotonic() - began


@pytest.mark.parametrize("pool", ["application", "consumer_store"])
def test_a_full_cut_costs_one_attempt_not_one_per_connection(
    pool: str, throwaway_postgres: ThrowawayPostgres, request: pytest.FixtureRequest
) -> None:
    database: Database = (
        request.getfixturevalue("accounts").database
        if pool == "application"
        else request.getfixturevalue("store")
    )
    for _round in range(3):
        fill(database, POOL_SIZE)
        assert throwaway_postgres.cut() >= POOL_SIZE
        # psycopg_pool waits about a second after a failed check before the next try.
        assert first_attempt_s(database) < 3.0
        fill(database, POOL_SIZE)  # and every connection after it works too


def test_the_application_writes_at_once_after_a_cut(
    accounts: Accounts, throwaway_postgres: ThrowawayPostgres
) -> None:
    fill(accounts.database, POOL_SIZE)
    throwaway_postgres.cut()
    began = time.monotonic()
    account_id = accounts.register(
        email="pool.cut@example.jp", display_name="Pool Cut", consent_version="2026-04"
    )
    assert time.monotonic() - began < 3.0
    assert accounts.load_for_audit(account_id).id == account_id


def test_a_pool_recovers_from_a_server_restart_in_one_attempt(
    store: Database, throwaway_postgres: ThrowawayPostgres
) -> None:
    fill(store, POOL_SIZE)
    throwaway_postgres.stop()
    throwaway_postgres.start()
    assert first_attempt_s(store) < 3.0
