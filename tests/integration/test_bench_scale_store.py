"""The scale bench's load (`bench/scale_store.py`) is a store the service accepts as its own:
the account directory rows it copies in are those the read model's own rebuild makes from the
same events, the positions are at the head, and a loaded member's sealed events and key open
for a command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from lifecycle.application import Accounts
from projections.directory import AccountDirectory
from projections.runner import rebuild

# `bench` is not an installed package: it runs as `python -m bench` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.scale_store import load_store

pytestmark = pytest.mark.parametrize("backend", ["postgres"])


def directory(accounts: Accounts) -> list[tuple[Any, ...]]:
    db = accounts.database
    with db.transaction(commit=False) as cursor:
        return [
            tuple(row)
            for row in cursor.execute(
                f"SELECT * FROM {db.table('account_directory')} ORDER BY account_id"
            ).fetchall()
        ]


def positions(accounts: Accounts) -> tuple[int, int]:
    db = accounts.database
    with db.transaction(commit=False) as cursor:
        relay = cursor.execute(f"SELECT position FROM {db.table('relay_position')}").fetchone()
        tracked = cursor.execute(
            f"SELECT notification_id FROM {db.table('account_directory_tracking')}"
        ).fetchone()
    assert relay is not None and tracked is not None
    return int(relay[0]), int(tracked[0])


def test_the_loaded_store_is_one_the_service_would_have_written(accounts: Accounts) -> None:
    loaded = load_store(accounts, 600)  # 100 members, 6 events each, in one batch
    assert loaded.events == 600 and len(loaded.account_ids) == 100
    head = accounts.recorder.max_notification_id()
    assert positions(accounts) == (head, head)
    copied = directory(accounts)
    assert len(copied) == 100
    rebuild(accounts, AccountDirectory)
    assert directory(accounts) == copied

    member = loaded.account_ids[7]
    accounts.edit_preferences(member, desired={"locations": ["Osaka"]})
    account = accounts.get_account(member)
    assert account.desired["locations"] == ["Osaka"]
    assert account.email == "gen-7@example.com"
