"""The account states bulk scouts keep (`lifecycle.bulk_scouts`) never decide anything: each
request reads what was stored after the kept version, the store's version check decides the
rest, and the states hold no personal value.

Two `Accounts` over one database stand for two processes in the sequenced cases; the race
runs two real processes. PostgreSQL only: the embedded SQLite path loads each account afresh.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from support import racing_scripts

from lifecycle.account_terms import REDACTED
from lifecycle.application import Accounts, ScoutItem, ScoutOutcome
from lifecycle.domain import Account
from lifecycle.errors import AccountPurgedError, AccountWithdrawingError
from lifecycle.settings import Settings

pytestmark = pytest.mark.parametrize("backend", ["postgres"])


@pytest.fixture
def two(settings: Settings) -> Iterator[tuple[Accounts, Accounts]]:
    first = Accounts(env=settings.application_env())
    second = Accounts(env=settings.application_env())
    yield first, second
    first.close()
    second.close()


def member(accounts: Accounts) -> UUID:
    return accounts.register(
        email=f"bulk-{uuid4().hex[:10]}@example.jp", display_name="Bulk", consent_version="v1"
    )


def bulk(accounts: Accounts, *pairs: tuple[UUID, str]) -> list[ScoutOutcome]:
    return accounts.receive_scouts([ScoutItem(a, s, "acme", "job") for a, s in pairs])


def scout_ids(accounts: Accounts, account_id: UUID) -> list[str]:
    return [
        accounts.mapper.to_domain_event(stored).scout_id  # type: ignore[attr-defined]
        for stored in accounts.recorder.select_events(account_id)
        if stored.topic.endswith(Account.ScoutReceived.__qualname__)
    ]


def rows_read(accounts: Accounts, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many stored events each bulk request read, appended as they run."""
    counts: list[int] = []
    select = accounts.recorder.select_events_after  # type: ignore[attr-defined]

    def counted(positions: Any) -> Any:
        found = select(positions)
        counts.append(sum(len(rows) for rows in found.values()))
        return found

    monkeypatch.setattr(accounts.recorder, "select_events_after", counted)
    return counts


