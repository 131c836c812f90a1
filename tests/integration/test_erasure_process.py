"""The erasure process on SQLite and the real PostgreSQL: confirmations in, one `Purged` out."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from support import wait_until

from consumers.faults import RetryPolicy
from consumers.kit import Consumer
from lifecycle import bootstrap
from lifecycle.account_terms import AccountStatus
from lifecycle.application import Accounts
from lifecycle.bootstrap import build_erasure, erasure_status_query
from lifecycle.domain import Account
from lifecycle.erasure.intake import ConfirmationIntake
from lifecycle.erasure.process import Confirmation, ErasureProcess
from lifecycle.erasure.queries import ErasureStatusQuery
from lifecycle.erasure.records import ErasureRefusals
from lifecycle.erasure.status import CONFIRMED, FAILED
from lifecycle.errors import AccountNotFoundError
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.source import InProcessSource
from lifecycle.settings import Settings
from schemas.contract import (
    ERASURE_GROUP,
    Envelope,
    ErasureConfirmedV1,
    TopicNames,
    encode_erasure_confirmed,
)

TOPICS = TopicNames()


def member(accounts: Accounts) -> UUID:
    tag = uuid.uuid4().hex[:8]
    return accounts.register(
        email=f"erasure.{tag}@example.jp", display_name=f"Erasure {tag}", consent_version="v1"
    )


def withdrawn_member(accounts: Accounts) -> UUID:
    account_id = member(accounts)
    accounts.request_withdrawal(account_id, reason="hired_elsewhere")
    return account_id


def confirmation(account_id: UUID, service: str, rows: int = 1, n: int = 0) -> Confirmation:
    return Confirmation(account_id, service, CONFIRMED, rows, f"{account_id}:{service}:{n}")


def purged_events(accounts: Accounts, account_id: UUID) -> int:
    notifications = accounts.recorder.select_notifications(start=1, limit=100_000)
    events = [accounts.mapper.to_domain_event(n) for n in notifications]
    return sum(isinstance(e, Account.Purged) and e.originator_id == account_id for e in events)


def test_purges_once_when_every_service_confirmed_and_repeats_change_nothing(
    accounts: Accounts, settings: Settings
) -> None:
    process = build_erasure(accounts, settings)
    account_id = withdrawn_member(accounts)
    assert not process.handle(confirmation(account_id, "scout", 3))
    assert not process.handle(confirmation(account_id, "scout", 3, n=1))
    assert not process.handle(confirmation(account_id, "chat", 5))
    assert accounts.load_for_audit(account_id).status is AccountStatus.WITHDRAWING
    assert process.handle(confirmation(account_id, "mail", 2))
    for service in ("mail", "scout", "chat"):
        assert not process.handle(confirmation(account_id, service, 0, n=2))
    assert accounts.load_for_audit(account_id).status is AccountStatus.PURGED
    assert purged_events(accounts, account_id) == 1
    status = erasure_status_query(accounts, settings).status(account_id).as_dict()
    # A repeat never overwrites the count of the first confirmation.
    assert {s: v["rows_removed"] for s, v in status["services"].items()} == {
        "scout": 3,
        "chat": 5,
        "mail": 2,
    }


def test_an_accounts_later_confirmations_are_believed_without_loading_it_again(
    accounts: Accounts, settings: Settings
) -> None:
    process = build_erasure(accounts, settings)
    account_id = withdrawn_member(accounts)
    withdrawn_at = accounts.load_for_audit(account_id).withdrawn_at
    assert withdrawn_at is not None
    loads: list[UUID] = []
    load = accounts.load_for_audit

    def counted(loaded: UUID) -> Account:
        loads.append(loaded)
        return load(loaded)

    setattr(accounts, "load_for_audit", counted)  # noqa: B010 - a test seam
    for service in ("scout", "chat"):  # two polls
        accepted, refused = process.verified([confirmation(account_id, service)])
        assert (len(accepted), refused) == (1, [])
    assert loads == [account_id]
    # One from before the withdrawal is not believed on memory: loaded again, and refused.
    early = Confirmation(
        account_id,
        "mail",
        CONFIRMED,
        0,
        "early",
        confirmed_at=withdrawn_at - timedelta(hours=1),
    )
    accepted, refused = process.verified([early])
    assert (accepted, refused) == ([], [(early, "before_withdrawal")])
    assert loads == [account_id, account_id]


def test_a_failure_is_replaced_by_a_later_confirmation_never_the_reverse(
    accounts: Accounts, settings: Settings
) -> None:
    process = build_erasure(accounts, settings)
    account_id = withdrawn_member(accounts)
    failed = Confirmation(account_id, "chat", FAILED, 0, "f1", error_code="db_unreachable")
    process.handle(failed)
    query = erasure_status_query(accounts, settings)
    chat = query.status(account_id).services["chat"]
    assert (chat.state, chat.rows_removed, chat.error_code) == ("failed", 0, "db_unreachable")
    assert query.status(account_id).errored
    process.handle(confirmation(account_id, "chat", 4))
    process.handle(Confirmation(account_id, "chat", FAILED, 0, "f2", error_code="late"))
    chat = query.status(account_id).services["chat"]
    assert (chat.state, chat.rows_removed, chat.error_code) == ("confirmed", 4, None)
    assert not query.status(account_id).errored


def test_status_reports_requested_per_service_overdue_and_purged(
    accounts: Accounts, settings: Settings
) -> None:
    process = ErasureProcess(accounts)
    query = ErasureStatusQuery(accounts, timedelta(hours=72))
    active = member(accounts)
    assert query.status(active).state == "not_requested"
    assert query.status(active).overdue is False

    account_id = withdrawn_member(accounts)
    requested_at = accounts.load_for_audit(account_id).withdrawn_at
    assert requested_at is not None
    process.handle(confirmation(account_id, "scout", 2))
    early = query.status(account_id, now=requested_at + timedelta(hours=1)).as_dict()
    assert early["state"] == "requested"
    assert early["requested_at"] == requested_at
    assert early["deadline_at"] == requested_at + timedelta(hours=72)
    assert early["overdue"] is False
    assert {s: v["state"] for s, v in early["services"].items()} == {
        "scout": "confirmed",
        "chat": "pending",
        "mail": "pending",
    }
    late = query.status(account_id, now=requested_at + timedelta(hours=72, seconds=1))
    assert late.overdue is True

    process.handle(confirmation(account_id, "chat"))
    process.handle(confirmation(account_id, "mail"))
    done = query.status(account_id, now=requested_at + timedelta(days=30))
    assert done.state == "purged"
    assert done.overdue is False
    assert done.purged_at is not None
    assert done.reason == "hired_elsewhere"

    # The query as built from settings (the API's, the erasure proof's).
    shown = erasure_status_query(accounts, settings).status(
        account_id, now=requested_at + timedelta(days=30)
    )
    assert shown == done
    with pytest.raises(AccountNotFoundError):
        erasure_status_query(accounts, settings).status(uuid.uuid4())


def test_concurrent_last_confirmations_record_one_purged(
    accounts: Accounts, settings: Settings
) -> None:
    process = build_erasure(accounts, settings)
    account_id = withdrawn_member(accounts)
    process.handle(confirmation(account_id, "scout"))
    barrier = threading.Barrier(2)
    results: list[bool] = []

    def confirm(service: str) -> None:
        barrier.wait()
        results.append(process.handle(confirmation(account_id, service)))

    threads = [threading.Thread(target=confirm, args=(s,)) for s in ("chat", "mail")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert accounts.load_for_audit(account_id).status is AccountStatus.PURGED
    assert purged_events(accounts, account_id) == 1
    assert results.count(True) <= 1


# Through the kit: the erasure consumer


@pytest.fixture
def log() -> InProcessPublisher:
    return InProcessPublisher()


@pytest.fixture
def erasure_consumer(
    accounts: Accounts, settings: Settings, log: InProcessPublisher
) -> Iterator[Consumer]:
    consumer = bootstrap.erasure_consumer(
        build_erasure(accounts, settings),
        InProcessSource(log, [*TOPICS.confirmations.values(), TOPICS.legacy_erasure_confirmed]),
        log,
        TOPICS,
        retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01),
        poll_timeout_s=0.05,
    )
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    yield consumer
    stop.set()
    thread.join(timeout=10)


def confirm(
    log: InProcessPublisher,
    account_id: UUID,
    service: str,
    rows: int,
    *,
    topic: str | None = None,
    ce_id: str | None = None,
) -> None:
    """A confirmation naming `service`, on `service`'s own topic unless `topic` says."""
    record = encode_erasure_confirmed(
        ErasureConfirmedV1(
            account_id=account_id,
            service=service,
            rows_removed=rows,
            confirmed_at=datetime.now(UTC),
        ),
        ce_id=ce_id,
    )
    log.publish(
        topic or TOPICS.erasure_confirmed(service), record.key, record.headers, record.value
    )
    log.flush()


