"""The fold over stored states (lifecycle.stored_fold) equals the library's fold, field by field.

Hypothesis generates histories: accounts driven by any command, refused or not, through the
real `Account` aggregate, e-mail claims claimed and released, saved at random points (several
events in one save, or one at a time) through the application's real recorder, on SQLite and
on PostgreSQL; purges destroy their key (read back `[redacted]`). Every stored stream is then
folded both ways, the library's (`Mapper.to_domain_event` then `event.mutate`) and the stored
fold, and the two aggregates compared after every event, opened and unopened.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle import event_names
from lifecycle.account_terms import WithdrawalReason, default_notifications
from lifecycle.application import Accounts
from lifecycle.crypto import KEYS_TABLE, PersonalDataMapper
from lifecycle.domain import Account
from lifecycle.email_claim import EmailClaim
from lifecycle.errors import LifecycleError
from lifecycle.stored_fold import (
    KINDS,
    StoredFold,
    fold,
    heap_frozen,
    id_ranges,
    read_ahead,
    stream_pages,
    stream_pages_with_keys,
)

COMPANIES = ["acme", "globex", "initech"]
AT = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)

registrations = st.fixed_dictionaries(
    {
        "email": st.sampled_from(["hanako@example.jp", " Taro@Example.COM "]),
        "display_name": st.sampled_from(["Hanako", "山田 太郎"]),
        "phone": st.sampled_from([None, "090-1234-5678"]),
        "job_title": st.sampled_from([None, "Engineer"]),
        "work_history": st.sampled_from([None, [], [{"company": "Acme", "years": 2}]]),
        "profile": st.sampled_from([None, {"prefecture": "Tokyo", "birth_year": 1990}]),
        "desired": st.sampled_from([None, {"remote": True, "min_salary": 8_000_000}]),
        "notifications": st.sampled_from([None, {"scouts": False}]),
        "channel": st.sampled_from(["web", "app"]),
        "consent_version": st.just("2026-04"),
    }
)
edits = st.fixed_dictionaries(
    {},
    optional={
        "profile": st.sampled_from([{"prefecture": "Osaka"}, {"birth_year": None}]),
        "job_title": st.sampled_from(["Designer", "Engineer"]),
        "work_history": st.sampled_from([[], [{"company": "Globex", "years": 1}]]),
        "desired": st.sampled_from([{"remote": False}, {"min_salary": 9_000_000}]),
        "notifications": st.sampled_from([default_notifications(), {"notices": False}]),
    },
)
commands = st.one_of(
    st.tuples(st.just("edit"), edits),
    st.tuples(st.just("scout"), st.integers(0, 4), st.sampled_from(COMPANIES)),
    st.tuples(st.just("gift"), st.sampled_from([*COMPANIES, "umbrella"])),
    st.tuples(
        st.just("withdraw"),
        st.sampled_from([r.value for r in WithdrawalReason]),
        st.sampled_from([None, "ありがとう", "thanks"]),
        st.booleans(),
    ),
    st.tuples(st.just("purge")),
    st.tuples(st.just("save")),
)
claim_steps = st.lists(st.sampled_from(["claim", "claim-other", "release", "save"]), max_size=6)


def run(account: Account, command: tuple[Any, ...], at: datetime) -> None:
    """One command, as a caller would send it; a refusal records nothing."""
    name, *args = command
    with contextlib.suppress(LifecycleError):
        if name == "edit":
            account.edit_preferences(**args[0])
        elif name == "scout":
            account.receive_scout(
                scout_id=f"scout-{args[0]}", company_id=args[1], job_id="job", received_at=at
            )
        elif name == "gift":
            account.claim_gift(company_id=args[0], start_date=date(2026, 6, 1))
        elif name == "withdraw":
            account.request_withdrawal(
                reason=args[0], comment=args[1], acknowledge_gift_loss=args[2], at=at
            )
        elif name == "purge":
            account.purge(at=at)


def library_fold(mapper: Any, stored: list[StoredEvent]) -> list[Aggregate]:
    """The aggregate after each event, as the library folds: an event object, then mutate."""
    states: list[Aggregate] = []
    aggregate: Any = None
    for event in stored:
        aggregate = mapper(event).mutate(aggregate)
        states.append(_snapshot(aggregate))
    return states


def stored_fold(folder: StoredFold, stored: list[StoredEvent]) -> list[Aggregate]:
    states: list[Aggregate] = []
    aggregate: Aggregate | None = None
    for event in stored:
        version = event.originator_version
        facts = folder.facts(event.originator_id, version, event.topic, event.state)
        aggregate = fold(aggregate, KINDS[event.topic], facts)
        states.append(_snapshot(aggregate))
    return states


def _snapshot(aggregate: Aggregate) -> Any:
    """The aggregate's type and every attribute, copied (later events change the same object)."""
    return type(aggregate), copy.deepcopy(vars(aggregate))


