"""`consumers.member_data.runs`: a batch grouped by kind, each account's records in order."""

from __future__ import annotations

from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from consumers.member_data import OTHER, PURGED, WITHDRAWAL, runs

PROFILE, SCOUT = "profile", "scout"
KINDS = (OTHER, WITHDRAWAL, PURGED, PROFILE, SCOUT)
ACCOUNTS = [UUID(int=n) for n in range(1, 6)]


def test_interleaved_kinds_of_distinct_accounts_are_one_run_per_kind() -> None:
    a, b, c, d = ACCOUNTS[:4]
    kinds = [PROFILE, OTHER, WITHDRAWAL, PROFILE, OTHER, WITHDRAWAL, PURGED]
    accounts = [a, b, c, d, a, b, c]
    assert runs(kinds, accounts) == [
        (OTHER, [1, 4]),
        (PROFILE, [0, 3]),
        (WITHDRAWAL, [2, 5]),
        (PURGED, [6]),  # after c's withdrawal
    ]


def test_a_repeatable_kind_keeps_one_accounts_records_in_one_run() -> None:
    a, b = ACCOUNTS[:2]
    kinds = [SCOUT, SCOUT, SCOUT, WITHDRAWAL, SCOUT]
    accounts = [a, a, b, a, a]
    assert runs(kinds, accounts, frozenset({SCOUT})) == [
        (SCOUT, [0, 1, 2]),
        (WITHDRAWAL, [3]),
        (SCOUT, [4]),  # the scout after the withdrawal stays after it
    ]
    assert runs(kinds, accounts) == [
        (SCOUT, [0, 2]),
        (SCOUT, [1]),
        (WITHDRAWAL, [3]),
        (SCOUT, [4]),
    ]


@given(
    st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(ACCOUNTS)), max_size=40),
    st.booleans(),
)
def test_every_record_once_each_accounts_order_kept_runs_of_one_kind(
    batch: list[tuple[str, UUID]], scouts_repeat: bool
) -> None:
    kinds = [kind for kind, _ in batch]
    accounts = [account for _, account in batch]
    repeatable = frozenset({SCOUT}) if scouts_repeat else frozenset()
    grouped = runs(kinds, accounts, repeatable)
    order = [index for _, indexes in grouped for index in indexes]
    assert sorted(order) == list(range(len(batch)))
    for kind, indexes in grouped:
        assert indexes and all(kinds[i] == kind for i in indexes)
        assert indexes == sorted(indexes)
        named = [accounts[i] for i in indexes]
        if kind not in repeatable and kind != OTHER:
            assert len(set(named)) == len(named)
    # Handled in this order, every account's own records (ignored ones aside) come in the
    # order they were polled.
    for account in ACCOUNTS:
        own = [i for i in order if accounts[i] == account and kinds[i] != OTHER]
        assert own == sorted(own)
    # Never more runs than the grouping it replaced (one per change of kind along the batch,
    # and where an account repeats).
    assert len(grouped) <= len(consecutive_runs(kinds, accounts, repeatable))


def consecutive_runs(
    kinds: list[str], accounts: list[UUID], repeatable: frozenset[str]
) -> list[list[int]]:
    found: list[list[int]] = []
    named: set[UUID] = set()
    for index, (kind, account) in enumerate(zip(kinds, accounts, strict=True)):
        repeat = account in named and kind not in repeatable
        if not found or kinds[found[-1][0]] != kind or repeat:
            found.append([])
            named = set()
        found[-1].append(index)
        named.add(account)
    return found