def refusals(accounts: Accounts) -> dict[tuple[str, str], int]:
    return ErasureRefusals(accounts.database).totals()


def settled(consumer: Consumer, count: int) -> bool:
    stats = consumer.stats
    return stats.applied + stats.duplicates + stats.dead_lettered >= count


def test_duplicate_confirmation_records_lead_to_one_purged(
    accounts: Accounts, log: InProcessPublisher, erasure_consumer: Consumer
) -> None:
    account_id = withdrawn_member(accounts)
    ids = {
        s: f"{account_id}:{s}:erasure-confirmed:{uuid.uuid4().hex}"
        for s in ("scout", "chat", "mail")
    }
    for service, rows in (("scout", 2), ("scout", 2), ("chat", 4), ("mail", 3), ("mail", 3)):
        confirm(log, account_id, service, rows, ce_id=ids[service])
    confirm(log, account_id, "chat", 4, ce_id=ids["chat"])
    wait_until(lambda: settled(erasure_consumer, 6))
    assert erasure_consumer.stats.applied == 3
    assert erasure_consumer.stats.duplicates == 3
    assert accounts.load_for_audit(account_id).status is AccountStatus.PURGED
    assert purged_events(accounts, account_id) == 1


def test_forged_confirmations_for_an_active_member_are_refused_and_the_real_erasure_completes(
    accounts: Accounts, log: InProcessPublisher, erasure_consumer: Consumer
) -> None:
    """Issue 19's first attack: chat and mail "confirm" for a member who never withdrew; when
    the member withdraws, one scout confirmation must not complete the erasure."""
    target = member(accounts)
    for service in ("chat", "mail"):
        confirm(log, target, service, 0)
    confirm(log, uuid.uuid4(), "scout", 0)  # no such account
    wait_until(lambda: settled(erasure_consumer, 3))
    assert refusals(accounts) == {
        ("chat", "account_not_withdrawing"): 1,
        ("mail", "account_not_withdrawing"): 1,
        ("scout", "account_unknown"): 1,
    }
    assert erasure_consumer.stats.outcomes == {"confirmation_refused": 3}
    assert log.read(TOPICS.dlq(ERASURE_GROUP)) == []  # refused, not a fault to re-drive
    status = erasure_status_query(accounts, Settings()).status(target).as_dict()["services"]
    assert {s: v["state"] for s, v in status.items()} == dict.fromkeys(status, "pending")

    accounts.request_withdrawal(target, reason="hired_elsewhere")
    confirm(log, target, "scout", 1)
    wait_until(lambda: settled(erasure_consumer, 4))
    assert accounts.load_for_audit(target).status is AccountStatus.WITHDRAWING
    confirm(log, target, "chat", 2)
    confirm(log, target, "mail", 3)  # the real ones, after the withdrawal
    wait_until(lambda: accounts.load_for_audit(target).status is AccountStatus.PURGED)
    assert purged_events(accounts, target) == 1


