"""Racing commands on SQLite and the real PostgreSQL: optimistic concurrency loses nothing."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from support import race

from lifecycle.application import MAX_ATTEMPTS, Accounts
from lifecycle.domain import Account
from lifecycle.email_claim import EmailClaim
from lifecycle.errors import EmailAlreadyClaimedError, GiftAlreadyClaimedError

N = 8  # racers in each race: support.race's default


def stored(accounts: Accounts, event_type: type[Any]) -> list[Any]:
    return [
        accounts.mapper.to_domain_event(n)
        for n in accounts.recorder.select_notifications(start=1, limit=100_000)
        if n.topic.endswith(event_type.__qualname__)
    ]


def test_retries_suffice_for_the_races_below() -> None:
    # A retry fails only when another racer committed, so N racers need at most N attempts.
    assert MAX_ATTEMPTS >= N


def test_one_of_many_simultaneous_registrations_of_an_address_wins(accounts: Accounts) -> None:
    variants = ["mika@example.jp", "MIKA@example.jp", " Mika@Example.JP ", "mika@EXAMPLE.jp"]
    results = race(
        lambda i: accounts.register(
            email=variants[i % len(variants)], display_name=f"Mika {i}", consent_version="v1"
        )
    )
    winners = [r for r in results if isinstance(r, UUID)]
    losers = [r for r in results if not isinstance(r, UUID)]
    assert len(winners) == 1, results
    # A loser's retry finds the address taken: never a 409 for a lost registration race.
    assert len(losers) == N - 1
    assert all(isinstance(r, EmailAlreadyClaimedError) for r in losers), losers
    assert all(r.code == "email_in_use" for r in losers if isinstance(r, EmailAlreadyClaimedError))

    [winner] = winners
    account = accounts.get_account(winner)
    assert account.email == "mika@example.jp"
    assert [e.originator_id for e in stored(accounts, Account.Registered)] == [winner]
    [claimed] = stored(accounts, EmailClaim.Claimed)
    holder = accounts.vault.holder_token(winner, claimed.originator_id)
    assert claimed.holder == holder
    assert len(stored(accounts, EmailClaim.Created)) == 1
    assert accounts.repository.get(claimed.originator_id).holder == holder
    # The losers' keys went down with their transactions: only the winner has one.
    assert key_owners(accounts) == [winner]


def test_a_refused_registration_leaves_no_key_behind(accounts: Accounts) -> None:
    first = accounts.register(email="sora@example.jp", display_name="Sora", consent_version="v1")
    try:
        accounts.register(email="SORA@example.jp", display_name="Sora 2", consent_version="v1")
    except EmailAlreadyClaimedError:
        pass
    else:
        raise AssertionError("a second registration of one address was accepted")
    assert key_owners(accounts) == [first]


def key_owners(accounts: Accounts) -> list[UUID]:
    db = accounts.database
    with db.transaction(commit=False) as cursor:
        rows = cursor.execute(f"SELECT account_id FROM {db.table('account_keys')}").fetchall()
    return [db.to_uuid(row[0]) for row in rows]


def test_simultaneous_registrations_of_distinct_addresses_all_succeed(accounts: Accounts) -> None:
    results = race(
        lambda i: accounts.register(
            email=f"member{i}@example.jp", display_name=f"Member {i}", consent_version="v1"
        )
    )
    assert all(isinstance(r, UUID) for r in results), results
    ids = [r for r in results if isinstance(r, UUID)]
    assert len(set(ids)) == N
    for i, account_id in enumerate(ids):
        assert accounts.get_account(account_id).email == f"member{i}@example.jp"
    assert len(stored(accounts, EmailClaim.Claimed)) == N


def test_distinct_scouts_racing_on_one_account_are_all_recorded(accounts: Accounts) -> None:
    account_id = accounts.register(email="ren@example.jp", display_name="Ren", consent_version="v1")
    results = race(
        lambda i: accounts.receive_scout(
            account_id, scout_id=f"scout-{i}", company_id=f"company-{i % 3}", job_id=f"job-{i}"
        )
    )
    assert results == [True] * N
    account = accounts.get_account(account_id)
    assert account.version == 1 + N
    assert set(account.scouts) == {f"scout-{i}" for i in range(N)}
    for i in range(N):
        assert account.scouts[f"scout-{i}"]["job_id"] == f"job-{i}"
    recorded = [e.scout_id for e in stored(accounts, Account.ScoutReceived)]
    assert sorted(recorded) == sorted(f"scout-{i}" for i in range(N))


def test_the_same_scout_racing_is_recorded_once(accounts: Accounts) -> None:
    account_id = accounts.register(
        email="sora@example.jp", display_name="Sora", consent_version="v1"
    )
    results = race(
        lambda _: accounts.receive_scout(
            account_id, scout_id="scout-1", company_id="acme", job_id="job-1"
        )
    )
    assert sorted(results, key=str) == [False] * (N - 1) + [True]
    assert accounts.get_account(account_id).version == 2
    assert len(stored(accounts, Account.ScoutReceived)) == 1


def test_racing_gift_claims_pay_out_once(accounts: Accounts) -> None:
    account_id = accounts.register(email="aoi@example.jp", display_name="Aoi", consent_version="v1")
    for company in ("acme", "globex"):
        accounts.receive_scout(account_id, scout_id=company, company_id=company, job_id="j")
    results = race(
        lambda i: accounts.claim_gift(
            account_id, company_id=("acme", "globex")[i % 2], start_date=date(2026, 6, 1)
        )
    )
    assert results.count(None) == 1, results
    refusals = [r for r in results if r is not None]
    assert len(refusals) == N - 1
    assert all(isinstance(r, GiftAlreadyClaimedError) for r in refusals), refusals
    assert len(stored(accounts, Account.GiftClaimed)) == 1
    assert accounts.get_account(account_id).version == 4


def test_racing_withdrawal_and_purge_happen_once(accounts: Accounts) -> None:
    account_id = accounts.register(email="yui@example.jp", display_name="Yui", consent_version="v1")
    requested = race(lambda _: accounts.request_withdrawal(account_id, reason="other"))
    assert sorted(requested, key=str) == [False] * (N - 1) + [True]
    purged = race(lambda _: accounts.purge(account_id))
    assert sorted(purged, key=str) == [False] * (N - 1) + [True]
    assert len(stored(accounts, Account.WithdrawalRequested)) == 1
    assert len(stored(accounts, Account.Purged)) == 1
    assert len(stored(accounts, EmailClaim.Released)) == 1
    assert accounts.vault.is_destroyed(account_id)
    # The address is free again, exactly once.
    again = race(
        lambda _: accounts.register(
            email="yui@example.jp", display_name="Yui", consent_version="v2"
        )
    )
    assert sum(isinstance(r, UUID) for r in again) == 1
    assert sum(isinstance(r, EmailAlreadyClaimedError) for r in again) == N - 1
