"""The Accounts application on SQLite and on the real PostgreSQL: rules end to end."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from lifecycle.account_terms import REDACTED, AccountStatus, WithdrawalReason
from lifecycle.application import Accounts
from lifecycle.data_export_aggregate import DataExport
from lifecycle.domain import Account
from lifecycle.email_claim import EmailClaim
from lifecycle.errors import (
    AccountNotFoundError,
    AccountNotWithdrawingError,
    AccountPurgedError,
    AccountWithdrawingError,
    EmailAlreadyClaimedError,
    GiftUnclaimedError,
)
from lifecycle.settings import Settings

START = date(2026, 6, 1)
MEMBER: dict[str, Any] = {
    "email": "Hanako.Yamada@Example.JP",
    "display_name": "Hanako Yamada",
    "consent_version": "2026-04",
    "phone": "090-1111-2222",
    "job_title": "Backend engineer",
    "work_history": [{"company": "Acme KK", "role": "Engineer", "years": 4}],
    "profile": {"birth_year": 1990, "prefecture": "Tokyo"},
    "desired": {"salary_jpy": 8_000_000, "remote": True},
}


def register(accounts: Accounts, **overrides: Any) -> UUID:
    return accounts.register(**{**MEMBER, **overrides})


def all_events(accounts: Accounts) -> list[Any]:
    """Every stored event in notification order, read through the application's mapper."""
    notifications = accounts.recorder.select_notifications(start=1, limit=100_000)
    return [accounts.mapper.to_domain_event(n) for n in notifications]


def events_via_notification_log(accounts: Accounts) -> list[Any]:
    """The same, page by page through the notification log, as a downstream reader does."""
    events: list[Any] = []
    start = 1
    while True:
        page = accounts.notification_log.select(start=start, limit=10)
        if not page:
            return events
        events.extend(accounts.mapper.to_domain_event(n) for n in page)
        start = page[-1].id + 1


def replay_all(events: list[Any]) -> dict[UUID, Any]:
    by_originator: dict[UUID, list[Any]] = defaultdict(list)
    for event in events:
        by_originator[event.originator_id].append(event)
    rebuilt: dict[UUID, Any] = {}
    for originator_id, stream in by_originator.items():
        assert [e.originator_version for e in stream] == list(range(1, len(stream) + 1))
        aggregate: Any = None
        for event in stream:
            aggregate = event.mutate(aggregate)
        rebuilt[originator_id] = aggregate
    return rebuilt


def claim_ids(accounts: Accounts) -> list[UUID]:
    return [e.originator_id for e in all_events(accounts) if isinstance(e, EmailClaim.Created)]


def test_full_lifecycle(accounts: Accounts) -> None:
    account_id = register(accounts)
    account = accounts.get_account(account_id)
    assert account.email == "hanako.yamada@example.jp"
    assert account.display_name == "Hanako Yamada"
    assert account.phone == "090-1111-2222"
    assert account.work_history == MEMBER["work_history"]
    assert account.status is AccountStatus.ACTIVE
    assert account.version == 1

    assert accounts.edit_preferences(account_id, job_title="Tech lead", desired=MEMBER["desired"])
    assert accounts.edit_preferences(account_id, job_title="Tech lead") == []
    assert accounts.receive_scout(account_id, scout_id="s-1", company_id="acme", job_id="j-1")
    assert not accounts.receive_scout(account_id, scout_id="s-1", company_id="acme", job_id="j-1")
    assert accounts.receive_scout(account_id, scout_id="s-2", company_id="globex", job_id="j-2")

    preview = accounts.withdrawal_preview(account_id)
    assert preview["gift_eligible"] is True
    assert preview["gift_lost_on_withdrawal"] is True
    assert preview["scouts_received"] == 2
    assert preview["reasons"] == [r.value for r in WithdrawalReason]

    with pytest.raises(GiftUnclaimedError):
        accounts.request_withdrawal(account_id, reason="hired_via_platform")
    accounts.claim_gift(account_id, company_id="globex", start_date=START)
    preview = accounts.withdrawal_preview(account_id)
    assert preview["gift_claimed"] is True
    assert preview["gift_lost_on_withdrawal"] is False

    with pytest.raises(AccountNotWithdrawingError):
        accounts.purge(account_id)
    assert accounts.request_withdrawal(
        account_id, reason="hired_via_platform", comment="Found my job here, thank you"
    )
    assert not accounts.request_withdrawal(account_id, reason="other")
    withdrawing = accounts.get_account(account_id)
    assert withdrawing.status is AccountStatus.WITHDRAWING
    assert withdrawing.withdrawal is not None
    assert withdrawing.withdrawal["comment"] == "Found my job here, thank you"
    with pytest.raises(AccountWithdrawingError):
        accounts.receive_scout(account_id, scout_id="s-3", company_id="acme", job_id="j-3")
    with pytest.raises(AccountWithdrawingError):
        accounts.edit_preferences(account_id, job_title="CTO")

    assert accounts.purge(account_id) is True
    assert accounts.purge(account_id) is False
    with pytest.raises(AccountPurgedError):
        accounts.get_account(account_id)
    with pytest.raises(AccountPurgedError):
        accounts.withdrawal_preview(account_id)
    with pytest.raises(AccountPurgedError):
        accounts.receive_scout(account_id, scout_id="s-4", company_id="acme", job_id="j-4")
    with pytest.raises(AccountPurgedError):
        accounts.request_withdrawal(account_id, reason="other")
    with pytest.raises(AccountPurgedError):
        accounts.claim_gift(account_id, company_id="acme", start_date=START)

    stream = [e for e in all_events(accounts) if e.originator_id == account_id]
    assert [type(e).__name__ for e in stream] == [
        "Registered",
        "PreferencesEdited",
        "ScoutReceived",
        "ScoutReceived",
        "GiftClaimed",
        "WithdrawalRequested",
        "Purged",
    ]


