"""The scout, chat and mail services on the kit, in-process, on SQLite and the real PostgreSQL.

Mail goes through a real SMTP server (aiosmtpd on loopback).
"""

from __future__ import annotations

import os
import uuid
from email.message import EmailMessage

import pytest
from eventsourcing.persistence import OperationalError
from support import (
    InProcessService,
    Running,
    SmtpSink,
    StoreFactory,
    profile,
    profile_tombstone,
    purged,
    scout_received,
    smtp_sink,
    started,
    wait_until,
    withdrawal,
)

from consumers import chat, mail, notices, scout
from consumers.faults import RetryPolicy
from consumers.handler import AccountWithdrawnError, Handler
from consumers.mailer import CONFIRMATION_KIND, KIND_HEADER, Mailer, SmtpMailer, message_id_for
from lifecycle.keyring import MasterKeyring
from lifecycle.storage import Cursor, Database
from schemas.contract import (
    Envelope,
    ErasureConfirmedV2,
    TopicNames,
    decode_record,
    erasure_receipt_id,
    lifecycle_event_id,
)

TOPICS = TopicNames()
FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)

# The mail service's keyring for its sealed contacts (a master key of its own, in memory).
KEYRING = MasterKeyring(os.urandom(32))


# Running a service


class Service(InProcessService):
    def __init__(self, name: str, database: Database, handler: Handler, topics: list[str]) -> None:
        super().__init__(name, database, handler, topics, retry=FAST)

    def confirmations(self) -> list[ErasureConfirmedV2]:
        found: list[ErasureConfirmedV2] = []
        items = [
            item
            for topic in TOPICS.confirmations.values()
            for item in self.log.read(topic, max_records=1000)
        ]
        for item in items:
            envelope: Envelope = decode_record(item.record.headers, item.record.value)
            assert isinstance(envelope.data, ErasureConfirmedV2)
            found.append(envelope.data)
        return found


# Scout


def test_scout_keeps_scouts_erases_them_on_withdrawal_and_refuses_new_ones(
    service_store: StoreFactory, running: list[Running]
) -> None:
    database = service_store("scout")
    service = started(
        running,
        Service("scout", database, scout.ScoutHandler(database, TOPICS), [TOPICS.lifecycle]),
    )
    member, other = uuid.uuid4(), uuid.uuid4()
    service.send(
        scout_received(TOPICS, member, 2, "s1"),
        scout_received(TOPICS, member, 3, "s2"),
        scout_received(TOPICS, member, 4, "s2"),  # same scout again under a new event: kept once
        scout_received(TOPICS, other, 2, "s1"),
    )
    wait_until(service.settled)
    assert scout.scouts_of(database, member) == ["s1", "s2"]

    service.send(withdrawal(TOPICS, member, 5), scout_received(TOPICS, member, 6, "s3"))
    wait_until(service.settled)
    assert scout.scouts_of(database, member) == []
    assert scout.is_withdrawn(database, member)
    assert service.consumer.stats.outcomes["refused"] == 1
    [confirmation] = service.confirmations()
    assert (confirmation.account_id, confirmation.service, confirmation.rows_removed) == (
        member,
        "scout",
        2,
    )
    assert scout.scouts_of(database, other) == ["s1"]

    service.send(purged(TOPICS, member, 7))
    wait_until(service.settled)
    assert len(service.confirmations()) == 1  # Purged erases again but confirms nothing new


# Chat


def test_chat_deletes_threads_and_messages_on_withdrawal_and_refuses_new_ones(
    service_store: StoreFactory, running: list[Running]
) -> None:
    database = service_store("chat")
    service = started(
        running,
        Service(
            "chat",
            database,
            chat.ChatHandler(database, TOPICS, keyring=KEYRING),
            [TOPICS.lifecycle],
        ),
    )
    member, other = uuid.uuid4(), uuid.uuid4()
    first = chat.open_thread(database, member, "company-1")
    second = chat.open_thread(database, member, "company-2")
    chat.post_message(
        database, member, first, "member", "Looking forward to the interview", keyring=KEYRING
    )
    chat.post_message(database, member, first, "company", "See you on Monday", keyring=KEYRING)
    chat.post_message(
        database, member, second, "company", "Would you like to talk?", keyring=KEYRING
    )
    kept = chat.open_thread(database, other, "company-1")
    assert chat.held_rows(database, member) == 5
    with database.transaction(commit=False) as cursor:  # free text, stored sealed only
        bodies = cursor.execute(f"SELECT body FROM {database.table('chat_messages')}").fetchall()
        keys = cursor.execute(f"SELECT count(*) FROM {database.table('sealed_keys')}").fetchone()
    assert keys == (1,)
    assert all(body.startswith("sealed:v1:") for (body,) in bodies)
    assert not any("interview" in body or "Monday" in body for (body,) in bodies)

    service.send(withdrawal(TOPICS, member, 2))
    wait_until(service.settled)
    assert chat.held_rows(database, member) == 0
    with database.transaction(commit=False) as cursor:  # its key destroyed with the rows
        assert not cursor.execute(
            f"SELECT 1 FROM {database.table('sealed_keys')} WHERE account_id = %s", (str(member),)
        ).fetchone()
    [confirmation] = service.confirmations()
    assert confirmation.rows_removed == 5
    with pytest.raises(AccountWithdrawnError):
        chat.open_thread(database, member, "company-3")
    with pytest.raises(AccountWithdrawnError):
        chat.post_message(
            database, member, first, "company", "Are you still there?", keyring=KEYRING
        )
    chat.post_message(database, other, kept, "member", "Hello", keyring=KEYRING)
    assert chat.held_rows(database, other) == 2


