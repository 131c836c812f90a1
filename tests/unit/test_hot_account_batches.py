"""`HotAccounts.take_many` / `put_many` (bulk scouts' kept states) keep the rules of `take` and
`put`: only active, saved accounts are kept, never over a newer version; a taken account is
gone from the map; an expired one is not given."""

from __future__ import annotations

import copy
from uuid import uuid4

import pytest

from lifecycle import hot_accounts
from lifecycle.domain import Account
from lifecycle.hot_accounts import HotAccounts


def saved() -> Account:
    account = Account.register(
        email="hot@example.jp", display_name="Hot", consent_version="v1", account_id=uuid4()
    )
    account.collect_events()
    return account


def test_only_active_saved_accounts_are_kept_and_never_over_a_newer_version() -> None:
    kept = HotAccounts(60.0)
    active, withdrawing, unsaved, newer = saved(), saved(), saved(), saved()
    withdrawing.request_withdrawal(reason="hired_elsewhere")
    withdrawing.collect_events()
    unsaved.edit_preferences(desired={"min_salary": 1})  # an event still pending
    older = copy.deepcopy(newer)
    newer.edit_preferences(desired={"min_salary": 2})
    newer.collect_events()
    kept.put_many([newer])

    kept.put_many([active, withdrawing, unsaved, older])

    taken = kept.take_many([a.id for a in (active, withdrawing, unsaved, newer)])
    assert set(taken) == {active.id, newer.id}
    assert taken[newer.id] is newer
    assert kept.take_many([active.id, newer.id]) == {}  # taken means gone
    assert len(kept) == 0


def test_an_expired_state_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = HotAccounts(60.0)
    account = saved()
    kept.put_many([account])
    now = hot_accounts.time.monotonic()
    monkeypatch.setattr(hot_accounts.time, "monotonic", lambda: now + 61.0)
    assert kept.take_many([account.id]) == {}


def test_the_size_bound_drops_the_oldest() -> None:
    kept = HotAccounts(60.0, size=2)
    first, second, third = saved(), saved(), saved()
    kept.put_many([first, second, third])
    assert set(kept.take_many([first.id, second.id, third.id])) == {second.id, third.id}