@pytest.mark.parametrize(
    "variant",
    [
        "hanako.yamada@example.jp",
        "HANAKO.YAMADA@EXAMPLE.JP",
        "  hanako.yamada@example.jp\t",
        "\u3000Hanako.Yamada@Example.jp\u3000",
        "ｈａｎａｋｏ．ｙａｍａｄａ＠ｅｘａｍｐｌｅ．ｊｐ",  # noqa: RUF001 - full-width on purpose
    ],
)
def test_email_variants_collide(accounts: Accounts, variant: str) -> None:
    first = register(accounts)
    with pytest.raises(EmailAlreadyClaimedError) as raised:
        register(accounts, email=variant, display_name="Someone else")
    assert raised.value.code == "email_in_use"
    # The refused registration left nothing behind: one account, one claim.
    registered = [e for e in all_events(accounts) if isinstance(e, Account.Registered)]
    assert [e.originator_id for e in registered] == [first]
    assert len(claim_ids(accounts)) == 1


def test_distinct_addresses_do_not_collide(accounts: Accounts) -> None:
    first = register(accounts, email="hanako@example.jp")
    second = register(accounts, email="hanako@example.com")
    third = register(accounts, email="hanako2@example.jp")
    assert len({first, second, third}) == 3
    assert len(set(claim_ids(accounts))) == 3


def test_email_stays_claimed_while_withdrawing_and_is_released_on_purge(
    accounts: Accounts,
) -> None:
    old_id = register(accounts)
    accounts.receive_scout(old_id, scout_id="s-1", company_id="acme", job_id="j-1")
    accounts.claim_gift(old_id, company_id="acme", start_date=START)
    accounts.edit_preferences(old_id, job_title="Tech lead")
    accounts.request_withdrawal(old_id, reason="hired_elsewhere", comment="bye")
    with pytest.raises(EmailAlreadyClaimedError):
        register(accounts, email=" HANAKO.YAMADA@example.jp ")

    accounts.purge(old_id)
    new_id = register(accounts, email=" HANAKO.YAMADA@example.jp ", display_name="Hanako")
    assert new_id != old_id

    fresh = accounts.get_account(new_id)
    assert fresh.version == 1
    assert fresh.email == "hanako.yamada@example.jp"
    assert fresh.display_name == "Hanako"
    assert fresh.status is AccountStatus.ACTIVE
    assert fresh.scouts == {}
    assert fresh.gift is None
    assert fresh.withdrawal is None
    assert fresh.job_title == MEMBER["job_title"]
    assert fresh.gift_eligible is False
    # The new account's own stream is just its registration.
    assert [type(e) for e in all_events(accounts) if e.originator_id == new_id] == [
        Account.Registered
    ]
    # The address stays one claim across both lives, now held by the new account.
    [claim_id] = claim_ids(accounts)
    claim = accounts.repository.get(claim_id)
    assert isinstance(claim, EmailClaim)
    assert claim.holder == accounts.vault.holder_token(new_id, claim_id)
    # And while the new account holds it, the address is taken again.
    with pytest.raises(EmailAlreadyClaimedError):
        register(accounts, email="hanako.yamada@example.jp")