def assert_folds_alike(accounts: Accounts, aggregate_id: UUID) -> None:
    mapper = accounts.mapper
    assert isinstance(mapper, PersonalDataMapper)
    stored = accounts.recorder.select_events(aggregate_id)
    assert stored
    for opened, library_mapper in (
        (True, mapper.to_domain_event),
        (False, mapper.to_unopened_domain_event),
    ):
        expected = library_fold(library_mapper, stored)
        found = stored_fold(StoredFold(mapper, opened=opened), stored)
        for version, ((want_type, want), (got_type, got)) in enumerate(
            zip(expected, found, strict=True), start=1
        ):
            assert got_type is want_type, version
            assert sorted(got) == sorted(want), f"attributes after v{version}"
            for name, value in want.items():
                assert got[name] == value, f"{name} after v{version} (opened={opened})"
                assert type(got[name]) is type(value), f"{name}'s type after v{version}"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    registration=registrations,
    history=st.lists(commands, max_size=12),
    claim=claim_steps,
)
def test_the_stored_fold_equals_the_librarys_fold(
    accounts: Accounts,
    registration: dict[str, Any],
    history: list[tuple[Any, ...]],
    claim: list[str],
) -> None:
    account = Account.register(**registration)
    at = AT
    for command in history:
        at += timedelta(minutes=7)
        if command[0] == "save":
            accounts.save(account)
        else:
            run(account, command, at)
    accounts.save(account)

    email = EmailClaim.open(uuid4())  # any id: a claim's own is a keyed hash
    for step in claim:
        if step == "save":
            accounts.save(email)
        elif step == "release":
            email.release("holder-a")
        else:
            with contextlib.suppress(LifecycleError):
                email.claim("holder-a" if step == "claim" else "holder-b")
    accounts.save(email)

    assert_folds_alike(accounts, account.id)
    assert_folds_alike(accounts, email.id)


def test_an_unknown_topic_or_a_gap_is_refused(accounts: Accounts) -> None:
    from eventsourcing.domain import OriginatorVersionError

    from lifecycle.stored_fold import UnknownTopicError

    account = Account.register(email="a@example.jp", display_name="A", consent_version="v")
    account.receive_scout(scout_id="s", company_id="acme", job_id="j", received_at=AT)
    accounts.save(account)
    registered, scouted = accounts.recorder.select_events(account.id)
    mapper = accounts.mapper
    assert isinstance(mapper, PersonalDataMapper)
    folder = StoredFold(mapper)
    with pytest.raises(UnknownTopicError):
        folder.facts(account.id, 1, "lifecycle.domain:Account.Renamed", registered.state)
    facts = folder.facts(account.id, 2, scouted.topic, scouted.state)
    with pytest.raises(OriginatorVersionError):
        fold(None, KINDS[scouted.topic], facts)
    first = fold(None, KINDS[registered.topic], folder.facts(account.id, 1, *_rest(registered)))
    with pytest.raises(OriginatorVersionError):
        fold(first, KINDS[registered.topic], folder.facts(account.id, 1, *_rest(registered)))
    facts["originator_version"] = 3
    with pytest.raises(OriginatorVersionError):
        fold(first, KINDS[scouted.topic], facts)


def test_each_page_carries_the_keys_of_the_accounts_it_completes(accounts: Accounts) -> None:
    """The key is read with its account's first event, and handed over with the page that
    completes the account's stream, however many pages the stream spans."""
    ids = []
    for n in range(3):
        account = Account.register(email=f"p{n}@example.jp", display_name="P", consent_version="v")
        for scout in range(n + 1):
            account.receive_scout(
                scout_id=f"s{scout}", company_id="acme", job_id="j", received_at=AT
            )
        accounts.save(account)
        ids.append(account.id)
    claim = EmailClaim.open(uuid4())
    claim.claim("holder")
    accounts.save(claim)
    db = accounts.database
    with db.transaction() as cursor:
        cursor.execute(
            f"DELETE FROM {db.table(KEYS_TABLE)} WHERE account_id = %s", (db.id_param(ids[1]),)
        )
        stored = {
            db.to_uuid(raw_id): bytes(wrapped)
            for raw_id, wrapped in cursor.execute(
                f"SELECT account_id, wrapped_key FROM {db.table(KEYS_TABLE)}"
            ).fetchall()
        }

    for size in (2, 3, 100):
        pages = list(stream_pages_with_keys(db, page=size))
        assert [streams for streams, _ in pages] == list(stream_pages(db, page=size))
        for streams, keys in pages:
            registered = {s[0][0] for s in streams if s[0][2] == event_names.REGISTERED}
            assert set(keys) == registered
        keys = {k: v for _, page_keys in pages for k, v in page_keys.items()}
        assert keys == {ids[0]: stored[ids[0]], ids[1]: None, ids[2]: stored[ids[2]]}

    # The id space cut in ranges: each stream, and each key, in exactly one of them.
    whole = [s for streams, _ in stream_pages_with_keys(db) for s in streams]
    for parts in (1, 2, 3, 7):
        ranges = id_ranges(parts)
        assert ranges[0][0] is None and ranges[-1][1] is None
        cut = [list(stream_pages_with_keys(db, page=2, ids=ids)) for ids in ranges]
        assert [s for part in cut for streams, _ in part for s in streams] == whole
        assert {k: v for part in cut for _, keys in part for k, v in keys.items()} == keys


def _rest(stored: StoredEvent) -> tuple[str, bytes]:
    return stored.topic, stored.state


def test_read_ahead_hands_over_pages_in_order_errors_in_place_and_stops_with_its_caller() -> None:
    assert list(read_ahead(iter(range(5)))) == [0, 1, 2, 3, 4]

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("the database went away")

    got: list[int] = []
    with pytest.raises(ValueError, match="went away"):
        got.extend(read_ahead(failing()))
    assert got == [1]

    produced: list[int] = []

    def endless() -> Iterator[int]:
        while True:
            produced.append(len(produced))
            yield produced[-1]

    ahead = read_ahead(endless())
    assert next(ahead) == 0
    ahead.close()
    assert len(produced) <= 3  # the page handed over, one waiting, one being read
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


def test_a_pass_over_the_log_leaves_the_heap_as_it_found_it() -> None:
    """heap_frozen spares the collector's scans of what was alive before, then hands it back."""
    assert gc.get_freeze_count() == 0
    with heap_frozen():
        assert gc.get_freeze_count() > 0
        garbage: list[Any] = []
        garbage.append(garbage)  # a cycle made during the pass is still collected
        del garbage
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
