"""The Account aggregate and its rules: pure, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from typing import Any, ClassVar
from uuid import UUID, uuid4

from eventsourcing.domain import Aggregate

from lifecycle import addresses, event_names
from lifecycle.account_terms import (
    EDITABLE_PARTS,
    GIFT_AMOUNT_JPY,
    GIFT_KIND,
    MAX_COMMENT_LENGTH,
    MERGED_PARTS,
    WITHDRAWAL_REASON_DETAILS,
    AccountStatus,
    Channel,
    WithdrawalReason,
    default_notifications,
    normalise_email,
)
from lifecycle.errors import (
    AccountNotWithdrawingError,
    AccountPurgedError,
    AccountWithdrawingError,
    GiftAlreadyClaimedError,
    GiftNotEligibleError,
    GiftUnclaimedError,
    InvalidCommandError,
)


class Account(Aggregate):
    """One member's account, from registration to erasure.

    Each class's `TOPIC` is its stored name (lifecycle.event_names): rename or move freely."""

    TOPIC = event_names.ACCOUNT

    class Event(Aggregate.Event):
        # Names of this event's attributes that hold personal values; the stored form
        # seals them with the account's own key (see lifecycle.crypto).
        personal_fields: ClassVar[tuple[str, ...]] = ()
        TOPIC: ClassVar[str]  # each event class's stored name (lifecycle.event_names)

        def apply(self, aggregate: Any) -> None:
            aggregate.fold(self)

    class Created(Event, Aggregate.Created):
        """Never recorded (accounts begin with Registered); declared only because the
        library gives every aggregate one, and with explicit topics each needs a name."""

        TOPIC = event_names.ACCOUNT_CREATED_UNUSED

    class Registered(Event, Aggregate.Created):
        TOPIC = event_names.REGISTERED
        class_version = 1
        personal_fields = ("email", "display_name", "phone", "job_title", "work_history")
        email: str
        display_name: str
        phone: str | None
        job_title: str | None
        work_history: list[dict[str, Any]]
        profile: dict[str, Any]
        desired: dict[str, Any]
        notifications: dict[str, bool]
        consent_version: str
        channel: str

    class PreferencesEdited(Event):
        """Only the parts that changed; a part left as None did not change."""

        TOPIC = event_names.PREFERENCES_EDITED
        class_version = 1
        personal_fields = ("job_title", "work_history")
        profile: dict[str, Any] | None
        job_title: str | None
        work_history: list[dict[str, Any]] | None
        desired: dict[str, Any] | None
        notifications: dict[str, bool] | None

        @property
        def changed_parts(self) -> list[str]:
            return changed_parts(self.__dict__)

    class ScoutReceived(Event):
        TOPIC = event_names.SCOUT_RECEIVED
        class_version = 1
        scout_id: str
        company_id: str
        job_id: str
        received_at: datetime

    class GiftClaimed(Event):
        TOPIC = event_names.GIFT_CLAIMED
        class_version = 1
        company_id: str
        start_date: date
        gift_kind: str
        amount_jpy: int

    class WithdrawalRequested(Event):
        """Version 2 adds `reason_details` (codes of WITHDRAWAL_REASON_DETAILS)."""

        TOPIC = event_names.WITHDRAWAL_REQUESTED
        class_version = 2
        personal_fields = ("comment",)
        reason: str
        reason_details: list[str]
        comment: str | None
        acknowledged_gift_loss: bool
        gift_forfeited: bool

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Stored before details existed: none were given."""
            state["reason_details"] = []

    class Purged(Event):
        TOPIC = event_names.PURGED
        class_version = 1

    # State, folded from the events above.
    email: str
    display_name: str
    phone: str | None
    job_title: str | None
    work_history: list[dict[str, Any]]
    profile: dict[str, Any]
    desired: dict[str, Any]
    notifications: dict[str, bool]
    consent_version: str
    channel: str
    status: AccountStatus
    registered_at: datetime
    scouts: dict[str, dict[str, Any]]
    gift: dict[str, Any] | None
    withdrawal: dict[str, Any] | None
    withdrawn_at: datetime | None
    purged_at: datetime | None

    def __init__(self) -> None:
        """State starts empty; Registered fills it in through fold()."""

    @classmethod
    def register(
        cls,
        *,
        email: str,
        display_name: str,
        consent_version: str,
        phone: str | None = None,
        job_title: str | None = None,
        work_history: list[dict[str, Any]] | None = None,
        profile: dict[str, Any] | None = None,
        desired: dict[str, Any] | None = None,
        notifications: dict[str, bool] | None = None,
        channel: str = Channel.WEB,
        account_id: UUID | None = None,
    ) -> Account:
        cls.check_email_is_plausible(email)
        cls.check_display_name_is_given(display_name)
        cls.check_channel_is_known(channel)
        return cls._create(
            cls.Registered,
            id=account_id or uuid4(),
            email=normalise_email(email),
            display_name=display_name.strip(),
            phone=phone,
            job_title=job_title,
            work_history=list(work_history or []),
            profile=_without_none(profile or {}),
            desired=_without_none(desired or {}),
            notifications={**default_notifications(), **(notifications or {})},
            consent_version=consent_version,
            channel=Channel(channel).value,
        )

    def fold(self, event: Account.Event) -> None:
        """Fold one event into the state (one of FOLDS, on this account's and the event's
        attributes); events carry facts, so this never refuses."""
        FOLDS[event.TOPIC](self.__dict__, event.__dict__)

    # Commands

    def edit_preferences(self, **parts: Any) -> list[str]:
        """Record only the parts that differ; returns the names of the parts changed."""
        self.check_account_is_active()
        self.check_preference_parts_are_known(parts)
        for part in MERGED_PARTS:
            if parts.get(part) is not None:
                # Fields left out keep their value, a None clears one; merged here, inside
                # the command, so two concurrent edits of different fields both land.
                parts[part] = _without_none({**getattr(self, part), **parts[part]})
        changes = {p: v for p, v in parts.items() if v is not None and v != getattr(self, p)}
        if changes:
            self.trigger_event(
                self.PreferencesEdited, **{part: changes.get(part) for part in EDITABLE_PARTS}
            )
        return [part for part in EDITABLE_PARTS if part in changes]

    def receive_scout(
        self, *, scout_id: str, company_id: str, job_id: str, received_at: datetime
    ) -> bool:
        """Record a scout once per scout id; returns False when it was already seen."""
        if not self.scout_is_new(scout_id):
            return False
        self.trigger_event(
            self.ScoutReceived,
            scout_id=scout_id,
            company_id=company_id,
            job_id=job_id,
            received_at=received_at,
        )
        return True

    def claim_gift(self, *, company_id: str, start_date: date) -> None:
        self.check_account_is_active()
        self.check_gift_is_unclaimed()
        self.check_company_scouted(company_id)
        self.trigger_event(
            self.GiftClaimed,
            company_id=company_id,
            start_date=start_date,
            gift_kind=GIFT_KIND,
            amount_jpy=GIFT_AMOUNT_JPY,
        )

    def request_withdrawal(
        self,
        *,
        reason: str,
        reason_details: list[str] | None = None,
        comment: str | None = None,
        acknowledge_gift_loss: bool = False,
        at: datetime | None = None,
    ) -> bool:
        """Start erasure (False when already requested); `at` re-records a known time (reshred)."""
        self.check_account_is_not_purged()
        if self.status is AccountStatus.WITHDRAWING:
            return False
        self.check_withdrawal_reason_is_known(reason)
        details = sorted(set(reason_details or []))
        self.check_reason_details_fit(reason, details)
        self.check_comment_fits(comment)
        self.check_gift_loss_is_acknowledged(reason, acknowledge_gift_loss)
        self.trigger_event(
            self.WithdrawalRequested,
            reason=WithdrawalReason(reason).value,
            reason_details=details,
            comment=comment,
            acknowledged_gift_loss=acknowledge_gift_loss,
            gift_forfeited=self.gift_forfeited_by_withdrawal,
            timestamp=at,
        )
        return True

    def purge(self, at: datetime | None = None) -> bool:
        """Terminal step of erasure; returns False when already purged (idempotent)."""
        if self.status is AccountStatus.PURGED:
            return False
        self.check_account_is_withdrawing()
        self.trigger_event(self.Purged, timestamp=at)
        return True

    # Rules and derived facts

    @property
    def scouting_companies(self) -> set[str]:
        return {scout["company_id"] for scout in self.scouts.values()}

    @property
    def gift_eligible(self) -> bool:
        """A gift can still be claimed: active, unclaimed, and scouted at least once."""
        return self.status is AccountStatus.ACTIVE and self.gift is None and bool(self.scouts)

    @property
    def gift_forfeited_by_withdrawal(self) -> bool:
        return self.gift is None and self.gift_eligible

    def has_scout(self, scout_id: str) -> bool:
        return scout_id in self.scouts

    def scout_is_new(self, scout_id: str) -> bool:
        """`receive_scout`'s rules: refused unless active; a scout id seen already is not new."""
        self.check_account_is_active()
        return not self.has_scout(scout_id)

    def check_scout_is_new(self, scout_id: str) -> None:
        """A scout id is recorded once (`receive_scout` answers a repeat without an event)."""
        if self.has_scout(scout_id):
            raise InvalidCommandError("scout_already_received")

    @staticmethod
    def check_preference_parts_are_known(parts: Iterable[str]) -> None:
        if set(parts) - set(EDITABLE_PARTS):
            raise InvalidCommandError("unknown_preference_part")

    def check_parts_change(self, parts: dict[str, Any]) -> None:
        """An edit records only parts that differ (`edit_preferences` drops the others)."""
        if not parts or any(value == getattr(self, part) for part, value in parts.items()):
            raise InvalidCommandError("preference_unchanged")

    def check_gift_forfeit(self, forfeited: bool) -> None:
        """A withdrawal forfeits the gift exactly when it could still have been claimed."""
        if forfeited != self.gift_forfeited_by_withdrawal:
            raise InvalidCommandError("gift_forfeit_mismatch")

    def check_account_is_not_purged(self) -> None:
        if self.status is AccountStatus.PURGED:
            raise AccountPurgedError("account_purged")

    def check_account_is_active(self) -> None:
        self.check_account_is_not_purged()
        if self.status is AccountStatus.WITHDRAWING:
            raise AccountWithdrawingError("account_withdrawing")

    def check_account_is_withdrawing(self) -> None:
        if self.status is not AccountStatus.WITHDRAWING:
            raise AccountNotWithdrawingError("account_not_withdrawing")

    def check_gift_is_unclaimed(self) -> None:
        if self.gift is not None:
            raise GiftAlreadyClaimedError("gift_already_claimed")

    def check_company_scouted(self, company_id: str) -> None:
        if company_id not in self.scouting_companies:
            raise GiftNotEligibleError("company_not_scouted")

    @staticmethod
    def check_gift_terms(gift_kind: str, amount_jpy: int) -> None:
        if gift_kind != GIFT_KIND or amount_jpy != GIFT_AMOUNT_JPY:
            raise InvalidCommandError("gift_terms")

    @staticmethod
    def check_display_name_is_given(display_name: str) -> None:
        if not display_name.strip():
            raise InvalidCommandError("display_name_empty")

    @staticmethod
    def check_channel_is_known(channel: str) -> None:
        if not (isinstance(channel, str) and channel in CHANNELS):
            raise InvalidCommandError("channel_invalid")

    @staticmethod
    def check_comment_fits(comment: str | None) -> None:
        if comment is not None and len(comment) > MAX_COMMENT_LENGTH:
            raise InvalidCommandError("comment_too_long")

    @staticmethod
    def check_withdrawal_reason_is_known(reason: str) -> None:
        if not (isinstance(reason, str) and reason in WITHDRAWAL_REASONS):
            raise InvalidCommandError("unknown_withdrawal_reason")

    @staticmethod
    def check_reason_details_fit(reason: str, details: list[str]) -> None:
        """Each detail is one of the reason's own (WITHDRAWAL_REASON_DETAILS)."""
        allowed = WITHDRAWAL_REASON_DETAILS.get(reason, ())
        if any(detail not in allowed for detail in details):
            raise InvalidCommandError("reason_detail_invalid")

    def check_gift_loss_is_acknowledged(self, reason: str, acknowledged: bool) -> None:
        """Hired via the platform with the gift unclaimed: the member must accept losing it."""
        if reason == WithdrawalReason.HIRED_VIA_PLATFORM and self.gift is None and not acknowledged:
            raise GiftUnclaimedError("gift_unclaimed")

    @staticmethod
    def check_email_is_plausible(email: str) -> None:
        # Judged after NFKC folding (a full-width comma becomes a list separator), as exactly
        # one mailbox. Invisible and bidi characters are refused, not stripped: a look-alike
        # address must not open a second account.
        try:
            addresses.single_mailbox(email)
        except addresses.AddressError:
            raise InvalidCommandError("email_invalid") from None


