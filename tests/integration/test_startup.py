"""Processes and migrations that start together on one schema must all come through."""

from __future__ import annotations

import threading

import psycopg
import pytest
from eventsourcing.persistence import OperationalError

from consumers.migrations import kit_component
from lifecycle.bootstrap import build_accounts, migrate_lifecycle
from lifecycle.crypto import new_master_key
from lifecycle.migrations import LIFECYCLE, _keys
from lifecycle.migrator import retry_lock_races
from lifecycle.settings import Settings
from lifecycle.storage import Database


def _settings(postgres_url: str, schema: str) -> Settings:
    return Settings(database_url=postgres_url, database_schema=schema, master_key=new_master_key())


def test_concurrent_migrations_then_starts_on_a_fresh_schema_all_succeed(
    postgres_url: str, pg_schema: str
) -> None:
    settings = _settings(postgres_url, pg_schema)
    starters = 6
    barrier = threading.Barrier(starters, timeout=60)
    failures: list[BaseException] = []
    applied: list[int] = []
    started = []

    def start() -> None:
        barrier.wait()
        try:
            applied.append(len(migrate_lifecycle(settings)))
            started.append(build_accounts(settings))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for accounts in started:
        accounts.close()
    assert failures == []
    assert len(started) == starters
    # One of them applied every migration of every component; the others found nothing to do.
    assert sorted(applied) == [0] * (starters - 1) + [
        # The erasure and export intake kits, the read models, the data exports.
        len(LIFECYCLE.migrations) + 2 * kit_component().latest + 3
    ]


def test_the_shredding_migration_on_a_live_schema_waits_for_no_registration(
    postgres_url: str, pg_schema: str
) -> None:
    """Adopting a schema the previous release made while a registration is mid-transaction
    (keys row written, the events table locked) must not wait for it: replacing the shredding
    triggers did, and deadlocked when the registration then waited for the keys table."""
    settings = _settings(postgres_url, pg_schema)
    migrate_lifecycle(settings)
    database = Database.open(postgres_url, pg_schema, application_name="Accounts")
    done = threading.Event()

    def adopt() -> None:
        with database.ddl() as cursor:
            _keys(cursor, database)
        done.set()

    try:
        with psycopg.connect(postgres_url) as registration:
            registration.execute(
                f"INSERT INTO {pg_schema}.account_keys (account_id, wrapped_key) "
                "VALUES (gen_random_uuid(), 'k')"
            )
            registration.execute(f"LOCK TABLE {database.events_table} IN EXCLUSIVE MODE")
            threading.Thread(target=adopt, daemon=True).start()
            assert done.wait(timeout=20), "the migration waited for the registration's locks"
            registration.rollback()
    finally:
        database.close()


def test_a_migration_that_loses_a_lock_race_runs_again_and_other_errors_do_not() -> None:
    attempts: list[int] = []

    def loses_once() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            try:
                raise psycopg.errors.DeadlockDetected("deadlock detected")
            except psycopg.Error as error:
                raise OperationalError(str(error)) from error  # as the library wraps it
        return "built"

    assert retry_lock_races(loses_once) == "built"
    assert len(attempts) == 2

    def misconfigured() -> str:
        attempts.append(1)
        raise OperationalError("password authentication failed")

    attempts.clear()
    with pytest.raises(OperationalError):
        retry_lock_races(misconfigured)
    assert len(attempts) == 1
