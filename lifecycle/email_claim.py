"""The EmailClaim aggregate: which account holds an e-mail address now. Pure, no I/O; a
domain module beside `lifecycle.domain` (the Account aggregate), which it does not import."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from lifecycle import event_names
from lifecycle.errors import EmailAlreadyClaimedError


def legacy_holder(account_id: UUID | str) -> str:
    """The holder of a claim recorded before holders were sealed: the account id itself."""
    return f"account:{account_id}"


class EmailClaim(Aggregate):
    """Which account holds an e-mail address now; saved with the account, so claims are atomic.

    Its id is a keyed hash of the address (see lifecycle.application), never the address. Its
    holder is a keyed hash of the claim id under the holding account's own data key
    (lifecycle.crypto.holder_token), never the account id: the application recomputes it to
    claim and to release, and once `Purged` destroys that key nobody, not even whoever holds
    every remaining key, can tell which account a claim event was about."""

    TOPIC = event_names.EMAIL_CLAIM

    class Event(Aggregate.Event):
        personal_fields: ClassVar[tuple[str, ...]] = ()
        TOPIC: ClassVar[str]  # each event class's stored name (lifecycle.event_names)

        def apply(self, aggregate: Any) -> None:
            aggregate.fold(self)

    class Claimed(Event):
        TOPIC = event_names.EMAIL_CLAIMED
        class_version = 2
        holder: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["holder"] = legacy_holder(state.pop("account_id"))

    class Released(Event):
        TOPIC = event_names.EMAIL_RELEASED
        class_version = 2
        holder: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["holder"] = legacy_holder(state.pop("account_id"))

    holder: str | None

    class Created(Event, Aggregate.Created):
        TOPIC = event_names.EMAIL_CLAIM_CREATED
        class_version = 1

    def __init__(self) -> None:
        self.holder = None

    @classmethod
    def open(cls, claim_id: UUID) -> EmailClaim:
        return cls._create(cls.Created, id=claim_id)

    def fold(self, event: EmailClaim.Event) -> None:
        FOLDS[event.TOPIC](self.__dict__, event.__dict__)

    def claim(self, holder: str) -> None:
        self.check_claimable_by(holder)
        if self.holder is None:
            self.trigger_event(self.Claimed, holder=holder)

    def release(self, *holders: str) -> None:
        """Released when held by any of `holders` (an account's sealed and legacy holder)."""
        if self.is_held_by(*holders):
            self.trigger_event(self.Released, holder=self.holder)

    def check_claimable_by(self, holder: str) -> None:
        if self.holder is not None and self.holder != holder:
            raise EmailAlreadyClaimedError("email_in_use")

    def is_held_by(self, *holders: str) -> bool:
        return self.holder is not None and self.holder in holders


# How each claim event changes a claim, on plain values (its __dict__ and the event's, or a
# stored state decoded: see lifecycle.domain.FOLDS, which lifecycle.stored_fold applies alike).
def _unheld(state: dict[str, Any], facts: Mapping[str, Any]) -> None:
    state["holder"] = None


def _claimed(state: dict[str, Any], facts: Mapping[str, Any]) -> None:
    state["holder"] = facts["holder"]


FOLDS: dict[str, Callable[[dict[str, Any], Mapping[str, Any]], None]] = {
    event_names.EMAIL_CLAIM_CREATED: _unheld,
    event_names.EMAIL_CLAIMED: _claimed,
    event_names.EMAIL_RELEASED: _unheld,
}
