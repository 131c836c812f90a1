"""Group commit: concurrent saves share a transaction, and each caller still gets its own
outcome, durable when it returns; on SQLite and the real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import IntegrityError
from support import race

from lifecycle.application import Accounts
from lifecycle.domain import Account
from lifecycle.errors import EmailAlreadyClaimedError, KeyDestroyedError
from lifecycle.group_commit import GroupCommitWriter
from lifecycle.settings import Settings


@pytest.fixture
def gc_accounts(settings: Settings) -> Iterator[Accounts]:
    app = Accounts(env=settings.application_env())
    yield app
    app.close()


def held_first_batch(writer: GroupCommitWriter, waiting: int) -> Callable[..., Any]:
    """Wrap the writer's save so its first call waits until `waiting` requests queue behind
    it: the next batch then holds all of them, deterministically."""
    inner = writer._save
    first = threading.Event()

    def save(*objs: Any, **kwargs: Any) -> Any:
        if not first.is_set():
            first.set()
            deadline = time.monotonic() + 10.0
            while len(writer._queue) < waiting and time.monotonic() < deadline:
                time.sleep(0.005)
        return inner(*objs, **kwargs)

    writer._save = save
    return save


def register(accounts: Accounts, i: int = 0) -> UUID:
    return accounts.register(
        email=f"gc-{i}-{uuid4().hex[:8]}@example.jp",
        display_name=f"Member {i}",
        consent_version="v1",
        job_title="Engineer",
    )


# The writer alone, with a stand-in for Application.save


class FakeStore:
    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_with = fail_with

    def save(self, *objs: Any) -> list[Any]:
        self.calls.append(objs)
        if self.fail_with is not None:
            raise self.fail_with
        return [f"recorded:{obj}" for obj in objs if isinstance(obj, str)]


def test_a_lone_caller_saves_alone_and_gets_its_recordings() -> None:
    store = FakeStore()
    writer = GroupCommitWriter(store.save)
    assert writer.save(["a", "b"]) == ["recorded:a", "recorded:b"]  # type: ignore[list-item]
    assert store.calls == [("a", "b")]
    assert (writer.batches, writer.saved_requests) == (1, 1)


def test_waiting_callers_share_one_save_and_each_gets_its_own_recordings() -> None:
    store = FakeStore()
    writer = GroupCommitWriter(store.save)
    held_first_batch(writer, waiting=7)
    results = race(lambda i: writer.save([f"e{i}-1", f"e{i}-2"]), 8)  # type: ignore[list-item]
    assert results == [[f"recorded:e{i}-1", f"recorded:e{i}-2"] for i in range(8)]
    # The first caller leads alone; the seven that queued meanwhile share the next save.
    assert len(store.calls) == 2
    assert sorted(len(call) for call in store.calls) == [2, 14]
    assert writer.saved_requests == 8


def test_an_infrastructure_failure_reaches_every_caller_of_the_batch() -> None:
    store = FakeStore(fail_with=RuntimeError("database unreachable"))
    writer = GroupCommitWriter(store.save)
    held_first_batch(writer, waiting=3)
    results = race(lambda i: writer.save([f"e{i}"]), 4)  # type: ignore[list-item]
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len(store.calls) == 2  # no retry of anything on its own


def test_batches_are_bounded() -> None:
    store = FakeStore()
    writer = GroupCommitWriter(store.save, max_batch=3)
    held_first_batch(writer, waiting=7)
    results = race(lambda i: writer.save([f"e{i}"]), 8)  # type: ignore[list-item]
    assert all(isinstance(r, list) for r in results)
    assert max(len(call) for call in store.calls) <= 3
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommitWriter(store.save, max_batch=0)


# Through Accounts, on the real stores


def test_concurrent_registrations_all_land_and_are_durable_on_return(
    gc_accounts: Accounts, settings: Settings
) -> None:
    held_first_batch(gc_accounts.group_commit, waiting=7)
    results = race(lambda i: register(gc_accounts, i), 8)
    assert all(isinstance(r, UUID) for r in results), results
    assert gc_accounts.group_commit.batches < gc_accounts.group_commit.saved_requests
    # Committed: another application on the same store reads every one at once.
    other = Accounts(env=settings.application_env())
    try:
        for account_id in results:
            account = other.get_account(account_id)
            assert account.job_title == "Engineer"  # sealed and opened again
    finally:
        other.close()


def test_a_conflict_in_a_batch_costs_only_the_caller_that_lost(
    gc_accounts: Accounts,
) -> None:
    account_id = register(gc_accounts)
    # Two stale copies of one account, each with an edit at the same next version.
    first, second = gc_accounts.get_account(account_id), gc_accounts.get_account(account_id)
    first.edit_preferences(desired={"min_salary": 1})
    second.edit_preferences(desired={"min_salary": 2})
    bystander = Account.register(
        email=f"bystander-{uuid4().hex[:8]}@example.jp", display_name="B", consent_version="v1"
    )
    blocker = gc_accounts.get_account(register(gc_accounts))
    blocker.edit_preferences(desired={"min_salary": 3})
    writer = gc_accounts.group_commit
    held_first_batch(writer, waiting=3)
    work: list[Any] = [blocker, first, second, bystander]
    results = race(lambda i: gc_accounts.save(work[i]), 4)
    outcomes = [isinstance(r, IntegrityError) for r in results[1:3]]
    assert sorted(outcomes) == [False, True], results
    assert not isinstance(results[3], BaseException)
    assert writer.fallbacks == 1
    assert gc_accounts.get_account(bystander.id).display_name == "B"
    assert gc_accounts.get_account(account_id).desired["min_salary"] in (1, 2)


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_conflict_with_a_stored_event_fails_its_caller_and_saves_the_rest_together(
    gc_accounts: Accounts,
) -> None:
    """PostgreSQL names the conflicting aggregate: its one caller gets the conflict, the
    other callers of the batch are saved again in one transaction, not one each."""
    account_id = register(gc_accounts)
    stale = gc_accounts.get_account(account_id)
    stale.edit_preferences(desired={"min_salary": 1})
    fresh = gc_accounts.get_account(account_id)
    fresh.edit_preferences(desired={"min_salary": 2})
    gc_accounts.save(fresh)  # stored: the stale copy's version is taken
    bystanders = [
        Account.register(
            email=f"bystander-{n}-{uuid4().hex[:8]}@example.jp",
            display_name=f"B{n}",
            consent_version="v1",
        )
        for n in range(3)
    ]
    blocker = gc_accounts.get_account(register(gc_accounts))
    blocker.edit_preferences(desired={"min_salary": 3})
    writer = gc_accounts.group_commit
    held_first_batch(writer, waiting=4)
    saves: list[int] = []
    held = writer._save

    def counted(*objs: Any, **kwargs: Any) -> Any:
        saves.append(len(objs))
        return held(*objs, **kwargs)

    writer._save = counted
    work: list[Any] = [blocker, stale, *bystanders]
    results = race(lambda i: gc_accounts.save(work[i]), len(work))
    assert isinstance(results[1], IntegrityError), results
    assert not any(isinstance(r, BaseException) for r in [results[0], *results[2:]]), results
    # The blocker alone, the batch of four that failed, the three bystanders again together
    # (each caller hands over one event and its aggregate).
    assert [objs // 2 for objs in saves] == [1, 4, 3]
    for bystander in bystanders:
        assert gc_accounts.get_account(bystander.id).display_name == bystander.display_name


def test_racing_commands_on_one_account_all_succeed_through_retries(
    gc_accounts: Accounts,
) -> None:
    account_id = register(gc_accounts)
    results = race(
        lambda i: gc_accounts.receive_scout(
            account_id, scout_id=f"s{i}", company_id="acme", job_id=f"j{i}"
        ),
        8,
    )
    assert results == [True] * 8
    assert sorted(gc_accounts.get_account(account_id).scouts) == sorted(f"s{i}" for i in range(8))


def test_the_same_address_registered_in_one_batch_is_claimed_once(
    gc_accounts: Accounts,
) -> None:
    held_first_batch(gc_accounts.group_commit, waiting=4)
    email = f"twice-{uuid4().hex[:8]}@example.jp"

    def attempt(i: int) -> UUID:
        if i == 0:
            return register(gc_accounts, 99)
        return gc_accounts.register(email=email, display_name=f"M{i}", consent_version="v1")

    results = race(attempt, 5)
    winners = [r for r in results[1:] if isinstance(r, UUID)]
    losers = [r for r in results[1:] if isinstance(r, EmailAlreadyClaimedError)]
    assert (len(winners), len(losers)) == (1, 3), results


def test_a_domain_error_in_a_batch_stays_with_its_caller(
    gc_accounts: Accounts,
) -> None:
    doomed_id = register(gc_accounts)
    doomed = gc_accounts.get_account(doomed_id)
    assert gc_accounts.request_withdrawal(doomed_id, reason="other")
    assert gc_accounts.purge(doomed_id)
    # A stale copy edits personal data after the purge: its key is gone, so storing fails.
    doomed.edit_preferences(job_title="Ghost")
    fine = gc_accounts.get_account(register(gc_accounts))
    fine.edit_preferences(job_title="Alive")
    writer = gc_accounts.group_commit
    blocker = gc_accounts.get_account(register(gc_accounts))
    blocker.edit_preferences(desired={"min_salary": 3})
    held_first_batch(writer, waiting=2)
    work: list[Any] = [blocker, doomed, fine]
    results = race(lambda i: gc_accounts.save(work[i]), 3)
    assert isinstance(results[1], (KeyDestroyedError, IntegrityError)), results
    assert not isinstance(results[2], BaseException), results
    assert gc_accounts.get_account(fine.id).job_title == "Alive"


# Durability across a crash

WRITER = """
import json, sys, threading
from lifecycle.application import Accounts