def test_a_kept_state_reads_nothing_more_when_nothing_was_stored_since(
    two: tuple[Accounts, Accounts], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two
    ids = [member(a) for _ in range(3)]
    counts = rows_read(a, monkeypatch)
    assert bulk(a, *((i, "s-1") for i in ids)) == [True] * 3
    assert bulk(a, *((i, "s-2") for i in ids)) == [True] * 3
    assert bulk(a, *((i, "s-2") for i in ids)) == [False] * 3  # duplicates, from kept states
    assert counts == [3, 0, 0]  # the registrations, then nothing: each state was kept
    assert [scout_ids(a, i) for i in ids] == [["s-1", "s-2"]] * 3


def test_kept_states_hold_no_personal_value_and_stay_out_of_the_applications_copies(
    two: tuple[Accounts, Accounts],
) -> None:
    a, _ = two
    account_id = member(a)
    hot_before = len(a.hot_accounts)
    assert bulk(a, (account_id, "s-1")) == [True]
    entry = a.bulk_scouts.kept.take(account_id)
    assert entry is not None
    kept = entry[1]
    assert (kept.email, kept.display_name) == (REDACTED, REDACTED)
    assert kept.version == 2 and set(kept.scouts) == {"s-1"}
    assert len(a.hot_accounts) == hot_before
    # The application's own reads still open the values.
    assert a.get_account(account_id).display_name == "Bulk"


def test_a_withdrawal_elsewhere_refuses_scouts_on_a_kept_state(
    two: tuple[Accounts, Accounts], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two
    account_id, other = member(a), member(a)
    assert bulk(a, (account_id, "s-1"), (other, "s-1")) == [True, True]  # a keeps both
    b.request_withdrawal(account_id, reason="hired_elsewhere")
    counts = rows_read(a, monkeypatch)
    outcomes = bulk(a, (account_id, "s-2"), (other, "s-2"))
    assert isinstance(outcomes[0], AccountWithdrawingError)
    assert outcomes[1] is True
    assert counts == [1]  # one read, of the withdrawal only: the rules saw it before saving
    assert scout_ids(a, account_id) == ["s-1"]
    b.purge(account_id)
    b.after_purges()
    [purged] = bulk(a, (account_id, "s-3"))
    assert isinstance(purged, AccountPurgedError)
    assert scout_ids(b, other) == ["s-1", "s-2"]


def test_scouts_recorded_elsewhere_are_seen_and_none_is_lost(
    two: tuple[Accounts, Accounts], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two
    account_id = member(a)
    assert bulk(a, (account_id, "s-1")) == [True]  # kept by a at version 2
    assert bulk(b, (account_id, "s-2")) == [True]
    assert b.receive_scout(account_id, scout_id="s-3", company_id="globex", job_id="job")
    counts = rows_read(a, monkeypatch)
    saves = a.group_commit.saved_requests
    # a's kept state knows none of b's: a recorded them, so they are duplicates; s-4 is new.
    assert bulk(a, (account_id, "s-2"), (account_id, "s-3"), (account_id, "s-4")) == [
        False,
        False,
        True,
    ]
    assert (counts, a.group_commit.saved_requests - saves) == ([2], 1)  # no conflict
    assert scout_ids(a, account_id) == ["s-1", "s-2", "s-3", "s-4"]


def test_a_write_between_the_read_and_the_save_is_retried_for_that_account_only(
    two: tuple[Accounts, Accounts], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two
    raced, calm, other = member(a), member(a), member(a)
    assert bulk(a, (raced, "s-1"), (calm, "s-1"), (other, "s-1")) == [True] * 3
    select = a.recorder.select_events_after  # type: ignore[attr-defined]
    asked: list[list[UUID]] = []

    def racing(positions: Any) -> Any:
        found = select(positions)
        asked.append([account_id for account_id, _ in positions])
        if len(asked) == 1:
            b.receive_scout(raced, scout_id="other", company_id="c", job_id="j")
        return found

    monkeypatch.setattr(a.recorder, "select_events_after", racing)
    saves = a.group_commit.saved_requests
    outcomes = bulk(a, (raced, "s-2"), (calm, "s-2"), (raced, "other"), (other, "s-2"))
    assert outcomes == [True, True, False, True]
    assert asked == [[raced, calm, other], [raced]]
    # The batch that met b's event, the other two saved together without the raced one,
    # the raced one's retry.
    assert a.group_commit.saved_requests - saves == 3
    assert scout_ids(a, raced) == ["s-1", "other", "s-2"]
    assert scout_ids(a, calm) == scout_ids(a, other) == ["s-1", "s-2"]


SCOUTER = """
import json, sys
from uuid import UUID
from lifecycle.application import Accounts, ScoutItem
from lifecycle.errors import AccountWithdrawingError, ConcurrentUpdateError

env, ids, tag, rounds = json.loads(sys.stdin.readline())
accounts = Accounts(env=env)
ids = [UUID(i) for i in ids]
print("ready", flush=True)
sys.stdin.readline()  # go
recorded, refused = [], []
for n in range(rounds):
    if tag == 1 and n == rounds // 2:
        accounts.request_withdrawal(ids[0], reason="hired_elsewhere")
    items = {f"{tag}-{n}-{i}": ScoutItem(i, f"{tag}-{n}-{i}", "c", "j") for i in ids}
    while items:  # a 409 stored nothing: a client asks again
        outcomes = accounts.receive_scouts(list(items.values()))
        for scout_id, outcome in zip(list(items), outcomes, strict=True):
            if isinstance(outcome, ConcurrentUpdateError):
                continue
            del items[scout_id]
            if outcome is True:
                recorded.append(scout_id)
            elif isinstance(outcome, AccountWithdrawingError):
                refused.append(scout_id)
            else:
                raise AssertionError(repr(outcome))
accounts.close()
print(json.dumps({"recorded": recorded, "refused": refused}), flush=True)
"""

ROUNDS = 30
ACCOUNTS = 8


def test_two_processes_scouting_the_same_accounts_break_no_rule_and_lose_no_scout(
    settings: Settings, accounts: Accounts
) -> None:
    ids = [member(accounts) for _ in range(ACCOUNTS)]
    results = racing_scripts(
        SCOUTER,
        [[dict(settings.application_env()), [str(i) for i in ids], tag, ROUNDS] for tag in (1, 2)],
    )
    recorded = sorted(results[0]["recorded"] + results[1]["recorded"])
    stored = sorted(s for i in ids for s in scout_ids(accounts, i))
    # Every scout each process was told it recorded is stored, once; nothing else is.
    assert stored == recorded
    # No scout is stored after the withdrawal; every refusal was for the withdrawn account.
    [first, *_] = ids
    history = [
        type(accounts.mapper.to_domain_event(s)).__name__
        for s in accounts.recorder.select_events(first)
    ]
    withdrawn_at = history.index("WithdrawalRequested")
    assert "ScoutReceived" not in history[withdrawn_at + 1 :]
    refused = results[0]["refused"] + results[1]["refused"]
    assert refused and all(s.endswith(f"-{first}") for s in refused)
    # The other accounts took every scout of both processes.
    assert len(stored) == 2 * ROUNDS * (ACCOUNTS - 1) + len(scout_ids(accounts, first))