# How each event changes an account, on plain values: `state` holds the account's attributes
# (an Account's __dict__), `facts` the event's (an event's __dict__, or a stored event's state
# decoded: lifecycle.stored_fold folds the log through this same table without building the
# library's event objects). Events carry facts, so none of these refuses.
State = dict[str, Any]
Facts = Mapping[str, Any]
# Sets to ask (a StrEnum member hashes as its value): the audit replay asks once per event.
CHANNELS = frozenset(Channel)
WITHDRAWAL_REASONS = frozenset(WithdrawalReason)

REGISTERED_FIELDS = (
    "email",
    "display_name",
    "phone",
    "job_title",
    "work_history",
    "profile",
    "desired",
    "notifications",
    "consent_version",
    "channel",
)


def changed_parts(facts: Facts) -> list[str]:
    """The parts a PreferencesEdited changed: those not left as None."""
    return [part for part in EDITABLE_PARTS if facts.get(part) is not None]


def _registered(state: State, facts: Facts) -> None:
    for name in REGISTERED_FIELDS:
        state[name] = facts[name]
    state["status"] = AccountStatus.ACTIVE
    state["registered_at"] = facts["timestamp"]
    state["scouts"] = {}
    state["gift"] = None
    state["withdrawal"] = None
    state["withdrawn_at"] = None
    state["purged_at"] = None