def test_unknown_ids_and_claim_ids_are_not_accounts(accounts: Accounts) -> None:
    register(accounts)
    [claim_id] = claim_ids(accounts)
    for missing in (uuid4(), claim_id):
        with pytest.raises(AccountNotFoundError) as raised:
            accounts.get_account(missing)
        assert raised.value.code == "account_not_found"
        with pytest.raises(AccountNotFoundError):
            accounts.withdrawal_preview(missing)
        with pytest.raises(AccountNotFoundError):
            accounts.receive_scout(missing, scout_id="s", company_id="c", job_id="j")
        with pytest.raises(AccountNotFoundError):
            accounts.edit_preferences(missing, job_title="x")
        with pytest.raises(AccountNotFoundError):
            accounts.request_withdrawal(missing, reason="other")
        with pytest.raises(AccountNotFoundError):
            accounts.purge(missing)
    # Nothing was written for either.
    assert len(all_events(accounts)) == 3  # Registered, claim Created, claim Claimed


def _state(aggregate: object) -> tuple[type, dict[str, Any]]:
    return type(aggregate), dict(vars(aggregate))


def test_a_command_loads_the_account_the_library_would_fold(
    accounts: Accounts, settings: Settings
) -> None:
    """Commands load accounts through the stored fold (lifecycle.stored_fold), not the
    library's event objects: after every kind of event, in this process (key cached) and in
    another (nothing cached), the account equals the library's own load, attribute by
    attribute; purged, it reads redacted alike. Ids of other aggregates are not accounts."""
    account_id = register(accounts)
    other = Accounts(env=settings.application_env())
    steps = [
        lambda: accounts.edit_preferences(
            account_id, job_title="Tech lead", desired={"remote": False, "salary_jpy": None}
        ),
        lambda: accounts.receive_scout(account_id, scout_id="s-1", company_id="acme", job_id="j"),
        lambda: accounts.claim_gift(account_id, company_id="acme", start_date=START),
        lambda: accounts.request_withdrawal(account_id, reason="other", comment="Hanako"),
        lambda: accounts.purge(account_id),
    ]
    try:
        for step in [lambda: None, *steps]:
            step()
            for app in (accounts, other):
                app.hot_accounts.forget(account_id)
                # Loaded first: it forgets a purged account's key a process still held.
                found = _state(app.load_for_audit(account_id))
                want = _state(app.repository.get(account_id))
                assert found[0] is want[0]
                assert sorted(found[1]) == sorted(want[1])
                for name, value in want[1].items():
                    assert found[1][name] == value, (name, app is other)
        assert accounts.load_for_audit(account_id).email == REDACTED
        export = DataExport.request(
            export_id=uuid4(),
            account_id=uuid4(),
            public_key="k",
            services=["scout"],
            at=datetime.now(UTC),
            deadline=timedelta(days=1),
            expiry=timedelta(days=1),
        )
        accounts.save(export)
        with pytest.raises(AccountNotFoundError):
            accounts.get_account(export.id)
    finally:
        other.close()


def purged_member(accounts: Accounts) -> UUID:
    account_id = register(accounts)
    accounts.edit_preferences(
        account_id, job_title="Tech lead", work_history=[{"company": "Initech", "years": 1}]
    )
    accounts.receive_scout(account_id, scout_id="s-1", company_id="acme", job_id="j-1")
    accounts.receive_scout(account_id, scout_id="s-2", company_id="globex", job_id="j-2")
    accounts.claim_gift(account_id, company_id="acme", start_date=START)
    accounts.request_withdrawal(
        account_id, reason="hired_via_platform", comment="Hanako here, delete me please"
    )
    assert accounts.purge(account_id)
    return account_id


