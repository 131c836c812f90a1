"""Property tests: random command sequences, valid or not, never break the Account's invariants.

A small model predicts each command's outcome (accepted, its return value, or the exact refusal
code); after every step the recorded events are checked against the lifecycle's invariants and
replayed from nothing into an equal aggregate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from lifecycle.account_terms import (
    EDITABLE_PARTS,
    MAX_COMMENT_LENGTH,
    MERGED_PARTS,
    AccountStatus,
    WithdrawalReason,
    default_notifications,
    normalise_email,
)
from lifecycle.domain import Account
from lifecycle.errors import InvalidCommandError, LifecycleError

SCOUT_IDS = [f"scout-{n}" for n in range(6)]
COMPANIES = ["acme", "globex", "initech"]
GIFT_COMPANIES = [*COMPANIES, "umbrella"]  # umbrella never scouts anyone
REASONS = [reason.value for reason in WithdrawalReason] + ["bored", ""]
COMMENTS = [
    None,
    "",
    "thanks",
    "退会します",
    "x" * MAX_COMMENT_LENGTH,
    "x" * (MAX_COMMENT_LENGTH + 1),
]
PART_VALUES: dict[str, list[Any]] = {
    "profile": [None, {}, {"prefecture": "Tokyo"}, {"prefecture": "Osaka", "birth_year": 1990}],
    "job_title": [None, "Engineer", "Designer"],
    "work_history": [None, [], [{"company": "Acme", "years": 2}]],
    "desired": [None, {}, {"remote": True}],
    "notifications": [None, default_notifications(), {**default_notifications(), "notices": False}],
    "nickname": ["Hana"],  # not editable
}
RECEIVED = datetime(2026, 4, 1, tzinfo=UTC)
START = date(2026, 6, 1)


def replay(events: list[Any]) -> Account:
    account: Any = None
    for event in events:
        account = event.mutate(account)
    assert isinstance(account, Account)
    return account


class AccountLifecycle(RuleBasedStateMachine):
    """Drives one Account with any command; a model says what each should do."""

    def __init__(self) -> None:
        super().__init__()
        self.account: Account | None = None
        self.history: list[Any] = []
        # The model.
        self.status = AccountStatus.ACTIVE
        self.scout_companies: dict[str, str] = {}
        self.gift_company: str | None = None
        self.parts: dict[str, Any] = {}

    # Driving

    @property
    def current(self) -> Account:
        assert self.account is not None
        return self.account

    def run(self, command: Callable[[], Any], refusal: str | None) -> Any:
        """Run a command; a predicted refusal must happen exactly, and change nothing."""
        account = self.current
        if refusal is not None:
            before = copy.deepcopy(account.__dict__)
            with pytest.raises(LifecycleError) as raised:
                command()
            assert raised.value.code == refusal
            assert account.collect_events() == []
            assert account.__dict__ == before
            return None
        result = command()
        self.history.extend(account.collect_events())
        return result

    def status_refusal(self) -> str | None:
        if self.status is AccountStatus.PURGED:
            return "account_purged"
        if self.status is AccountStatus.WITHDRAWING:
            return "account_withdrawing"
        return None

    @initialize(
        job_title=st.sampled_from(PART_VALUES["job_title"]),
        work_history=st.sampled_from(PART_VALUES["work_history"][1:]),
        notifications=st.sampled_from([None, {"scouts": False}]),
    )
    def register(
        self,
        job_title: str | None,
        work_history: list[dict[str, Any]],
        notifications: dict[str, bool] | None,
    ) -> None:
        self.account = Account.register(
            email=" Hanako@Example.JP ",
            display_name="Hanako",
            consent_version="2026-04",
            job_title=job_title,
            work_history=work_history,
            notifications=notifications,
        )
        self.history.extend(self.account.collect_events())
        self.parts = {
            "profile": {},
            "job_title": job_title,
            "work_history": work_history,
            "desired": {},
            "notifications": {**default_notifications(), **(notifications or {})},
        }

    # Commands

    @rule(data=st.data())
    def edit_preferences(self, data: st.DataObject) -> None:
        names = data.draw(st.sets(st.sampled_from(sorted(PART_VALUES)), max_size=3))
        parts = {name: data.draw(st.sampled_from(PART_VALUES[name])) for name in names}
        refusal = self.status_refusal()
        if refusal is None and "nickname" in parts:
            refusal = "unknown_preference_part"
        # Dict parts are merged field by field (None clears a field); others are replaced.
        becomes = {
            part: (
                {k: v for k, v in {**self.parts[part], **value}.items() if v is not None}
                if part in MERGED_PARTS
                else value
            )
            for part, value in parts.items()
            if part in EDITABLE_PARTS and value is not None
        }
        expected = [
            part for part in EDITABLE_PARTS if part in becomes and becomes[part] != self.parts[part]
        ]
        changed = self.run(lambda: self.current.edit_preferences(**dict(parts)), refusal)
        if refusal is None:
            assert changed == expected
            for part in expected:
                self.parts[part] = becomes[part]

    @rule(scout_id=st.sampled_from(SCOUT_IDS), company_id=st.sampled_from(COMPANIES))
    def receive_scout(self, scout_id: str, company_id: str) -> None:
        refusal = self.status_refusal()
        recorded = self.run(
            lambda: self.current.receive_scout(
                scout_id=scout_id, company_id=company_id, job_id="job", received_at=RECEIVED
            ),
            refusal,
        )
        if refusal is None:
            assert recorded is (scout_id not in self.scout_companies)
            self.scout_companies.setdefault(scout_id, company_id)

    @rule(company_id=st.sampled_from(GIFT_COMPANIES))
    def claim_gift(self, company_id: str) -> None:
        refusal = self.status_refusal()
        if refusal is None and self.gift_company is not None:
            refusal = "gift_already_claimed"
        if refusal is None and company_id not in self.scout_companies.values():
            refusal = "company_not_scouted"
        self.run(lambda: self.current.claim_gift(company_id=company_id, start_date=START), refusal)
        if refusal is None:
            self.gift_company = company_id

    @rule(
        reason=st.sampled_from(REASONS),
        comment=st.sampled_from(COMMENTS),
        acknowledge=st.booleans(),
    )
    def request_withdrawal(self, reason: str, comment: str | None, acknowledge: bool) -> None:
        refusal: str | None = None
        if self.status is AccountStatus.PURGED:
            refusal = "account_purged"
        elif self.status is AccountStatus.ACTIVE:
            if reason not in {r.value for r in WithdrawalReason}:
                refusal = "unknown_withdrawal_reason"
            elif comment is not None and len(comment) > MAX_COMMENT_LENGTH:
                refusal = "comment_too_long"
            elif reason == "hired_via_platform" and self.gift_company is None and not acknowledge:
                refusal = "gift_unclaimed"
        forfeits = self.gift_company is None and bool(self.scout_companies)
        was_active = self.status is AccountStatus.ACTIVE
        requested = self.run(
            lambda: self.current.request_withdrawal(
                reason=reason, comment=comment, acknowledge_gift_loss=acknowledge
            ),
            refusal,
        )
        if refusal is None:
            assert requested is was_active
            if was_active:
                self.status = AccountStatus.WITHDRAWING
                event = self.history[-1]
                assert isinstance(event, Account.WithdrawalRequested)
                assert event.gift_forfeited is forfeits
                assert event.acknowledged_gift_loss is acknowledge

    @rule()
    def purge(self) -> None:
        refusal = "account_not_withdrawing" if self.status is AccountStatus.ACTIVE else None
        was_withdrawing = self.status is AccountStatus.WITHDRAWING
        purged = self.run(self.current.purge, refusal)
        if refusal is None:
            assert purged is was_withdrawing
            self.status = AccountStatus.PURGED

    @rule(scout_id=st.sampled_from(SCOUT_IDS))
    def hurry_to_withdrawal(self, scout_id: str) -> None:
        """Reach the later states more often than random reasons alone would."""
        if self.status is AccountStatus.ACTIVE:
            self.receive_scout(scout_id, COMPANIES[0])
            self.request_withdrawal("other", None, acknowledge=False)

    # Invariants

    @invariant()
    def model_agrees(self) -> None:
        account = self.current
        assert account.status is self.status
        assert set(account.scouts) == set(self.scout_companies)
        assert {k: v["company_id"] for k, v in account.scouts.items()} == self.scout_companies
        assert (account.gift or {}).get("company_id") == self.gift_company
        for part, value in self.parts.items():
            assert getattr(account, part) == value

    @invariant()
    def events_obey_the_lifecycle(self) -> None:
        account = self.current
        history = self.history
        assert account.version == len(history)
        assert [e.originator_version for e in history] == list(range(1, len(history) + 1))
        assert all(e.originator_id == account.id for e in history)
        assert isinstance(history[0], Account.Registered)
        assert not any(isinstance(e, Account.Registered) for e in history[1:])

        statuses = [AccountStatus.ACTIVE]
        seen_scouts: list[str] = []
        scouting: set[str] = set()
        gifts = 0
        for event in history[1:]:
            status = statuses[-1]
            assert status is not AccountStatus.PURGED, "no event after Purged"
            if isinstance(event, Account.WithdrawalRequested):
                assert status is AccountStatus.ACTIVE
                statuses.append(AccountStatus.WITHDRAWING)
            elif isinstance(event, Account.Purged):
                assert status is AccountStatus.WITHDRAWING
                statuses.append(AccountStatus.PURGED)
            else:
                assert status is AccountStatus.ACTIVE, f"{type(event).__name__} after withdrawal"
            if isinstance(event, Account.ScoutReceived):
                seen_scouts.append(event.scout_id)
                scouting.add(event.company_id)
            if isinstance(event, Account.GiftClaimed):
                gifts += 1
                assert event.company_id in scouting
            if isinstance(event, Account.PreferencesEdited):
                assert event.changed_parts, "an edit event always changes something"
        assert statuses[-1] is account.status
        assert len(seen_scouts) == len(set(seen_scouts)), "scout ids unique"
        assert gifts <= 1
        if account.gift is not None:
            assert account.gift["company_id"] in account.scouting_companies

    @invariant()
    def replay_rebuilds_an_equal_state(self) -> None:
        rebuilt = replay(self.history)
        assert rebuilt == self.current
        assert rebuilt.version == self.current.version
        assert rebuilt.status is self.current.status


AccountLifecycle.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAccountLifecycle = AccountLifecycle.TestCase


# Addresses: variants of one address claim the same thing.

# Dot-atoms: dots only between atoms (a leading, trailing or doubled dot is no mailbox).
local_parts = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-+", min_size=1, max_size=8),
    min_size=1,
    max_size=3,
).map(".".join)
domains = st.sampled_from(["example.jp", "example.com", "mail.example.co.jp"])


@settings(max_examples=200, deadline=None)
@given(
    local=local_parts,
    domain=domains,
    padding=st.sampled_from(["", " ", "\t", "\n", " \u3000"]),
    data=st.data(),
)
def test_case_and_space_variants_normalise_alike(
    local: str, domain: str, padding: str, data: st.DataObject
) -> None:
    address = f"{local}@{domain}"
    flips = data.draw(st.lists(st.booleans(), min_size=len(address), max_size=len(address)))
    variant = "".join(c.upper() if flip else c for c, flip in zip(address, flips, strict=True))
    variant = f"{padding}{variant}{padding}"
    assert normalise_email(variant) == normalise_email(address) == address
    assert normalise_email(normalise_email(variant)) == normalise_email(variant)
    registered = Account.register(email=variant, display_name="x", consent_version="v")
    assert registered.email == address


# Zero-width space, non-joiner and joiner, LRM, RLM, word joiner, BOM, soft hyphen, RLO.
INVISIBLE = [
    "\u200b",
    "\u200c",
    "\u200d",
    "\u200e",
    "\u200f",
    "\u2060",
    "\ufeff",
    "\u00ad",
    "\u202e",
]


@settings(max_examples=200, deadline=None)
@given(local=local_parts, domain=domains, invisible=st.sampled_from(INVISIBLE), data=st.data())
def test_invisible_character_variants_are_refused(
    local: str, domain: str, invisible: str, data: st.DataObject
) -> None:
    """A registered address with an invisible or bidirectional character inserted anywhere reads
    the same to a person; it is refused, so it can never claim a second account."""
    address = f"{local}@{domain}"
    at = data.draw(st.integers(min_value=0, max_value=len(address)))
    variant = address[:at] + invisible + address[at:]
    Account.register(email=address, display_name="x", consent_version="v")
    with pytest.raises(InvalidCommandError) as refused:
        Account.register(email=variant, display_name="x", consent_version="v")
    assert refused.value.code == "email_invalid"


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=30))
def test_normalisation_is_idempotent(text: str) -> None:
    once = normalise_email(text)
    assert normalise_email(once) == once
