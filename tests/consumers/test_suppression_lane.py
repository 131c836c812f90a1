"""The mail service's suppression lane (consumers.withdrawal_mail.SuppressionLane): a withdrawal
suppressed while the service's own consumer is busy with an earlier poll, exactly once in its
counts and logs, whoever gets there first; a lane that fails leaves the suppression to the kit.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

from structlog.testing import capture_logs
from support import (
    InProcessService,
    Running,
    StoreFactory,
    profile,
    started,
    wait_until,
    withdrawal,
)

from consumers import mail, notices
from consumers.faults import RetryPolicy
from consumers.withdrawal_mail import SuppressionLane, WithdrawalMail
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.source import InProcessSource, TopicPartitionKey
from lifecycle.keyring import MasterKeyring
from lifecycle.storage import Database
from schemas.contract import Record, TopicNames

TOPICS = TopicNames()
FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)
KEYRING = MasterKeyring(os.urandom(32))


class GatedMailer:
    """Holds every send until `gate` is set; counts the sends begun."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.begun: list[str] = []

    def send(self, message: EmailMessage, recipient: str) -> None:
        self.begun.append(recipient)
        assert self.gate.wait(60), "the test never opened the gate"


def lane_over(service: InProcessService, handler: mail.MailHandler) -> SuppressionLane:
    source = InProcessSource(service.log, [TOPICS.lifecycle])
    return SuppressionLane(handler.withdrawal_mail, source, retry=FAST, poll_timeout_s=0.05)


def test_the_lane_suppresses_while_the_mail_consumer_is_stuck_in_an_earlier_send(
    service_store: StoreFactory, running: list[Running]
) -> None:
    database = service_store("mail")
    mailer = GatedMailer()
    handler = mail.MailHandler(database, TOPICS, mailer, keyring=KEYRING)
    service = started(
        running,
        InProcessService("mail", database, handler, mail.subscribed_topics(TOPICS), retry=FAST),
    )
    first, second = uuid.uuid4(), uuid.uuid4()
    service.send(
        profile(TOPICS, first, 1, "first@example.jp", "First"),
        profile(TOPICS, second, 1, "second@example.jp", "Second"),
    )
    wait_until(lambda: mail.contact_known(database, first) and mail.contact_known(database, second))
    notices.queue_notice(database, second, kind="notices", subject="New postings", body="2 new")
    with capture_logs() as logs:
        # The consumer takes the first withdrawal and hangs in its confirmation mail.
        service.send(withdrawal(TOPICS, first, 3))
        wait_until(lambda: mailer.begun == ["first@example.jp"], "the first mail begun")
        lane = started(running, Running(lane_over(service, handler)))
        service.send(withdrawal(TOPICS, second, 4))
        wait_until(lambda: mail.suppression(database, second) is not None, "second suppressed")
        # Suppressed, its queued notice dropped, while the consumer is still in the first send.
        assert mailer.begun == ["first@example.jp"]
        assert notices.deliver_queued(database, mailer, KEYRING) == 0
        state = mail.suppression(database, second)
        assert state is not None and state["rows_removed"] == 1  # the notice
        assert state["confirmation_sent_at"] is None

        mailer.gate.set()
        wait_until(service.settled)
        lane.stop()
    assert sorted(mailer.begun) == ["first@example.jp", "second@example.jp"]
    # The kit's own step 1 found it suppressed: counted and logged once, not twice.
    state = mail.suppression(database, second)
    assert state is not None and state["rows_removed"] == 2  # the notice, then the contact
    assert state["confirmed_at"] is not None
    suppressed = [e["account_id"] for e in logs if e["event"] == "mail.suppressed"]
    assert sorted(suppressed) == sorted([str(first), str(second)])
    assert mail.held_rows(database, second) == 0


class FailingMail(WithdrawalMail):
    """Its `suppress` fails the first `failures` times with `error`."""

    def __init__(self, inner: WithdrawalMail, error: Exception, failures: int) -> None:
        super().__init__(inner.database, inner.mailer, inner.contacts)
        self.error, self.failures, self.calls = error, failures, 0

    def suppress(self, withdrawals: Any) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return super().suppress(withdrawals)


