"""EmailClaim: which account holds an address now; pure, no database.

A holder is an opaque token (the application derives it from the holding account's own data
key), never an account id; claims of the earlier release named the account and are read as
its legacy holder."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest

from lifecycle.email_claim import EmailClaim, legacy_holder
from lifecycle.errors import ConflictError, EmailAlreadyClaimedError


def replay(events: list[Any]) -> EmailClaim:
    claim: Any = None
    for event in events:
        claim = event.mutate(claim)
    assert isinstance(claim, EmailClaim)
    return claim


def token() -> str:
    return uuid4().hex * 2  # shaped like a holder token: 64 hex digits


@pytest.fixture
def claim() -> EmailClaim:
    claim = EmailClaim.open(uuid4())
    [created] = claim.collect_events()
    assert isinstance(created, EmailClaim.Created)
    return claim


def test_a_new_claim_is_held_by_nobody() -> None:
    claim_id = uuid4()
    claim = EmailClaim.open(claim_id)
    assert claim.id == claim_id
    assert claim.holder is None
    assert claim.version == 1


def test_claim_then_repeat_by_the_same_holder_records_once(claim: EmailClaim) -> None:
    holder = token()
    claim.claim(holder)
    [claimed] = claim.collect_events()
    assert isinstance(claimed, EmailClaim.Claimed)
    assert claimed.holder == holder
    assert claim.holder == holder
    claim.claim(holder)
    assert claim.collect_events() == []
    assert claim.version == 2


def test_another_holder_cannot_claim_a_held_address(claim: EmailClaim) -> None:
    holder, other = token(), token()
    claim.claim(holder)
    claim.collect_events()
    with pytest.raises(EmailAlreadyClaimedError) as raised:
        claim.claim(other)
    assert raised.value.code == "email_in_use"
    assert isinstance(raised.value, ConflictError)
    assert claim.collect_events() == []
    assert claim.holder == holder


def test_only_the_holder_releases(claim: EmailClaim) -> None:
    holder, other = token(), token()
    claim.claim(holder)
    claim.collect_events()
    claim.release(other)
    assert claim.collect_events() == []
    assert claim.holder == holder
    claim.release(other, holder)
    [released] = claim.collect_events()
    assert isinstance(released, EmailClaim.Released)
    assert released.holder == holder
    assert claim.holder is None


def test_release_of_a_free_address_records_nothing(claim: EmailClaim) -> None:
    claim.release(token())
    assert claim.collect_events() == []
    holder = token()
    claim.claim(holder)
    claim.release(holder)
    claim.release(holder)
    assert [type(e) for e in claim.collect_events()] == [EmailClaim.Claimed, EmailClaim.Released]


def test_a_released_address_can_be_claimed_by_a_new_holder() -> None:
    claim = EmailClaim.open(uuid4())
    first, second = token(), token()
    claim.claim(first)
    claim.release(first)
    claim.claim(second)
    assert claim.holder == second
    with pytest.raises(EmailAlreadyClaimedError):
        claim.claim(first)
    events = claim.collect_events()
    assert [type(e) for e in events] == [
        EmailClaim.Created,
        EmailClaim.Claimed,
        EmailClaim.Released,
        EmailClaim.Claimed,
    ]
    assert [e.originator_version for e in events] == [1, 2, 3, 4]
    rebuilt = replay(events)
    assert rebuilt == claim
    assert rebuilt.holder == second


def test_claim_events_hold_no_account_id() -> None:
    claim = EmailClaim.open(uuid4())
    holder = token()
    claim.claim(holder)
    claim.release(holder)
    for event in claim.collect_events():
        assert type(event).personal_fields == ()
        attributes = set(vars(event)) - {"originator_id", "originator_version", "timestamp"}
        assert attributes <= {"originator_topic", "holder"}


@pytest.mark.parametrize("event_class", [EmailClaim.Claimed, EmailClaim.Released])
def test_a_claim_event_of_the_earlier_release_reads_as_its_accounts_legacy_holder(
    event_class: type[EmailClaim.Event],
) -> None:
    account_id = uuid4()
    state: dict[str, Any] = {"account_id": account_id}
    event_class.upcast_v1_v2(state)  # type: ignore[attr-defined]
    assert state == {"holder": legacy_holder(account_id)}