def _preferences_edited(state: State, facts: Facts) -> None:
    for part in changed_parts(facts):
        state[part] = facts[part]


def _scout_received(state: State, facts: Facts) -> None:
    state["scouts"][facts["scout_id"]] = {
        "company_id": facts["company_id"],
        "job_id": facts["job_id"],
        "received_at": facts["received_at"],
    }


def _gift_claimed(state: State, facts: Facts) -> None:
    state["gift"] = {
        "company_id": facts["company_id"],
        "start_date": facts["start_date"],
        "gift_kind": facts["gift_kind"],
        "amount_jpy": facts["amount_jpy"],
        "claimed_at": facts["timestamp"],
    }


def _withdrawal_requested(state: State, facts: Facts) -> None:
    state["status"] = AccountStatus.WITHDRAWING
    state["withdrawal"] = {
        "reason": facts["reason"],
        "reason_details": facts["reason_details"],
        "comment": facts["comment"],
        "acknowledged_gift_loss": facts["acknowledged_gift_loss"],
        "gift_forfeited": facts["gift_forfeited"],
    }
    state["withdrawn_at"] = facts["timestamp"]


def _purged(state: State, facts: Facts) -> None:
    state["status"] = AccountStatus.PURGED
    state["purged_at"] = facts["timestamp"]


# Each Account event's stored name -> how it changes the account.
FOLDS: dict[str, Callable[[State, Facts], None]] = {
    event_names.REGISTERED: _registered,
    event_names.PREFERENCES_EDITED: _preferences_edited,
    event_names.SCOUT_RECEIVED: _scout_received,
    event_names.GIFT_CLAIMED: _gift_claimed,
    event_names.WITHDRAWAL_REQUESTED: _withdrawal_requested,
    event_names.PURGED: _purged,
}


def _without_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}