class CommitRecordingSource(InProcessSource):
    """The lifecycle topic of `log`; each commit recorded, with whether `member` was suppressed
    when it was made."""

    def __init__(self, log: InProcessPublisher, database: Database, member: uuid.UUID) -> None:
        super().__init__(log, [TOPICS.lifecycle])
        self.database, self.member = database, member
        self.commits: list[tuple[dict[TopicPartitionKey, int], bool]] = []

    def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        suppressed = mail.suppression(self.database, self.member) is not None
        self.commits.append((dict(offsets), suppressed))
        super().commit(offsets)


def send(log: InProcessPublisher, *items: tuple[str, Record]) -> None:
    for topic, record in items:
        log.publish(topic, record.key, record.headers, record.value)
    log.flush()


def test_a_lane_waits_out_a_database_fault_and_commits_only_after_suppressing(
    service_store: StoreFactory, running: list[Running]
) -> None:
    from eventsourcing.persistence import OperationalError

    database = service_store("mail")
    handler = mail.MailHandler(database, TOPICS, GatedMailer(), keyring=KEYRING)
    failing = FailingMail(handler.withdrawal_mail, OperationalError("connection lost"), 2)
    log, member = InProcessPublisher(), uuid.uuid4()
    source = CommitRecordingSource(log, database, member)
    send(log, withdrawal(TOPICS, member, 2))
    started(running, Running(SuppressionLane(failing, source, retry=FAST, poll_timeout_s=0.05)))
    wait_until(lambda: len(source.commits) == 1, "the lane committed")
    assert failing.calls == 3  # two waits, then suppressed
    # Committed once, past the withdrawal, and only once the suppression was stored.
    assert source.commits == [({(TOPICS.lifecycle, 0): 1}, True)]


def test_a_lane_that_fails_otherwise_passes_the_poll_over_to_the_kit(
    service_store: StoreFactory, running: list[Running]
) -> None:
    database = service_store("mail")
    handler = mail.MailHandler(database, TOPICS, GatedMailer(), keyring=KEYRING)
    failing = FailingMail(handler.withdrawal_mail, RuntimeError("a bug"), 1)
    log, member, later = InProcessPublisher(), uuid.uuid4(), uuid.uuid4()
    source = CommitRecordingSource(log, database, member)
    send(log, withdrawal(TOPICS, member, 2))
    with capture_logs() as logs:
        started(running, Running(SuppressionLane(failing, source, retry=FAST, poll_timeout_s=0.05)))
        wait_until(lambda: len(source.commits) == 1, "passed over")
        send(log, withdrawal(TOPICS, later, 2))
        wait_until(lambda: mail.suppression(database, later) is not None, "the next suppressed")
    # Passed over (its offset committed, not suppressed): the kit's own step 1 suppresses it.
    assert source.commits[0] == ({(TOPICS.lifecycle, 0): 1}, False)
    assert mail.suppression(database, member) is None
    assert [e["step"] for e in logs if e["event"] == "mail_suppression.failed"] == ["suppress"]


def test_a_profile_arriving_after_the_lane_suppressed_but_before_the_withdrawal_is_mailed(
    service_store: StoreFactory, running: list[Running]
) -> None:
    """Two topics keep no order: the lane may suppress before the service's own consumer has
    even read the member's profile; the address is still kept until the withdrawal is handled,
    mailed, and erased with the confirmation (refused, it would be awaited for ever)."""
    database = service_store("mail")
    mailer = GatedMailer()
    mailer.gate.set()
    handler = mail.MailHandler(database, TOPICS, mailer, keyring=KEYRING)
    lane_log = InProcessPublisher()  # the lifecycle topic as the lane's group reads it
    source = InProcessSource(lane_log, [TOPICS.lifecycle])
    started(running, Running(SuppressionLane(handler.withdrawal_mail, source, poll_timeout_s=0.05)))
    service = started(
        running,
        InProcessService("mail", database, handler, mail.subscribed_topics(TOPICS), retry=FAST),
    )
    member = uuid.uuid4()
    send(lane_log, withdrawal(TOPICS, member, 2))
    wait_until(lambda: mail.suppression(database, member) is not None, "the lane suppressed")
    service.send(profile(TOPICS, member, 1, "ahead@example.jp", "Ahead"))
    wait_until(service.settled)
    assert mailer.begun == []
    service.send(withdrawal(TOPICS, member, 2))
    wait_until(service.settled)
    assert mailer.begun == ["ahead@example.jp"]
    state = mail.suppression(database, member)
    assert state is not None and state["confirmed_at"] is not None
    assert mail.held_rows(database, member) == 0
