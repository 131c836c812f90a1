"""The account directory writes each account once per batch, and its rebuild (account by
account, from stored states: lifecycle.stored_fold) gives the table that following the log
event by event gives.

Hypothesis generates members driven by any command through the real aggregate, saved at random
points on SQLite and PostgreSQL; the directory is then projected from the notification log one
event per batch (one statement per event, as it always did), five per batch (accounts spanning
batches), and rebuilt; the three tables must be equal row for row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projection_history import History, table_rows

from lifecycle.account_terms import WithdrawalReason
from lifecycle.application import Accounts
from lifecycle.domain import Account
from lifecycle.errors import LifecycleError
from projections.base import BatchCursor
from projections.directory import AccountDirectory
from projections.runner import Projector, rebuild

AT = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)
commands = st.lists(
    st.one_of(
        st.tuples(st.just("edit"), st.sampled_from(["Designer", "Engineer"])),
        st.tuples(st.just("scout"), st.integers(0, 3), st.sampled_from(["acme", "globex"])),
        st.tuples(st.just("gift"), st.sampled_from(["acme", "globex"])),
        st.tuples(st.just("withdraw"), st.sampled_from([r.value for r in WithdrawalReason])),
        st.tuples(st.just("purge")),
        st.tuples(st.just("save")),
    ),
    max_size=10,
)


def drive(accounts: Accounts, channel: str, history: list[tuple[Any, ...]]) -> None:
    account = Account.register(
        email="m@example.jp", display_name="M", consent_version="2026-04", channel=channel
    )
    at = AT
    for name, *args in history:
        at += timedelta(hours=5)
        if name == "save":
            accounts.save(account)
            continue
        with contextlib.suppress(LifecycleError):
            if name == "edit":
                account.edit_preferences(job_title=args[0])
            elif name == "scout":
                account.receive_scout(
                    scout_id=f"s-{args[0]}", company_id=args[1], job_id="j", received_at=at
                )
            elif name == "gift":
                account.claim_gift(company_id=args[0], start_date=date(2026, 6, 1))
            elif name == "withdraw":
                account.request_withdrawal(reason=args[0], acknowledge_gift_loss=True, at=at)
            elif name == "purge":
                account.purge(at=at)
    accounts.save(account)


def projected(accounts: Accounts, suffix: str, batch_size: int) -> list[tuple[Any, ...]]:
    model = AccountDirectory(accounts.database, suffix=suffix)
    model.create()
    Projector(accounts, model, batch_size=batch_size).catch_up()
    return table_rows(accounts.database, model.table("account_directory"), "account_id")


@settings(
    max_examples=10,  # a rebuild per example is DDL and a swap: ~0.5 s each on PostgreSQL
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(members=st.lists(st.tuples(st.sampled_from(["web", "app"]), commands), max_size=4))
def test_the_rebuild_gives_the_table_following_the_log_gives(
    accounts: Accounts, members: list[tuple[str, list[tuple[Any, ...]]]]
) -> None:
    for channel, history in members:
        drive(accounts, channel, history)

    one_by_one = projected(accounts, "__one", batch_size=1)
    by_five = projected(accounts, "__five", batch_size=5)
    rebuilt = rebuild(accounts, AccountDirectory, batch_size=7)

    live = AccountDirectory(accounts.database)
    rows = table_rows(accounts.database, live.table("account_directory"), "account_id")
    assert by_five == one_by_one
    assert rows == one_by_one
    assert rebuilt.position == (accounts.recorder.max_notification_id() or 0)
    assert live.position() == rebuilt.position


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Every executemany of a read model's batch: its statement's first word and row count."""
    calls: list[tuple[str, int]] = []
    original = BatchCursor.executemany

    def counting(self: BatchCursor, statement: str, rows: Any) -> None:
        calls.append((statement.split(maxsplit=1)[0], len(rows)))
        original(self, statement, rows)

    monkeypatch.setattr(BatchCursor, "executemany", counting)
    yield calls


def test_a_batch_writes_each_account_once(
    accounts: Accounts, history: History, written: list[tuple[str, int]]
) -> None:
    """The history's 4 accounts have 12 account events (and claim events the directory does
    not read): one batch of them is one INSERT per account, the rebuild's likewise."""
    model = AccountDirectory(accounts.database)
    model.create()
    Projector(accounts, model, batch_size=1000).catch_up()
    assert written == [("INSERT", 4)]

    written.clear()
    rebuild(accounts, AccountDirectory)
    assert written == [("INSERT", 4)]

    written.clear()
    for n in range(3):
        accounts.receive_scout(history.active, scout_id=f"more-{n}", company_id="acme", job_id="j")
    accounts.receive_scout(history.quiet, scout_id="q", company_id="acme", job_id="j")
    Projector(accounts, AccountDirectory(accounts.database), batch_size=1000).catch_up()
    assert written == [("UPDATE", 2)]
    row = AccountDirectory(accounts.database).get(history.active)
    assert row is not None and row["scouts_received"] == 2 + 3