def test_a_confirmation_counts_for_the_topic_it_came_on_never_for_what_it_says(
    accounts: Accounts, log: InProcessPublisher, erasure_consumer: Consumer
) -> None:
    """Attributed by topic: mail's principal cannot confirm for scout by naming it, and the
    shared topic of earlier releases vouches for nobody unless the transition setting is on."""
    target = withdrawn_member(accounts)
    confirm(log, target, "scout", 0, topic=TOPICS.erasure_confirmed("mail"))
    confirm(log, target, "chat", 0, topic=TOPICS.legacy_erasure_confirmed)
    confirm(log, target, "mail", 0, topic=TOPICS.lifecycle)
    wait_until(lambda: settled(erasure_consumer, 2))
    assert refusals(accounts) == {
        ("mail", "service_mismatch"): 1,
        ("chat", "unattributed"): 1,
    }
    for service in ("scout", "chat", "mail"):
        confirm(log, target, service, 1)
    wait_until(lambda: accounts.load_for_audit(target).status is AccountStatus.PURGED)


def test_the_legacy_shared_topic_is_believed_only_during_a_rolling_upgrade(
    accounts: Accounts, settings: Settings, log: InProcessPublisher
) -> None:
    legacy = settings.model_copy(update={"erasure_legacy_confirmations": True})
    assert bootstrap.confirmation_topics(legacy, TOPICS)[-1] == TOPICS.legacy_erasure_confirmed
    assert TOPICS.legacy_erasure_confirmed not in bootstrap.confirmation_topics(settings, TOPICS)
    consumer = bootstrap.erasure_consumer(
        build_erasure(accounts, settings),
        InProcessSource(log, bootstrap.confirmation_topics(legacy, TOPICS)),
        log,
        TOPICS,
        poll_timeout_s=0.05,
        legacy=True,
    )
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    try:
        target = withdrawn_member(accounts)
        active = member(accounts)
        for service in ("scout", "chat", "mail"):
            confirm(log, target, service, 1, topic=TOPICS.legacy_erasure_confirmed)
        # Weaker, but still only for a withdrawing member.
        confirm(log, active, "chat", 1, topic=TOPICS.legacy_erasure_confirmed)
        wait_until(lambda: settled(consumer, 4))
        assert accounts.load_for_audit(target).status is AccountStatus.PURGED
        assert refusals(accounts) == {("chat", "account_not_withdrawing"): 1}
    finally:
        stop.set()
        thread.join(timeout=10)


