"""Bulk scouts record their events without the library's `trigger_event`
(`lifecycle.bulk_scouts._scout_outcome`): the event, its stored bytes and the account after it
are exactly what `Account.receive_scout` makes."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Mapper, UUIDAsHex

from lifecycle.bulk_scouts import ScoutItem, _scout_outcome
from lifecycle.domain import Account
from lifecycle.errors import AccountWithdrawingError

AT = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)
RECEIVED = datetime(2026, 4, 1, 9, 29, 59, 123456, tzinfo=UTC)


def registered() -> Account:
    account = Account.register(
        email="bulk@example.jp", display_name="Bulk", consent_version="v1", account_id=uuid4()
    )
    account.collect_events()
    return account


def mapper() -> Mapper:  # type: ignore[type-arg]
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DatetimeAsISO())
    return Mapper(transcoder=transcoder)


def test_a_bulk_scout_is_the_event_receive_scout_triggers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Account.ScoutReceived, "create_timestamp", staticmethod(lambda: AT))
    library = registered()
    library.receive_scout(scout_id="s-1", company_id="c-1", job_id="j-1", received_at=RECEIVED)
    library.collect_events()
    bulk = copy.deepcopy(library)
    library.receive_scout(scout_id="s-2", company_id="c-2", job_id="j-2", received_at=RECEIVED)
    [triggered] = library.collect_events()
    recorded: list[Account.Event] = []

    outcome = _scout_outcome(bulk, ScoutItem(bulk.id, "s-2", "c-2", "j-2"), RECEIVED, recorded)

    assert outcome is True
    [event] = recorded
    assert type(event) is Account.ScoutReceived
    assert vars(event) == vars(triggered)
    stored, expected = mapper().to_stored_event(event), mapper().to_stored_event(triggered)
    assert (stored.topic, stored.state) == (expected.topic, expected.state)
    assert stored.originator_version == expected.originator_version == 3
    assert vars(bulk) == vars(library)  # the account after it, version and time included


def test_a_seen_scout_records_nothing_and_a_refusal_is_the_outcome() -> None:
    account = registered()
    recorded: list[Account.Event] = []
    assert _scout_outcome(account, ScoutItem(account.id, "s-1", "c", "j"), RECEIVED, recorded)
    assert not _scout_outcome(account, ScoutItem(account.id, "s-1", "c", "j"), RECEIVED, recorded)
    assert len(recorded) == 1 and account.version == 2
    account.request_withdrawal(reason="hired_elsewhere")
    refused = _scout_outcome(account, ScoutItem(account.id, "s-2", "c", "j"), RECEIVED, recorded)
    assert isinstance(refused, AccountWithdrawingError)
    assert len(recorded) == 1