def assert_redacted_with_facts(account: Account) -> None:
    assert account.status is AccountStatus.PURGED
    for field in ("email", "display_name", "phone", "job_title", "work_history"):
        assert getattr(account, field) == REDACTED, field
    assert account.withdrawal is not None
    assert account.withdrawal["comment"] == REDACTED
    # The lifecycle facts stay readable.
    assert account.withdrawal["reason"] == "hired_via_platform"
    assert account.withdrawal["gift_forfeited"] is False
    assert account.gift is not None
    assert account.gift["company_id"] == "acme"
    assert account.gift["start_date"] == START
    assert account.gift["amount_jpy"] == 5000
    assert set(account.scouts) == {"s-1", "s-2"}
    assert account.scouting_companies == {"acme", "globex"}
    assert account.scouts["s-2"]["job_id"] == "j-2"
    assert account.profile == MEMBER["profile"]
    assert account.desired == MEMBER["desired"]
    assert account.consent_version == "2026-04"
    assert account.withdrawn_at is not None
    assert account.purged_at is not None
    assert account.registered_at <= account.withdrawn_at <= account.purged_at
    assert account.version == 7


def test_a_purged_account_reads_redacted_with_its_facts(
    accounts: Accounts, settings: Settings
) -> None:
    account_id = purged_member(accounts)
    account = accounts.repository.get(account_id)
    assert isinstance(account, Account)
    assert_redacted_with_facts(account)
    # Another process, with nothing cached, sees the same.
    other = Accounts(env=settings.application_env())
    try:
        again = other.repository.get(account_id)
        assert isinstance(again, Account)
        assert_redacted_with_facts(again)
    finally:
        other.close()


def test_other_accounts_keep_their_personal_values_after_a_purge(accounts: Accounts) -> None:
    purged_id = purged_member(accounts)
    kept_id = register(accounts, email="taro@example.jp", display_name="Taro")
    kept = accounts.get_account(kept_id)
    assert kept.email == "taro@example.jp"
    assert kept.display_name == "Taro"
    assert kept.phone == MEMBER["phone"]
    assert accounts.vault.find_key(kept_id) is not None
    assert accounts.vault.find_key(purged_id) is None
    assert accounts.vault.is_destroyed(purged_id)
    assert not accounts.vault.is_destroyed(kept_id)


def test_replaying_every_event_after_purge_succeeds(accounts: Accounts) -> None:
    purged_id = purged_member(accounts)
    kept_id = register(accounts, email="taro@example.jp", display_name="Taro")
    accounts.receive_scout(kept_id, scout_id="s-9", company_id="acme", job_id="j-9")

    events = events_via_notification_log(accounts)
    assert [type(e) for e in events] == [type(e) for e in all_events(accounts)]
    topics = {type(e).__name__ for e in events}
    assert topics >= {
        "Registered",
        "PreferencesEdited",
        "ScoutReceived",
        "GiftClaimed",
        "WithdrawalRequested",
        "Purged",
        "Created",
        "Claimed",
        "Released",
    }
    rebuilt = replay_all(events)
    purged = rebuilt[purged_id]
    assert isinstance(purged, Account)
    assert_redacted_with_facts(purged)
    assert purged == accounts.repository.get(purged_id)
    kept = rebuilt[kept_id]
    assert isinstance(kept, Account)
    assert kept.email == "taro@example.jp"
    assert kept == accounts.get_account(kept_id)
    claims = {a.id: a for a in rebuilt.values() if isinstance(a, EmailClaim)}
    # The purged member's claim is free; the kept one's is held by the kept account's token.
    assert len(claims) == 2
    assert [c.holder for c in claims.values()].count(None) == 1
    assert any(c.holder == accounts.vault.holder_token(kept_id, c.id) for c in claims.values())


def test_an_account_with_an_event_this_release_does_not_know_is_not_reported_missing(
    accounts: Accounts,
) -> None:
    """A newer release (a rolling deploy) may store an event this one cannot fold: the account
    exists, so the load fails loudly rather than answering "account not found"."""
    from eventsourcing.persistence import StoredEvent

    from lifecycle.bulk_scouts import ScoutItem
    from lifecycle.stored_fold import UnknownTopicError

    account_id = register(accounts)
    accounts.recorder.insert_events(
        [StoredEvent(account_id, 2, "lifecycle.domain:Account.FromTheFuture", b"{}")]
    )
    with pytest.raises(UnknownTopicError):
        accounts.get_account(account_id)
    with pytest.raises(UnknownTopicError):
        accounts.bulk_scouts.receive([ScoutItem(account_id, "s", "c", "j")])
