"""The Account aggregate's rules, pure: no database, no application."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any
from uuid import uuid4

import pytest

from lifecycle.account_terms import (
    EDITABLE_PARTS,
    GIFT_AMOUNT_JPY,
    GIFT_KIND,
    MAX_COMMENT_LENGTH,
    AccountStatus,
    Channel,
    WithdrawalReason,
    default_notifications,
    normalise_email,
)
from lifecycle.domain import Account
from lifecycle.errors import (
    AccountNotWithdrawingError,
    AccountPurgedError,
    AccountWithdrawingError,
    GiftAlreadyClaimedError,
    GiftNotEligibleError,
    GiftUnclaimedError,
    InvalidCommandError,
    LifecycleError,
)

RECEIVED = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)
START = date(2026, 6, 1)


def new_account(**overrides: Any) -> Account:
    fields: dict[str, Any] = {
        "email": "hanako@example.jp",
        "display_name": "Hanako",
        "consent_version": "2026-04",
    }
    fields.update(overrides)
    account = Account.register(**fields)
    account.collect_events()
    return account


def scouted(account: Account, *pairs: tuple[str, str]) -> Account:
    for scout_id, company_id in pairs:
        assert account.receive_scout(
            scout_id=scout_id, company_id=company_id, job_id=f"job-{scout_id}", received_at=RECEIVED
        )
    account.collect_events()
    return account


def withdrawing(account: Account, reason: str = "other") -> Account:
    assert account.request_withdrawal(reason=reason, acknowledge_gift_loss=True)
    account.collect_events()
    return account


def purged(account: Account) -> Account:
    withdrawing(account)
    assert account.purge()
    account.collect_events()
    return account


def refused(
    account: Account, command: Callable[[], object], error: type[LifecycleError], code: str
) -> None:
    """The command raises `error` with `code` and leaves the aggregate exactly as it was."""
    before = copy.deepcopy(account.__dict__)
    version = account.version
    with pytest.raises(error) as raised:
        command()
    assert raised.value.code == code
    assert account.collect_events() == []
    assert account.version == version
    assert account.__dict__ == before


# Registration


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("hanako@example.jp", "hanako@example.jp"),
        ("  Hanako.Yamada@Example.JP \n", "hanako.yamada@example.jp"),
        ("ＨＡＮＡＫＯ＠ＥＸＡＭＰＬＥ．ＪＰ", "hanako@example.jp"),  # noqa: RUF001 - full-width on purpose
        ("STRASSE@EXAMPLE.DE", "strasse@example.de"),
        ("Straße@example.de", "strasse@example.de"),
    ],
)
def test_registration_stores_the_normalised_email(given: str, stored: str) -> None:
    account = new_account(email=given)
    assert account.email == stored
    assert normalise_email(given) == stored


def test_registration_defaults() -> None:
    account_id = uuid4()
    account = Account.register(
        email="hanako@example.jp",
        display_name="  Hanako  ",
        consent_version="2026-04",
        account_id=account_id,
    )
    [event] = account.collect_events()
    assert isinstance(event, Account.Registered)
    assert account.id == account_id
    assert account.version == 1
    assert account.display_name == "Hanako"
    assert account.status is AccountStatus.ACTIVE
    assert account.phone is None
    assert account.job_title is None
    assert account.work_history == []
    assert account.profile == {}
    assert account.desired == {}
    assert account.notifications == {"scouts": True, "recommendations": True, "notices": True}
    assert account.channel == Channel.WEB.value
    assert account.consent_version == "2026-04"
    assert account.scouts == {}
    assert account.gift is None
    assert account.withdrawal is None
    assert account.withdrawn_at is None
    assert account.purged_at is None
    assert account.registered_at == event.timestamp
    assert account.gift_eligible is False


def test_registration_without_an_id_gets_a_fresh_one() -> None:
    assert new_account().id != new_account().id


def test_registration_keeps_given_details_and_merges_notification_defaults() -> None:
    history = [{"company": "Acme", "years": 3}]
    account = new_account(
        phone="090-1234-5678",
        job_title="Engineer",
        work_history=history,
        profile={"birth_year": 1990, "prefecture": "Tokyo"},
        desired={"salary_jpy": 8_000_000},
        notifications={"recommendations": False},
        channel="app",
    )
    assert account.phone == "090-1234-5678"
    assert account.job_title == "Engineer"
    assert account.work_history == [{"company": "Acme", "years": 3}]
    assert account.profile == {"birth_year": 1990, "prefecture": "Tokyo"}
    assert account.desired == {"salary_jpy": 8_000_000}
    assert account.notifications == {**default_notifications(), "recommendations": False}
    assert account.channel == "app"
    history.append({"company": "Later"})
    assert account.work_history == [{"company": "Acme", "years": 3}]


@pytest.mark.parametrize(
    "email",
    [
        "",
        "   ",
        "hanako",
        "hanako@",
        "@example.jp",
        "hanako@localhost",
        "hana ko@example.jp",
        "hanako@exa mple.jp",
        "hana\tko@example.jp",
        "hana\u3000ko@example.jp",  # ideographic space: a plain space after NFKC
    ],
)
def test_registration_refuses_an_implausible_email(email: str) -> None:
    with pytest.raises(InvalidCommandError) as raised:
        Account.register(email=email, display_name="Hanako", consent_version="2026-04")
    assert raised.value.code == "email_invalid"


@pytest.mark.parametrize("display_name", ["", " ", "\t\n", "\u3000"])
def test_registration_refuses_an_empty_display_name(display_name: str) -> None:
    with pytest.raises(InvalidCommandError) as raised:
        Account.register(
            email="hanako@example.jp", display_name=display_name, consent_version="2026-04"
        )
    assert raised.value.code == "display_name_empty"


@pytest.mark.parametrize("channel", ["fax", "", "WEB"])
def test_registration_refuses_an_unknown_channel_as_an_invalid_command(channel: str) -> None:
    with pytest.raises(InvalidCommandError) as raised:
        new_account(channel=channel)
    assert raised.value.code == "channel_invalid"


# Preferences


def test_edit_records_only_the_parts_that_changed() -> None:
    account = new_account(job_title="Engineer", profile={"prefecture": "Tokyo"})
    changed = account.edit_preferences(
        job_title="Lead engineer", profile={"prefecture": "Tokyo"}, desired=None
    )
    assert changed == ["job_title"]
    [event] = account.collect_events()
    assert isinstance(event, Account.PreferencesEdited)
    assert event.changed_parts == ["job_title"]
    assert event.job_title == "Lead engineer"
    assert event.profile is None
    assert event.work_history is None
    assert event.desired is None
    assert event.notifications is None
    assert account.job_title == "Lead engineer"
    assert account.profile == {"prefecture": "Tokyo"}
    assert account.version == 2


def test_edit_of_several_parts_reports_them_in_a_stable_order() -> None:
    account = new_account()
    changed = account.edit_preferences(
        notifications={**default_notifications(), "notices": False},
        work_history=[{"company": "Acme"}],
        profile={"birth_year": 1990},
    )
    assert changed == ["profile", "work_history", "notifications"]
    [event] = account.collect_events()
    assert event.changed_parts == changed
    assert account.work_history == [{"company": "Acme"}]
    assert account.notifications["notices"] is False


def test_edit_with_identical_values_records_nothing() -> None:
    account = new_account(job_title="Engineer", desired={"remote": True})
    refused_nothing = account.edit_preferences(
        job_title="Engineer",
        desired={"remote": True},
        work_history=[],
        notifications=default_notifications(),
    )
    assert refused_nothing == []
    assert account.collect_events() == []
    assert account.version == 1


def test_edit_with_no_parts_records_nothing() -> None:
    account = new_account()
    assert account.edit_preferences() == []
    assert account.edit_preferences(job_title=None) == []
    assert account.collect_events() == []


@pytest.mark.parametrize("part", ["email", "display_name", "status", "gift", "nickname"])
def test_edit_refuses_parts_that_are_not_editable(part: str) -> None:
    account = new_account()
    refused(
        account,
        lambda: account.edit_preferences(**{part: "x"}),
        InvalidCommandError,
        "unknown_preference_part",
    )


# Scouts


def test_scouts_are_recorded_once_per_scout_id() -> None:
    account = new_account()
    assert account.receive_scout(
        scout_id="s-1", company_id="acme", job_id="j-1", received_at=RECEIVED
    )
    [event] = account.collect_events()
    assert isinstance(event, Account.ScoutReceived)
    assert (event.scout_id, event.company_id, event.job_id) == ("s-1", "acme", "j-1")
    assert account.scouts == {
        "s-1": {"company_id": "acme", "job_id": "j-1", "received_at": RECEIVED}
    }
    # Same scout id again, even with other details: already seen, nothing recorded.
    assert not account.receive_scout(
        scout_id="s-1", company_id="globex", job_id="j-9", received_at=RECEIVED
    )
    assert account.collect_events() == []
    assert account.scouts["s-1"]["company_id"] == "acme"
    assert account.receive_scout(
        scout_id="s-2", company_id="globex", job_id="j-2", received_at=RECEIVED
    )
    assert len(account.collect_events()) == 1
    assert account.scouting_companies == {"acme", "globex"}
    assert account.version == 3


# Gift


def test_gift_is_claimed_for_a_scouting_company() -> None:
    account = scouted(new_account(), ("s-1", "acme"))
    assert account.gift_eligible
    account.claim_gift(company_id="acme", start_date=START)
    [event] = account.collect_events()
    assert isinstance(event, Account.GiftClaimed)
    assert event.gift_kind == GIFT_KIND == "gift_card"
    assert event.amount_jpy == GIFT_AMOUNT_JPY == 5000
    assert account.gift == {
        "company_id": "acme",
        "start_date": START,
        "gift_kind": "gift_card",
        "amount_jpy": 5000,
        "claimed_at": event.timestamp,
    }
    assert not account.gift_eligible


def test_gift_is_claimed_only_once() -> None:
    account = scouted(new_account(), ("s-1", "acme"), ("s-2", "globex"))
    account.claim_gift(company_id="acme", start_date=START)
    account.collect_events()
    for company in ("acme", "globex", "initech"):
        refused(
            account,
            lambda company=company: account.claim_gift(company_id=company, start_date=START),
            GiftAlreadyClaimedError,
            "gift_already_claimed",
        )


def test_gift_needs_a_company_that_scouted_the_member() -> None:
    account = new_account()
    refused(
        account,
        lambda: account.claim_gift(company_id="acme", start_date=START),
        GiftNotEligibleError,
        "company_not_scouted",
    )
    scouted(account, ("s-1", "acme"))
    refused(
        account,
        lambda: account.claim_gift(company_id="globex", start_date=START),
        GiftNotEligibleError,
        "company_not_scouted",
    )


def test_gift_is_claimed_only_while_active() -> None:
    account = withdrawing(scouted(new_account(), ("s-1", "acme")))
    refused(
        account,
        lambda: account.claim_gift(company_id="acme", start_date=START),
        AccountWithdrawingError,
        "account_withdrawing",
    )
    assert not account.gift_eligible


# Withdrawal


@pytest.mark.parametrize("reason", [reason.value for reason in WithdrawalReason])
def test_withdrawal_accepts_every_known_reason(reason: str) -> None:
    account = new_account()
    assert account.request_withdrawal(reason=reason, comment="thanks", acknowledge_gift_loss=True)
    [event] = account.collect_events()
    assert isinstance(event, Account.WithdrawalRequested)
    assert event.reason == reason
    assert account.status is AccountStatus.WITHDRAWING
    assert account.withdrawn_at == event.timestamp
    assert account.withdrawal == {
        "reason": reason,
        "reason_details": [],
        "comment": "thanks",
        "acknowledged_gift_loss": True,
        "gift_forfeited": False,
    }


def test_withdrawal_records_the_reason_details_that_belong_to_its_reason() -> None:
    account = new_account()
    account.request_withdrawal(
        reason="postings_mismatch", reason_details=["salary", "location", "salary"]
    )
    [event] = account.collect_events()
    assert event.reason_details == ["location", "salary"]  # each once, in one order
    assert type(event).class_version == 2


@pytest.mark.parametrize(
    ("reason", "details"),
    [("postings_mismatch", ["scouts"]), ("other", ["agent"]), ("hard_to_use", ["nonsense"])],
)
def test_withdrawal_refuses_details_of_another_reason(reason: str, details: list[str]) -> None:
    account = new_account()
    with pytest.raises(InvalidCommandError, match="reason_detail_invalid"):
        account.request_withdrawal(reason=reason, reason_details=details)
    assert account.status is AccountStatus.ACTIVE


def test_a_version_1_withdrawal_is_upcast_with_no_details() -> None:
    state = {"reason": "other", "comment": None, "acknowledged_gift_loss": False}
    Account.WithdrawalRequested.upcast_v1_v2(state)
    assert state["reason_details"] == []


@pytest.mark.parametrize("reason", ["", "bored", "HIRED_ELSEWHERE", "hired"])
def test_withdrawal_refuses_an_unknown_reason(reason: str) -> None:
    account = new_account()
    refused(
        account,
        lambda: account.request_withdrawal(reason=reason, acknowledge_gift_loss=True),
        InvalidCommandError,
        "unknown_withdrawal_reason",
    )
    assert account.status is AccountStatus.ACTIVE


def test_withdrawal_comment_is_at_most_1000_characters() -> None:
    assert MAX_COMMENT_LENGTH == 1000
    account = new_account()
    refused(
        account,
        lambda: account.request_withdrawal(reason="other", comment="x" * 1001),
        InvalidCommandError,
        "comment_too_long",
    )
    # Characters, not bytes: 1000 Japanese characters are fine.
    assert account.request_withdrawal(reason="other", comment="退" * 1000)
    assert account.withdrawal is not None
    assert account.withdrawal["comment"] == "退" * 1000


def test_withdrawal_without_a_comment_records_none() -> None:
    account = withdrawing(new_account(), reason="hard_to_use")
    assert account.withdrawal is not None
    assert account.withdrawal["comment"] is None


def test_hired_via_platform_without_the_gift_needs_acknowledgement() -> None:
    account = scouted(new_account(), ("s-1", "acme"))
    refused(
        account,
        lambda: account.request_withdrawal(reason="hired_via_platform"),
        GiftUnclaimedError,
        "gift_unclaimed",
    )
    assert account.request_withdrawal(reason="hired_via_platform", acknowledge_gift_loss=True)
    assert account.withdrawal is not None
    assert account.withdrawal["acknowledged_gift_loss"] is True
    assert account.withdrawal["gift_forfeited"] is True


def test_hired_via_platform_with_the_gift_claimed_needs_no_acknowledgement() -> None:
    account = scouted(new_account(), ("s-1", "acme"))
    account.claim_gift(company_id="acme", start_date=START)
    assert account.request_withdrawal(reason="hired_via_platform")
    assert account.withdrawal is not None
    assert account.withdrawal["acknowledged_gift_loss"] is False
    assert account.withdrawal["gift_forfeited"] is False


@pytest.mark.parametrize(
    "reason", [r.value for r in WithdrawalReason if r is not WithdrawalReason.HIRED_VIA_PLATFORM]
)
def test_other_reasons_need_no_acknowledgement(reason: str) -> None:
    account = scouted(new_account(), ("s-1", "acme"))
    assert account.request_withdrawal(reason=reason)
    assert account.withdrawal is not None
    # The gift was still claimable, so withdrawing forfeits it whatever the reason.
    assert account.withdrawal["gift_forfeited"] is True


@pytest.mark.parametrize(
    ("scouts", "claim", "forfeited"),
    [
        ((), False, False),  # never scouted: there was no gift to lose
        ((("s-1", "acme"),), False, True),  # claimable and unclaimed: lost
        ((("s-1", "acme"),), True, False),  # claimed: nothing lost
    ],
)
def test_gift_forfeited_flag(
    scouts: tuple[tuple[str, str], ...], claim: bool, forfeited: bool
) -> None:
    account = scouted(new_account(), *scouts)
    if claim:
        account.claim_gift(company_id="acme", start_date=START)
    assert account.request_withdrawal(reason="hired_elsewhere")
    events = account.collect_events()
    assert isinstance(events[-1], Account.WithdrawalRequested)
    assert events[-1].gift_forfeited is forfeited
    assert account.withdrawal is not None
    assert account.withdrawal["gift_forfeited"] is forfeited


def test_repeat_withdrawal_is_idempotent() -> None:
    account = withdrawing(new_account(), reason="hired_elsewhere")
    before = dict(account.__dict__)
    assert account.request_withdrawal(reason="other", comment="again") is False
    assert account.request_withdrawal(reason="no-such-reason") is False
    assert account.collect_events() == []
    assert account.__dict__ == before
    assert account.withdrawal is not None
    assert account.withdrawal["reason"] == "hired_elsewhere"


COMMANDS_BUT_WITHDRAWAL_AND_PURGE: dict[str, Callable[[Account], object]] = {
    "edit_preferences": lambda a: a.edit_preferences(job_title="Lead engineer"),
    "receive_scout": lambda a: a.receive_scout(
        scout_id="s-new", company_id="acme", job_id="j", received_at=RECEIVED
    ),
    "claim_gift": lambda a: a.claim_gift(company_id="acme", start_date=START),
}


@pytest.mark.parametrize("command", sorted(COMMANDS_BUT_WITHDRAWAL_AND_PURGE))
def test_every_command_but_purge_is_refused_while_withdrawing(command: str) -> None:
    account = withdrawing(scouted(new_account(), ("s-1", "acme")))
    refused(
        account,
        lambda: COMMANDS_BUT_WITHDRAWAL_AND_PURGE[command](account),
        AccountWithdrawingError,
        "account_withdrawing",
    )


# Purge


def test_purge_only_from_withdrawing() -> None:
    account = new_account()
    refused(account, account.purge, AccountNotWithdrawingError, "account_not_withdrawing")
    withdrawing(account)
    assert account.purge() is True
    [event] = account.collect_events()
    assert isinstance(event, Account.Purged)
    assert account.status is AccountStatus.PURGED
    assert account.purged_at == event.timestamp
    assert account.version == 3


def test_repeat_purge_is_idempotent() -> None:
    account = purged(new_account())
    before = dict(account.__dict__)
    assert account.purge() is False
    assert account.collect_events() == []
    assert account.__dict__ == before


ALL_COMMANDS_BUT_PURGE: dict[str, Callable[[Account], object]] = {
    **COMMANDS_BUT_WITHDRAWAL_AND_PURGE,
    "request_withdrawal": lambda a: a.request_withdrawal(
        reason="other", acknowledge_gift_loss=True
    ),
    "edit_preferences_unknown_part": lambda a: a.edit_preferences(nickname="x"),
    "request_withdrawal_invalid": lambda a: a.request_withdrawal(reason="nonsense"),
}


@pytest.mark.parametrize("command", sorted(ALL_COMMANDS_BUT_PURGE))
def test_a_purged_account_refuses_everything(command: str) -> None:
    account = purged(scouted(new_account(), ("s-1", "acme")))
    refused(
        account,
        lambda: ALL_COMMANDS_BUT_PURGE[command](account),
        AccountPurgedError,
        "account_purged",
    )
    assert not account.gift_eligible


def test_purge_keeps_the_facts_of_the_lifecycle() -> None:
    account = scouted(new_account(), ("s-1", "acme"))
    account.claim_gift(company_id="acme", start_date=START)
    account.request_withdrawal(reason="hired_via_platform", comment="found a job")
    account.purge()
    assert account.scouting_companies == {"acme"}
    assert account.gift is not None
    assert account.gift["start_date"] == START
    assert account.withdrawal is not None
    assert account.withdrawal["reason"] == "hired_via_platform"
    assert account.withdrawn_at is not None
    assert account.purged_at is not None
    assert account.purged_at >= account.withdrawn_at >= account.registered_at


def test_editable_parts_are_exactly_the_preferences_event_fields() -> None:
    annotations = Account.PreferencesEdited.__annotations__
    assert set(EDITABLE_PARTS) == set(annotations)


def test_a_partial_notification_edit_keeps_the_other_categories() -> None:
    account = new_account()
    account.collect_events()
    assert account.edit_preferences(notifications={"scouts": False}) == ["notifications"]
    assert account.notifications == {"scouts": False, "recommendations": True, "notices": True}
    assert account.edit_preferences(notifications={"scouts": False}) == []


def test_dict_parts_merge_field_by_field_and_none_clears_a_field() -> None:
    account = new_account(desired={"locations": ["tokyo"], "min_salary": 5_000_000})
    account.collect_events()
    assert account.edit_preferences(desired={"industries": ["it"]}) == ["desired"]
    assert account.edit_preferences(desired={"min_salary": None}) == ["desired"]
    assert account.desired == {"locations": ["tokyo"], "industries": ["it"]}
    assert account.edit_preferences(desired={"locations": ["tokyo"]}) == []
