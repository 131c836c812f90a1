"""Dead letters at the service layer: re-drive publishes the source record as it was made and
is refused whenever the member's values must stay gone; each letter is handled once."""

from __future__ import annotations

import uuid
from uuid import UUID

import pytest
from structlog.testing import capture_logs
from support import FakeKafka, profile, scout_received

from lifecycle.application import Accounts
from lifecycle.errors import (
    ConflictError,
    DeadLetterSourceGoneError,
    InvalidCommandError,
    NotFoundError,
)
from lifecycle.kafka.inspector import BrokerUnavailableError
from lifecycle.services.actions import Actor
from lifecycle.services.dead_letters import DeadLetters

OPS = Actor("ops", "req-1")


def member(accounts: Accounts) -> UUID:
    return accounts.register(
        email=f"m-{uuid.uuid4().hex[:8]}@dlq.example", display_name="Aiko", consent_version="v1"
    )


def test_redrive_publishes_the_source_record_as_made_once_and_discard_hides_a_letter(
    accounts: Accounts, kafka: FakeKafka
) -> None:
    account_id = member(accounts)
    first = kafka.append(*scout_received(kafka.topics, account_id, 2))
    second = kafka.append(*scout_received(kafka.topics, account_id, 3))
    letters = [kafka.dead_letter_of("scout", source) for source in (first, second)]
    service = DeadLetters(accounts, kafka)

    assert [d.offset for d in service.waiting("scout", 10)] == [0, 1]
    with capture_logs() as logs:
        done = service.redrive("scout", 0, letters[0].offset, OPS)
    assert (done.action, done.republished_to) == ("redriven", kafka.topics.lifecycle)
    republished = kafka.log[kafka.topics.lifecycle][-1]
    assert (republished.key, republished.headers, republished.value) == (
        first.key,
        first.headers,  # the original's: no dlq_* header
        first.value,
    )
    assert any(
        e["event"] == "dead_letter.redriven" and e["role"] == "ops" and e["request_id"] == "req-1"
        for e in logs
    )
    with pytest.raises(ConflictError) as handled:
        service.redrive("scout", 0, letters[0].offset, OPS)
    assert handled.value.code == "dead_letter_handled"
    assert service.discard("scout", 0, letters[1].offset, OPS).action == "discarded"
    assert service.waiting("scout", 10) == []
    assert len(kafka.log[kafka.topics.lifecycle]) == 3  # two sources, one re-drive


def test_unknown_group_and_missing_letter_are_refused(accounts: Accounts, kafka: FakeKafka) -> None:
    service = DeadLetters(accounts, kafka)
    with pytest.raises(InvalidCommandError) as unknown:
        service.waiting("billing", 10)
    assert unknown.value.code == "unknown_consumer_group"
    with pytest.raises(NotFoundError):
        service.discard("scout", 0, 7, OPS)


def test_redrive_is_refused_when_the_source_or_the_account_is_erased(
    accounts: Accounts, kafka: FakeKafka
) -> None:
    service = DeadLetters(accounts, kafka)
    live, purged = member(accounts), member(accounts)
    accounts.request_withdrawal(purged, reason="other")
    accounts.purge(purged)
    erased_source = kafka.append(*scout_received(kafka.topics, live, 2))
    gone = kafka.dead_letter_of("scout", erased_source, offset=erased_source.offset + 50)
    of_purged = kafka.dead_letter_of(
        "scout", kafka.append(*scout_received(kafka.topics, purged, 2))
    )

    def refusal(offset: int) -> str:
        with pytest.raises(DeadLetterSourceGoneError) as refused:
            service.redrive("scout", 0, offset, OPS)
        return refused.value.code

    assert refusal(gone.offset) == "source_record_erased"
    assert refusal(of_purged.offset) == "account_purged"
    # Refused, not handled: the letter is still listed and can be discarded.
    assert len(service.waiting("scout", 10)) == 2
    assert service.discard("scout", 0, gone.offset, OPS).action == "discarded"


def test_a_profile_record_is_not_redriven_for_a_withdrawing_account_or_once_superseded(
    accounts: Accounts, kafka: FakeKafka
) -> None:
    service = DeadLetters(accounts, kafka)
    withdrawing, active = member(accounts), member(accounts)
    accounts.request_withdrawal(withdrawing, reason="other")
    letters = {
        account_id: kafka.dead_letter_of(
            "mail", kafka.append(*profile(kafka.topics, account_id, 1, "a@x.example", "A"))
        )
        for account_id in (withdrawing, active)
    }
    kafka.superseded_offsets.add((kafka.topics.profile, 1))

    for account_id, code in (
        (withdrawing, "account_withdrawing"),
        (active, "source_record_superseded"),
    ):
        with pytest.raises(DeadLetterSourceGoneError) as refused:
            service.redrive("mail", 0, letters[account_id].offset, OPS)
        assert refused.value.code == code


def test_a_letter_naming_a_source_outside_its_groups_inputs_is_refused(
    accounts: Accounts, kafka: FakeKafka
) -> None:
    """A letter's headers are a claim: scout does not read the profile topic."""
    account_id = member(accounts)
    letter = kafka.dead_letter_of(
        "scout", kafka.append(*profile(kafka.topics, account_id, 1, "b@x.example", "B"))
    )
    with pytest.raises(ConflictError) as refused:
        DeadLetters(accounts, kafka).redrive("scout", 0, letter.offset, OPS)
    assert refused.value.code == "dead_letter_source_refused"


def test_a_failed_publish_leaves_the_letter_to_redrive_again(
    accounts: Accounts, kafka: FakeKafka
) -> None:
    source = kafka.append(*scout_received(kafka.topics, member(accounts), 2))
    letter = kafka.dead_letter_of("scout", source)
    service = DeadLetters(accounts, kafka)
    kafka.failing = True
    with pytest.raises(BrokerUnavailableError):
        service.redrive("scout", 0, letter.offset, OPS)
    kafka.failing = False
    assert service.redrive("scout", 0, letter.offset, OPS).action == "redriven"
