"""Round trips to PostgreSQL per command, counted from libpq's protocol trace (`bench.wire`).

A registration is one round trip (`BEGIN`, the insert and `COMMIT` sent together, one Sync),
an edit two (the account and its key in one statement, then the save), or one when this
process saved the account a moment ago (`lifecycle.hot_accounts`). The connection's
health is still checked before use, without a round trip: one the server closed while it sat
in the pool is not handed out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from lifecycle.application import Accounts

# `bench` is not an installed package: it runs as `python -m bench` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.wire import traced

pytestmark = pytest.mark.parametrize("backend", ["postgres"])

COMMANDS = 20


def register(accounts: Accounts) -> UUID:
    return accounts.register(
        email=f"trips-{uuid4().hex[:12]}@example.jp",
        display_name="Round Trip",
        consent_version="2026-04",
    )


def edit(accounts: Accounts, account_id: UUID, n: int) -> None:
    accounts.edit_preferences(account_id, desired={"locations": ["Tokyo"], "min_salary": n})


def turns(accounts: Accounts, command: Callable[[int], object]) -> float:
    """Round trips per call of `command`, after a warm-up (statements prepared once)."""
    for n in range(3):
        command(n)
    pool: Any = accounts.database.datastore.pool
    with traced(pool) as trace:
        for n in range(3, 3 + COMMANDS):
            command(n)
    return trace.turns() / COMMANDS


def test_a_registration_is_one_round_trip(accounts: Accounts) -> None:
    assert turns(accounts, lambda _: register(accounts)) == 1


def test_an_edit_is_two_round_trips(accounts: Accounts) -> None:
    members = [register(accounts) for _ in range(3 + COMMANDS)]
    # Each member edited once: its account is loaded (this process has no copy of it).
    assert turns(accounts, lambda n: edit(accounts, members[n], n)) == 2


def test_an_edit_of_an_account_this_process_just_saved_is_one_round_trip(
    accounts: Accounts,
) -> None:
    # Both kept for a minute, not a second: the count must not depend on the machine's speed.
    accounts.vault._cache_seconds = accounts.hot_accounts.seconds = 60.0
    members = [register(accounts) for _ in range(3)]  # each warmed by `turns`
    assert turns(accounts, lambda n: edit(accounts, members[n % 3], n)) == 1


def test_a_connection_the_server_closed_is_not_handed_out(
    accounts: Accounts, postgres_url: str
) -> None:
    member = register(accounts)
    edit(accounts, member, 1)
    pool: Any = accounts.database.datastore.pool
    idle = [conn.info.backend_pid for conn in pool._pool]
    assert idle, "the pool kept no connection"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM unnest(%s::int[]) AS pid", (idle,)
        )
    accounts.hot_accounts.forget(member)  # the edit loads: two round trips, then one
    with traced(pool) as trace:
        edit(accounts, member, 2)
        register(accounts)
    # Every connection handed out answered: none of the dead ones reached a command, and
    # neither command was tried twice.
    assert trace.failed_connections() == 0
    assert trace.turns(handed_out=True) == 3
    assert accounts.get_account(member).desired["min_salary"] == 2