# Mail


def mail_service(service_store: StoreFactory, running: list[Running], mailer: Mailer) -> Service:
    database = service_store("mail")
    handler = mail.MailHandler(database, TOPICS, mailer, keyring=KEYRING)
    return started(running, Service("mail", database, handler, mail.subscribed_topics(TOPICS)))


def sent_after(smtp: SmtpSink, count: int) -> list[EmailMessage]:
    return [received.message for received in smtp.messages()[count:]]


def test_mail_contacts_are_sealed_and_their_key_goes_with_the_erasure(
    service_store: StoreFactory, running: list[Running], smtp: SmtpSink
) -> None:
    service = mail_service(service_store, running, SmtpMailer(smtp.host, smtp.port))
    database = service.database
    member = uuid.uuid4()
    address, name = f"sealed.{member.hex[:6]}@example.jp", "Sealy Contactson"
    service.send(profile(TOPICS, member, 1, address, name))
    wait_until(lambda: mail.contact_known(database, member))

    def stored() -> tuple[list[tuple[object, ...]], int]:
        with database.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT email, display_name FROM {database.table('contacts')}"
            ).fetchall()
            keys = cursor.execute(
                f"SELECT count(*) FROM {database.table('sealed_keys')} WHERE account_id = %s",
                (str(member),),
            ).fetchone()
        return rows, int(keys[0]) if keys else 0

    rows, keys = stored()
    assert keys == 1
    assert all(str(v).startswith("sealed:v1:") for row in rows for v in row)
    assert address not in repr(rows) and name not in repr(rows)

    service.send(withdrawal(TOPICS, member, 2))
    wait_until(lambda: len(service.confirmations()) == 1)

    assert stored() == ([], 0)
    assert [r.recipients for r in smtp.messages()] == [[address]]  # opened for the one mail


def test_mail_withdrawal_stops_every_notice_and_sends_one_confirmation(
    service_store: StoreFactory, running: list[Running], smtp: SmtpSink
) -> None:
    mailer = SmtpMailer(smtp.host, smtp.port)
    service = mail_service(service_store, running, mailer)
    database = service.database
    member, other = uuid.uuid4(), uuid.uuid4()
    address, name = f"hanako.{member.hex[:6]}@example.jp", "Hanako Yamada"
    service.send(
        profile(TOPICS, member, 1, address, name),
        profile(TOPICS, other, 1, "other@example.jp", "Ken"),
    )
    wait_until(lambda: mail.contact_known(database, member) and mail.contact_known(database, other))

    notices.queue_notice(database, member, kind="notices", subject="New postings", body="3 new")
    notices.queue_notice(database, other, kind="notices", subject="New postings", body="1 new")
    assert notices.deliver_queued(database, mailer, KEYRING) == 2
    assert sorted(r.recipients[0] for r in smtp.messages()) == sorted(["other@example.jp", address])
    before = len(smtp.messages())

    notices.queue_notice(database, member, kind="notices", subject="Reminder", body="Come back")
    notices.queue_notice(database, member, kind="scouts", subject="A scout", body="Company X")
    service.send(withdrawal(TOPICS, member, 4))
    wait_until(lambda: len(service.confirmations()) == 1)

    [confirmation] = sent_after(smtp, before)
    assert confirmation["To"].addresses[0].addr_spec == address
    assert confirmation["Message-ID"] == message_id_for(lifecycle_event_id(member, 4))
    assert confirmation[KIND_HEADER] == CONFIRMATION_KIND
    assert name in confirmation.get_content()
    # The mail names the signed erasure receipt by its id, derived from the account id alone.
    assert str(erasure_receipt_id(member)) in confirmation.get_content()
    [confirmed] = service.confirmations()
    # The address, the 2 notices queued and the record of the one sent.
    assert (confirmed.service, confirmed.rows_removed) == ("mail", 4)
    assert address not in confirmed.model_dump_json()
    assert mail.held_rows(database, member) == 0
    state = mail.suppression(database, member)
    assert state is not None
    assert state["confirmation_message_id"] == confirmation["Message-ID"]

    # Nothing for the member any more: no queueing, no delivery, no address kept again.
    with pytest.raises(AccountWithdrawnError):
        notices.queue_notice(database, member, kind="notices", subject="Late", body="late")
    notices.queue_notice(database, other, kind="notices", subject="Still here", body="yes")
    assert notices.deliver_queued(database, mailer, KEYRING) == 1
    service.send(profile(TOPICS, member, 5, address, name), withdrawal(TOPICS, member, 4))
    wait_until(service.settled)
    assert not mail.contact_known(database, member)
    recipients = [r.recipients[0] for r in smtp.messages()[before:]]
    assert recipients == [address, "other@example.jp"]

    service.send(profile_tombstone(TOPICS, other, 2))
    wait_until(lambda: not mail.contact_known(database, other))
    wait_until(lambda: service.consumer.stats.outcomes.get("contact_erased") == 1)
    service.send(profile_tombstone(TOPICS, other, 3))  # nothing left to erase
    wait_until(lambda: service.consumer.stats.outcomes.get("ignored", 0) >= 1)
    assert service.consumer.stats.outcomes.get("contact_erased") == 1