def test_pre_published_confirmation_ids_cannot_shadow_the_real_ones(
    accounts: Accounts, log: InProcessPublisher, erasure_consumer: Consumer
) -> None:
    """Ids are de-duplicated as (source, type, id), and a service's ids carry a random nonce:
    a record published in advance under a guessed id is refused, and the real one applies."""
    target = member(accounts)
    guessed = f"{target}:scout:erasure-confirmed:{'0' * 32}"
    confirm(log, target, "scout", 0, ce_id=guessed)
    wait_until(lambda: settled(erasure_consumer, 1))
    accounts.request_withdrawal(target, reason="hired_elsewhere")
    for service in ("scout", "chat", "mail"):
        confirm(log, target, service, 1)
    wait_until(lambda: accounts.load_for_audit(target).status is AccountStatus.PURGED)
    assert refusals(accounts) == {("scout", "account_not_withdrawing"): 1}


def test_erasures_completed_by_one_batch_are_all_purged_and_a_forged_one_alone_refused(
    accounts: Accounts, settings: Settings, log: InProcessPublisher
) -> None:
    withdrawn = [withdrawn_member(accounts) for _ in range(4)]
    active = member(accounts)  # never asked to erase: its last confirmation cannot purge
    for account_id in [*withdrawn, active]:
        for service in ("scout", "chat", "mail"):
            confirm(log, account_id, service, 1)
    # Published before the consumer starts, so its first poll holds all of them.
    consumer = bootstrap.erasure_consumer(
        build_erasure(accounts, settings),
        InProcessSource(log, [*TOPICS.confirmations.values(), TOPICS.legacy_erasure_confirmed]),
        log,
        TOPICS,
        retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01),
        poll_timeout_s=0.05,
    )
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: settled(consumer, 15))
    finally:
        stop.set()
        thread.join(timeout=10)
    for account_id in withdrawn:
        assert accounts.load_for_audit(account_id).status is AccountStatus.PURGED
        assert purged_events(accounts, account_id) == 1
    assert accounts.load_for_audit(active).status is AccountStatus.ACTIVE
    assert log.read(TOPICS.dlq(ERASURE_GROUP)) == []
    assert refusals(accounts) == {
        (s, "account_not_withdrawing"): 1 for s in ("scout", "chat", "mail")
    }


def test_the_intake_counts_a_polls_refusals_in_one_write_and_marks_them_by_record_id(
    accounts: Accounts, settings: Settings
) -> None:
    """Refusals of the topic check (unattributed) and of the withdrawal check (account not
    withdrawing) are written together; each record's verdict follows its own id."""
    process = build_erasure(accounts, settings)
    intake = ConfirmationIntake(process, TOPICS)
    writes: list[int] = []
    count = process.refusals.count
    process.refusals.count = lambda refused: (writes.append(len(refused)), count(refused))[1]  # type: ignore[method-assign]
    active, withdrawn = member(accounts), withdrawn_member(accounts)

    def envelope(account_id: UUID, service: str, topic: str, ce_id: str) -> Envelope:
        data = ErasureConfirmedV1(
            account_id=account_id, service=service, rows_removed=1, confirmed_at=datetime.now(UTC)
        )
        return Envelope(
            id=ce_id, source=service, type="t", time=datetime.now(UTC),
            subject=str(account_id), data=data, topic=topic,
        )  # fmt: skip

    polled = [
        envelope(withdrawn, "scout", "elsewhere", "forged"),
        envelope(active, "chat", TOPICS.erasure_confirmed("chat"), "early"),
        envelope(withdrawn, "mail", TOPICS.erasure_confirmed("mail"), "real"),
    ]
    intake.prepare_many(polled)
    assert writes == [2]
    outcomes = [intake.handle(e, None).outcome for e in polled]  # type: ignore[arg-type]
    assert outcomes == ["confirmation_refused", "confirmation_refused", "confirmation_handled"]
    status = erasure_status_query(accounts, settings).status(withdrawn)
    assert {s: p.state for s, p in status.services.items()}["mail"] == "confirmed"
