"""The hash chain: intact after purges, broken by any SQL edit of a stored event, and never
silently re-blessed by a rebuild."""

from __future__ import annotations

from uuid import UUID

import pytest
from eventsourcing.persistence import Notification
from projection_history import History, catch_up

from lifecycle.application import Accounts
from lifecycle.audit.verify import verify
from lifecycle.erasure.process import Confirmation, ErasureProcess
from lifecycle.errors import ChainMismatchError
from projections.hashchain import GENESIS, HashChain, link
from projections.runner import rebuild


def notification_of(accounts: Accounts, account_id: UUID, version: int) -> Notification:
    for notification in accounts.recorder.select_notifications(start=1, limit=10_000):
        if notification.originator_id == account_id and notification.originator_version == version:
            return notification
    raise AssertionError("no such event")


def edit_state(accounts: Accounts, account_id: UUID, version: int, old: bytes, new: bytes) -> None:
    """What an intruder with SQL access does: change one stored event in place."""
    db = accounts.database
    with db.transaction() as cursor:
        row = cursor.execute(
            f"SELECT state FROM {db.events_table} "
            "WHERE originator_id = %s AND originator_version = %s",
            (db.id_param(account_id), version),
        ).fetchone()
        assert row is not None and old in bytes(row[0])
        cursor.execute(
            f"UPDATE {db.events_table} SET state = %s "
            "WHERE originator_id = %s AND originator_version = %s",
            (bytes(row[0]).replace(old, new), db.id_param(account_id), version),
        )


def test_an_untouched_log_verifies(accounts: Accounts, history: History) -> None:
    chain = HashChain(accounts.database)
    catch_up(accounts, chain)

    result = verify(chain, accounts.recorder)

    head = accounts.recorder.max_notification_id()
    assert result.ok and result.mismatches == 0
    assert result.checked == head and result.unchained == 0
    assert (result.head_position, result.head_link) == (head, chain.head()[1])


def test_links_cover_the_stored_bytes_in_order(accounts: Accounts, history: History) -> None:
    chain = HashChain(accounts.database)
    catch_up(accounts, chain)
    previous = GENESIS
    for notification in accounts.recorder.select_notifications(start=1, limit=1000):
        previous = link(previous, notification)

    assert chain.head()[1] == previous.hex()


def test_purge_after_chaining_leaves_the_chain_intact(accounts: Accounts) -> None:
    account_id = accounts.register(
        email="chained@example.jp", display_name="Chained Person", consent_version="1"
    )
    accounts.request_withdrawal(account_id, reason="other", comment="a personal comment")
    chain = HashChain(accounts.database)
    catch_up(accounts, chain)
    process = ErasureProcess(accounts)
    for service in process.services:
        process.handle(Confirmation(account_id, service, "confirmed", 1, f"c-{service}"))
    catch_up(accounts, chain)

    result = verify(chain, accounts.recorder)

    assert accounts.vault.is_destroyed(account_id)
    assert result.ok, result.as_dict()


def test_one_edited_event_is_named(accounts: Accounts, history: History) -> None:
    chain = HashChain(accounts.database)
    catch_up(accounts, chain)
    edited = notification_of(accounts, history.withdrawing, 3)

    edit_state(accounts, history.withdrawing, 3, b"too_many_notifications", b"hired_elsewhere")
    result = verify(chain, accounts.recorder)

    assert not result.ok
    assert result.mismatches == 1
    first = result.first[0]
    assert (first.notification_id, first.kind) == (edited.id, "altered")
    assert (first.originator_id, first.originator_version) == (str(history.withdrawing), 3)
    assert first.topic is not None and first.topic.endswith("Account.WithdrawalRequested")
    assert f"notification {edited.id} " in first.describe()


def test_a_deleted_event_is_named(accounts: Accounts, history: History) -> None:
    chain = HashChain(accounts.database)
    catch_up(accounts, chain)
    deleted = notification_of(accounts, history.active, 2)
    db = accounts.database
    with db.transaction() as cursor:
        cursor.execute(
            f"DELETE FROM {db.events_table} WHERE originator_id = %s AND originator_version = 2",
            (db.id_param(history.active),),
        )

    result = verify(chain, accounts.recorder)

    assert [(m.notification_id, m.kind) for m in result.first] == [(deleted.id, "missing")]


def test_events_not_yet_chained_are_counted_not_failed(
    accounts: Accounts, history: History
) -> None:
    chain = HashChain(accounts.database)
    catch_up(accounts, chain)
    accounts.receive_scout(history.active, scout_id="s-new", company_id="acme", job_id="j")

    result = verify(chain, accounts.recorder)

    assert result.ok and result.unchained == 1


def test_a_rebuild_refuses_to_bless_an_edit(accounts: Accounts, history: History) -> None:
    chain = HashChain(accounts.database)
    catch_up(accounts, chain)
    before = chain.head()
    edit_state(accounts, history.withdrawing, 3, b"too_many_notifications", b"hired_elsewhere")

    with pytest.raises(ChainMismatchError):
        rebuild(accounts, HashChain)

    assert chain.head() == before
    assert not verify(chain, accounts.recorder).ok


def test_a_rebuild_of_an_intact_chain_gives_the_same_head(
    accounts: Accounts, history: History
) -> None:
    chain = HashChain(accounts.database)
    catch_up(accounts, chain)
    before = chain.head()

    rebuild(accounts, HashChain)

    assert chain.head() == before
    assert verify(chain, accounts.recorder).ok
