"""Processes that start together on one fresh schema must all come up."""

from __future__ import annotations

import threading

import psycopg
import pytest
from eventsourcing.persistence import OperationalError

from lifecycle.bootstrap import _setting_up, build_accounts
from lifecycle.crypto import new_master_key
from lifecycle.settings import Settings


def test_concurrent_starts_on_a_fresh_schema_all_succeed(postgres_url: str, pg_schema: str) -> None:
    settings = Settings(
        database_url=postgres_url, database_schema=pg_schema, master_key=new_master_key()
    )
    starters = 8
    barrier = threading.Barrier(starters, timeout=60)
    failures: list[BaseException] = []
    started = []

    def start() -> None:
        barrier.wait()
        try:
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


def test_start_up_on_a_live_schema_waits_for_no_registration(
    postgres_url: str, pg_schema: str
) -> None:
    """A process starting while a registration is mid-transaction (keys row written, the
    events table locked) must not wait for it: replacing the shredding triggers did, and
    deadlocked when the registration then waited for the keys table the start-up held."""
    settings = Settings(
        database_url=postgres_url, database_schema=pg_schema, master_key=new_master_key()
    )
    accounts = build_accounts(settings)
    done = threading.Event()
    try:
        with psycopg.connect(postgres_url) as registration:
            registration.execute(
                f"INSERT INTO {pg_schema}.account_keys (account_id, wrapped_key) "
                "VALUES (gen_random_uuid(), 'k')"
            )
            registration.execute(f"LOCK TABLE {accounts.database.events_table} IN EXCLUSIVE MODE")
            starting = threading.Thread(
                target=lambda: (accounts.vault.create_schema(), done.set()), daemon=True
            )
            starting.start()
            assert done.wait(timeout=20), "start-up DDL waited for the registration's locks"
            registration.rollback()
    finally:
        accounts.close()


def test_a_start_up_that_loses_a_lock_race_runs_again_and_other_errors_do_not() -> None:
    attempts: list[int] = []

    def loses_once() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            try:
                raise psycopg.errors.DeadlockDetected("deadlock detected")
            except psycopg.Error as error:
                raise OperationalError(str(error)) from error  # as the library wraps it
        return "built"

    assert _setting_up(loses_once) == "built"
    assert len(attempts) == 2

    def misconfigured() -> str:
        attempts.append(1)
        raise OperationalError("password authentication failed")

    attempts.clear()
    with pytest.raises(OperationalError):
        _setting_up(misconfigured)
    assert len(attempts) == 1
