"""Ops' erasure use cases at the service layer: the one status, and the retry of one service
with its refusals, its record and its re-publication (encoded as the relay encodes)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from uuid import UUID

import pytest
from support import FakeKafka

from lifecycle.application import Accounts
from lifecycle.domain import Account
from lifecycle.erasure.process import Confirmation, ErasureProcess
from lifecycle.errors import AccountNotFoundError, ConflictError, InvalidCommandError
from lifecycle.publishing import lifecycle_record
from lifecycle.services.actions import Actor
from lifecycle.services.erasures import Erasures
from projections.base import facts_mapper
from projections.erasure import ErasureStatusView
from projections.runner import Projector

OPS = Actor("ops", "req-2")


def withdrawn(accounts: Accounts) -> UUID:
    account_id = accounts.register(
        email=f"r-{uuid.uuid4().hex[:8]}@retry.example", display_name="Ren", consent_version="v1"
    )
    accounts.request_withdrawal(account_id, reason="hired_elsewhere")
    return account_id


def erasures(accounts: Accounts, kafka: FakeKafka | None = None) -> Erasures:
    view = ErasureStatusView(accounts.database)
    Projector(accounts, view).catch_up()
    return Erasures(accounts, view, timedelta(hours=72), kafka)


def test_retry_is_recorded_and_republishes_the_withdrawal_as_the_relay_encoded_it(
    accounts: Accounts, kafka: FakeKafka
) -> None:
    account_id = withdrawn(accounts)
    service = erasures(accounts, kafka)

    first = service.retry(account_id, "mail", OPS)
    second = service.retry(account_id, "mail", OPS)

    assert (first.attempts, second.attempts, second.redelivered) == (1, 2, True)
    mail = service.get(account_id).services["mail"]
    assert (mail.state, mail.retries) == ("retry_requested", 2)
    # Encoded as the relay encodes the event: same body and headers, only a fresh retry id.
    mapper = facts_mapper(accounts.mapper)
    [withdrawal] = [
        event
        for event in map(mapper.to_domain_event, accounts.recorder.select_events(account_id))
        if isinstance(event, Account.WithdrawalRequested)
    ]
    as_relayed = lifecycle_record(withdrawal)
    assert as_relayed is not None
    published = kafka.log[kafka.topics.lifecycle]
    assert len(published) == 2
    for record in published:
        headers = dict(record.headers)
        ce_id = headers.pop("ce_id").decode()
        assert ce_id.startswith(f"{dict(as_relayed.headers)['ce_id'].decode()}:retry-")
        assert headers == {k: v for k, v in as_relayed.headers if k != "ce_id"}
        assert (record.key, record.value) == (as_relayed.key, as_relayed.value)
    assert len({dict(r.headers)["ce_id"] for r in published}) == 2


def test_retry_is_refused_for_an_unknown_service_no_erasure_a_purge_or_a_confirmed_service(
    accounts: Accounts,
) -> None:
    account_id = withdrawn(accounts)
    process = ErasureProcess(accounts)
    process.handle(Confirmation(account_id, "scout", "confirmed", 1, "c-1"))
    service = erasures(accounts)

    with pytest.raises(InvalidCommandError):
        service.retry(account_id, "billing", OPS)
    with pytest.raises(AccountNotFoundError):
        service.retry(uuid.uuid4(), "chat", OPS)
    with pytest.raises(ConflictError) as confirmed:
        service.retry(account_id, "scout", OPS)
    assert confirmed.value.code == "service_confirmed"
    assert service.retry(account_id, "chat", OPS).redelivered is False  # Kafka off
    for name in ("chat", "mail"):
        process.handle(Confirmation(account_id, name, "confirmed", 1, f"c-{name}"))
    with pytest.raises(ConflictError) as complete:
        erasures(accounts).retry(account_id, "chat", OPS)
    assert complete.value.code == "erasure_complete"