def test_mail_withdrawal_before_the_profile_waits_for_the_address_and_never_stores_it(
    service_store: StoreFactory, running: list[Running], smtp: SmtpSink
) -> None:
    service = mail_service(service_store, running, SmtpMailer(smtp.host, smtp.port))
    member = uuid.uuid4()
    address = f"late.{member.hex[:6]}@example.jp"
    service.send(withdrawal(TOPICS, member, 3))
    wait_until(service.settled)
    state = mail.suppression(service.database, member)
    assert state is not None and state["awaiting_address"]
    assert smtp.messages() == []
    assert service.confirmations() == []  # not confirmed until the member got the mail

    service.send(profile(TOPICS, member, 1, address, "Late Profile"))
    wait_until(lambda: len(service.confirmations()) == 1)
    [received] = smtp.messages()
    assert received.recipients == [address]
    assert received.message["Message-ID"] == message_id_for(lifecycle_event_id(member, 3))
    assert not mail.contact_known(service.database, member)
    assert mail.held_rows(service.database, member) == 0


def test_notices_of_a_kind_switched_off_are_dropped(
    service_store: StoreFactory, running: list[Running], smtp: SmtpSink
) -> None:
    mailer = SmtpMailer(smtp.host, smtp.port)
    service = mail_service(service_store, running, mailer)
    member = uuid.uuid4()
    choices = {"scouts": True, "recommendations": False, "notices": True}
    service.send(profile(TOPICS, member, 1, "quiet@example.jp", "Quiet", choices))
    wait_until(lambda: mail.contact_known(service.database, member))
    notices.queue_notice(service.database, member, kind="recommendations", subject="r", body="r")
    notices.queue_notice(service.database, member, kind="scouts", subject="s", body="s")
    assert notices.deliver_queued(service.database, mailer, KEYRING) == 1
    assert [r.message["Subject"] for r in smtp.messages()] == ["s"]
    # The address and what became of each notice (dropped, sent), for the member's export.
    assert mail.held_rows(service.database, member) == 3


class FlakyMailer:
    """Fails as an unreachable or crashing SMTP path would, then sends for real."""

    def __init__(self, inner: SmtpMailer, *, refuse: int = 0, crash_after_send: int = 0):
        self.inner = inner
        self.refuse = refuse
        self.crash_after_send = crash_after_send

    def send(self, message: EmailMessage, recipient: str) -> None:
        if self.refuse:
            self.refuse -= 1
            raise ConnectionRefusedError()
        self.inner.send(message, recipient)
        if self.crash_after_send:
            self.crash_after_send -= 1
            raise TimeoutError()


def test_an_unreachable_smtp_server_is_retried_and_mails_once(
    service_store: StoreFactory, running: list[Running], smtp: SmtpSink
) -> None:
    flaky = FlakyMailer(SmtpMailer(smtp.host, smtp.port), refuse=2)
    service = mail_service(service_store, running, flaky)
    member = uuid.uuid4()
    service.send(
        profile(TOPICS, member, 1, "retry@example.jp", "Retry"), withdrawal(TOPICS, member, 2)
    )
    wait_until(lambda: len(service.confirmations()) == 1)
    assert service.consumer.stats.retries == 2
    assert len(smtp.messages()) == 1