accounts = Accounts(env=json.loads(sys.stdin.readline()))
lock = threading.Lock()

def work(caller):
    for n in range(100_000):
        account_id = accounts.register(
            email=f"crash-{caller}-{n}@example.jp", display_name="M", consent_version="v1",
            job_title="Engineer",
        )
        with lock:  # only ids whose register() returned: their events were committed
            print(account_id, flush=True)

for caller in range(8):
    threading.Thread(target=work, args=(caller,), daemon=True).start()
threading.Event().wait()
"""


def test_a_caller_that_got_its_id_finds_its_events_after_a_kill_9(settings: Settings) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert writer.stdin is not None and writer.stdout is not None
    writer.stdin.write(json.dumps(dict(settings.application_env())) + "\n")
    writer.stdin.flush()
    returned: list[UUID] = []
    deadline = time.monotonic() + 60.0
    while len(returned) < 40 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        if not line:
            break
        returned.append(UUID(line.strip()))
    writer.kill()  # SIGKILL, mid-stream: concurrent batches are in flight
    writer.wait()
    assert len(returned) >= 40, "the writer process stopped early"
    restarted = Accounts(env=settings.application_env())
    try:
        for account_id in returned:
            assert restarted.get_account(account_id).job_title == "Engineer"
    finally:
        restarted.close()
