"""EmailClaim: which account holds an address now; pure, no database."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest

from lifecycle.domain import EmailClaim
from lifecycle.errors import ConflictError, EmailAlreadyClaimedError


def replay(events: list[Any]) -> EmailClaim:
    claim: Any = None
    for event in events:
        claim = event.mutate(claim)
    assert isinstance(claim, EmailClaim)
    return claim


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
    assert claim.account_id is None
    assert claim.version == 1


def test_claim_then_repeat_by_the_same_account_records_once(claim: EmailClaim) -> None:
    holder = uuid4()
    claim.claim(holder)
    [claimed] = claim.collect_events()
    assert isinstance(claimed, EmailClaim.Claimed)
    assert claimed.account_id == holder
    assert claim.account_id == holder
    claim.claim(holder)
    assert claim.collect_events() == []
    assert claim.version == 2


def test_another_account_cannot_claim_a_held_address(claim: EmailClaim) -> None:
    holder, other = uuid4(), uuid4()
    claim.claim(holder)
    claim.collect_events()
    with pytest.raises(EmailAlreadyClaimedError) as raised:
        claim.claim(other)
    assert raised.value.code == "email_in_use"
    assert isinstance(raised.value, ConflictError)
    assert claim.collect_events() == []
    assert claim.account_id == holder


def test_only_the_holder_releases(claim: EmailClaim) -> None:
    holder, other = uuid4(), uuid4()
    claim.claim(holder)
    claim.collect_events()
    claim.release(other)
    assert claim.collect_events() == []
    assert claim.account_id == holder
    claim.release(holder)
    [released] = claim.collect_events()
    assert isinstance(released, EmailClaim.Released)
    assert released.account_id == holder
    assert claim.account_id is None


def test_release_of_a_free_address_records_nothing(claim: EmailClaim) -> None:
    claim.release(uuid4())
    assert claim.collect_events() == []
    holder = uuid4()
    claim.claim(holder)
    claim.release(holder)
    claim.release(holder)
    assert [type(e) for e in claim.collect_events()] == [EmailClaim.Claimed, EmailClaim.Released]


def test_a_released_address_can_be_claimed_by_a_new_account() -> None:
    claim = EmailClaim.open(uuid4())
    first, second = uuid4(), uuid4()
    claim.claim(first)
    claim.release(first)
    claim.claim(second)
    assert claim.account_id == second
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
    assert rebuilt.account_id == second


def test_claim_events_hold_ids_only() -> None:
    claim = EmailClaim.open(uuid4())
    holder = uuid4()
    claim.claim(holder)
    claim.release(holder)
    for event in claim.collect_events():
        assert type(event).personal_fields == ()
        attributes = set(vars(event)) - {"originator_id", "originator_version", "timestamp"}
        assert attributes <= {"originator_topic", "account_id"}
        assert all(
            isinstance(vars(event)[name], UUID) for name in attributes - {"originator_topic"}
        )