def test_the_documented_window_a_lost_send_record_mails_again_with_the_same_message_id(
    service_store: StoreFactory, running: list[Running], smtp: SmtpSink
) -> None:
    # The SMTP server accepted the mail but the send was not recorded (here: the reply was
    # lost). The retry sends again, with the same Message-ID, so the copy can be dropped.
    flaky = FlakyMailer(SmtpMailer(smtp.host, smtp.port), crash_after_send=1)
    service = mail_service(service_store, running, flaky)
    member = uuid.uuid4()
    service.send(
        profile(TOPICS, member, 1, "window@example.jp", "Window"), withdrawal(TOPICS, member, 2)
    )
    wait_until(lambda: len(service.confirmations()) == 1)
    ids = {r.message["Message-ID"] for r in smtp.messages()}
    assert len(smtp.messages()) == 2
    assert ids == {message_id_for(lifecycle_event_id(member, 2))}
    assert len(service.confirmations()) == 1


class CutAfterSend:
    """Sends, then the store's next transaction fails as on a connection cut mid-flight."""

    def __init__(self, inner: Mailer, database: Database) -> None:
        self.inner = inner
        self.database = database

    def send(self, message: EmailMessage, recipient: str) -> None:
        self.inner.send(message, recipient)
        original = self.database.transaction

        def cut(*args: object, **kwargs: object) -> object:
            setattr(self.database, "transaction", original)  # noqa: B010 - once
            raise OperationalError("server closed the connection unexpectedly")

        setattr(self.database, "transaction", cut)  # noqa: B010 - a test seam


def test_a_send_whose_record_failed_on_a_cut_connection_is_not_mailed_again(
    service_store: StoreFactory, running: list[Running], smtp: SmtpSink
) -> None:
    database = service_store("mail")
    mailer = CutAfterSend(SmtpMailer(smtp.host, smtp.port), database)
    handler = mail.MailHandler(database, TOPICS, mailer, keyring=KEYRING)
    service = started(running, Service("mail", database, handler, mail.subscribed_topics(TOPICS)))
    member = uuid.uuid4()
    service.send(profile(TOPICS, member, 1, "cut@example.jp", "Cut"), withdrawal(TOPICS, member, 2))
    wait_until(lambda: len(service.confirmations()) == 1)
    assert len(smtp.messages()) == 1
    assert service.consumer.stats.dead_lettered == 0
    assert service.consumer.stats.waits >= 1
    recorded = mail.suppression(database, member)
    assert recorded is not None
    assert recorded["confirmation_message_id"] == message_id_for(lifecycle_event_id(member, 2))


def test_a_send_recorded_in_a_transaction_that_failed_is_not_mailed_again(
    service_store: StoreFactory, running: list[Running], smtp: SmtpSink
) -> None:
    # The send is recorded in the kit's transaction, which then fails (a connection cut after
    # the record's statement): the handler still holds the send, so the retry records it
    # without mailing again.
    database = service_store("mail")
    handler = mail.MailHandler(database, TOPICS, SmtpMailer(smtp.host, smtp.port), keyring=KEYRING)
    record = handler.withdrawal_mail.record
    cuts: list[list[uuid.UUID]] = []

    def record_then_cut(cursor: Cursor) -> list[uuid.UUID]:
        recorded = record(cursor)
        if recorded and not cuts:
            cuts.append(recorded)
            raise OperationalError("server closed the connection unexpectedly")
        return recorded

    setattr(handler.withdrawal_mail, "record", record_then_cut)  # noqa: B010 - a test seam
    service = started(running, Service("mail", database, handler, mail.subscribed_topics(TOPICS)))
    member = uuid.uuid4()
    service.send(profile(TOPICS, member, 1, "rec@example.jp", "Rec"), withdrawal(TOPICS, member, 2))
    wait_until(lambda: len(service.confirmations()) == 1)
    assert cuts == [[member]]
    assert len(smtp.messages()) == 1
    recorded = mail.suppression(database, member)
    assert recorded is not None
    assert recorded["confirmation_message_id"] == message_id_for(lifecycle_event_id(member, 2))
    assert handler.withdrawal_mail.unrecorded() == []


@pytest.mark.parametrize("smtputf8", [True, False])
def test_a_member_with_an_internationalised_address_is_erased_and_confirmed(
    service_store: StoreFactory, running: list[Running], smtputf8: bool
) -> None:
    # Registration accepts RFC 6532 addresses: mailed over SMTPUTF8, or, through a relay
    # without it, refused as a recipient; either way the erasure is confirmed.
    with smtp_sink(smtputf8=smtputf8) as smtp:
        service = mail_service(service_store, running, SmtpMailer(smtp.host, smtp.port))
        member = uuid.uuid4()
        service.send(
            profile(TOPICS, member, 1, "花子@例え.jp", "山田 花子"), withdrawal(TOPICS, member, 2)
        )
        wait_until(lambda: len(service.confirmations()) == 1)
        assert mail.held_rows(service.database, member) == 0
        assert not mail.contact_known(service.database, member)
        assert len(smtp.messages()) == (1 if smtputf8 else 0)
        assert service.consumer.stats.dead_lettered == 0
