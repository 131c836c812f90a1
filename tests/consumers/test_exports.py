"""The kit's request side: each reference service answers a data-export request with its section,
sealed to the export's key, on its own part topic; in-process, on SQLite and the real PostgreSQL.

The parts are opened here with the export's private key, as the lifecycle service does, and
compared field by field with what the test put in.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg
from pydantic import BaseModel
from support import (
    InProcessService,
    Running,
    SmtpSink,
    StoreFactory,
    profile,
    scout_received,
    started,
    wait_until,
    withdrawal,
)

from consumers import chat, mail, notices, scout
from consumers.faults import DLQ_ERROR_CODE, RetryPolicy
from consumers.handler import ExportFailedError, Handler
from consumers.mailer import SmtpMailer
from lifecycle.keyring import MasterKeyring
from lifecycle.sealed_box import new_key_pair, open_part
from lifecycle.storage import Cursor, Database
from schemas.contract import Envelope, Record, TopicNames, decode_record
from schemas.data_export import (
    ChatSectionV1,
    ExportPartV1,
    ExportRequestedV1,
    MailSectionV1,
    ScoutSectionV1,
    encode_export_requested,
)

TOPICS = TopicNames()
FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)
KEYRING = MasterKeyring(os.urandom(32))


class Service(InProcessService):
    """One service's consumer on its own thread, over an in-process log."""

    def __init__(self, name: str, database: Database, handler: Handler) -> None:
        super().__init__(name, database, handler, list(TOPICS.inputs_of(name)), retry=FAST)

    def parts(self) -> list[ExportPartV1]:
        found = []
        for item in self.log.read(TOPICS.export_part(self.name), max_records=1000):
            envelope: Envelope = decode_record(item.record.headers, item.record.value)
            assert isinstance(envelope.data, ExportPartV1)
            assert item.record.key == str(envelope.data.account_id).encode()
            found.append(envelope.data)
        return found


def request(
    account_id: UUID,
    public_key: str,
    *,
    services: list[str] | None = None,
    expires_in: timedelta = timedelta(days=7),
    retry: str | None = None,
    export_id: UUID | None = None,
) -> tuple[str, Record]:
    now = datetime.now(UTC)
    data = ExportRequestedV1(
        export_id=export_id or uuid.uuid4(),
        account_id=account_id,
        public_key=public_key,
        requested_at=now,
        expires_at=now + expires_in,
        services=services,
    )
    return TOPICS.export_requested, encode_export_requested(data, retry=retry)


def opened(private_key: bytes, parts: list[ExportPartV1], model: type[BaseModel]) -> BaseModel:
    """One answer's chunks, opened in order and validated against the section model."""
    assert len({part.part_id for part in parts}) == 1
    ordered = sorted(parts, key=lambda part: part.chunk)
    assert [part.chunk for part in ordered] == list(range(ordered[0].chunks))
    assert all(part.outcome == "sealed" for part in ordered)
    return model.model_validate_json(b"".join(open_part(private_key, p) for p in ordered))


# What each service exports


def test_scout_exports_every_scout_it_holds_sealed_to_the_request_key(
    service_store: StoreFactory, running: list[Running]
) -> None:
    database = service_store("scout")
    service = started(running, Service("scout", database, scout.ScoutHandler(database, TOPICS)))
    member, other = uuid.uuid4(), uuid.uuid4()
    scouts = [scout_received(TOPICS, member, n) for n in (2, 3)]
    service.send(*scouts, scout_received(TOPICS, other, 2))
    private, public = new_key_pair()
    service.send(request(member, public))
    wait_until(service.settled)

    section = opened(private, service.parts(), ScoutSectionV1)
    assert isinstance(section, ScoutSectionV1)
    sent = [decode_record(r.headers, r.value).data for _, r in scouts]
    assert [s.model_dump() for s in section.scouts] == [
        {
            "scout_id": s.scout_id,
            "company_id": s.company_id,
            "job_id": s.job_id,
            "received_at": s.received_at,
        }
        for s in sent
    ]
    assert service.consumer.stats.outcomes["exported"] == 1


def test_chat_exports_threads_and_messages_in_order_with_their_bodies_opened(
    service_store: StoreFactory, running: list[Running]
) -> None:
    database = service_store("chat")
    handler = chat.ChatHandler(database, TOPICS, keyring=KEYRING)
    service = started(running, Service("chat", database, handler))
    member = uuid.uuid4()
    first = chat.open_thread(database, member, "company-1")
    second = chat.open_thread(database, member, "company-2")
    written = [
        (first, "member", "Looking forward to the interview"),
        (first, "company", "See you on Monday"),
        (second, "company", "Would you like to talk?"),
        (first, "member", "面接を楽しみにしています"),
    ]
    ids = [chat.post_message(database, member, t, s, b, keyring=KEYRING) for t, s, b in written]
    private, public = new_key_pair()
    service.send(request(member, public))
    wait_until(service.settled)

    section = opened(private, service.parts(), ChatSectionV1)
    assert isinstance(section, ChatSectionV1)
    assert [(t.thread_id, t.company_id) for t in section.threads] == [
        (first, "company-1"),
        (second, "company-2"),
    ]
    got = [
        (t.thread_id, m.message_id, m.sender, m.body) for t in section.threads for m in t.messages
    ]
    assert got == [
        (first, ids[0], *written[0][1:]),
        (first, ids[1], *written[1][1:]),
        (first, ids[3], *written[3][1:]),
        (second, ids[2], *written[2][1:]),
    ]
    sent_at = [m.sent_at for m in section.threads[0].messages]
    assert sent_at == sorted(sent_at)


def test_mail_exports_the_contact_and_every_notice_with_its_fate_and_dates(
    service_store: StoreFactory, running: list[Running], smtp: SmtpSink
) -> None:
    database = service_store("mail")
    mailer = SmtpMailer(smtp.host, smtp.port)
    handler = mail.MailHandler(database, TOPICS, mailer, keyring=KEYRING)
    service = started(running, Service("mail", database, handler))
    member = uuid.uuid4()
    address, name = f"hanako.{member.hex[:6]}@example.jp", "山田 花子"
    choices = {"scouts": True, "recommendations": False, "notices": True}
    service.send(profile(TOPICS, member, 1, address, name, choices))
    wait_until(lambda: mail.contact_known(database, member))
    sent = notices.queue_notice(database, member, kind="scouts", subject="A scout", body="Acme")
    dropped = notices.queue_notice(database, member, kind="recommendations", subject="R", body="r")
    assert notices.deliver_queued(database, mailer, KEYRING) == 1
    queued = notices.queue_notice(database, member, kind="notices", subject="Later", body="soon")
    private, public = new_key_pair()
    service.send(request(member, public))
    wait_until(service.settled)

    section = opened(private, service.parts(), MailSectionV1)
    assert isinstance(section, MailSectionV1)
    assert section.contact is not None
    assert (section.contact.email, section.contact.display_name) == (address, name)
    assert section.contact.notifications == choices
    by_id = {n.notice_id: n for n in section.notices}
    assert set(by_id) == {sent, dropped, queued}
    assert (by_id[sent].status, by_id[sent].subject, by_id[sent].body) == (
        "sent",
        "A scout",
        "Acme",
    )
    assert by_id[dropped].status == "dropped"
    assert (by_id[queued].status, by_id[queued].sent_at) == ("queued", None)
    for notice in (by_id[sent], by_id[dropped]):
        assert notice.sent_at is not None and notice.sent_at >= notice.queued_at
    # The notices' history rests sealed: their subject and body are not readable in the store.
    with database.transaction(commit=False) as cursor:
        rows = cursor.execute(f"SELECT subject, body FROM {database.table('mail_notices')}")
        stored = [value for row in rows.fetchall() for value in row]
    assert stored and all(value.startswith("sealed:v1:") for value in stored)


# The kit's rules for requests


def test_a_repeated_request_is_answered_once_and_a_retry_again(
    service_store: StoreFactory, running: list[Running]
) -> None:
    database = service_store("scout")
    service = started(running, Service("scout", database, scout.ScoutHandler(database, TOPICS)))
    member, export_id = uuid.uuid4(), uuid.uuid4()
    private, public = new_key_pair()
    first = request(member, public, export_id=export_id)
    service.send(scout_received(TOPICS, member, 2), first, first)
    wait_until(service.settled)
    assert len(service.parts()) == 1
    assert service.consumer.stats.duplicates == 1

    service.send(request(member, public, export_id=export_id, retry="a1b2"))  # ops' retry
    wait_until(service.settled)
    answers = service.parts()
    assert len(answers) == 2 and answers[0].part_id != answers[1].part_id
    for part in answers:
        section = opened(private, [part], ScoutSectionV1)
        assert isinstance(section, ScoutSectionV1) and len(section.scouts) == 1


def test_requests_for_other_services_and_expired_ones_get_no_part(
    service_store: StoreFactory, running: list[Running]
) -> None:
    database = service_store("scout")
    service = started(running, Service("scout", database, scout.ScoutHandler(database, TOPICS)))
    member = uuid.uuid4()
    _, public = new_key_pair()
    service.send(
        request(member, public, services=["chat"]),
        request(member, public, expires_in=timedelta(seconds=-1)),
    )
    wait_until(service.settled)
    assert service.parts() == []
    assert service.consumer.stats.outcomes == {"ignored": 1, "export_expired": 1}


BAD_STATEMENT = "a statement the database refuses"


class FailingScouts(scout.ScoutHandler):
    """Its `export` fails as it is told, once each, then exports: raising an exception, or
    running a statement the database refuses (which aborts a PostgreSQL transaction)."""

    def __init__(self, database: Database, failures: list[Exception | str]) -> None:
        super().__init__(database, TOPICS)
        self.failures = failures

    def export(self, cursor: Cursor, account_id: UUID) -> ScoutSectionV1:
        cursor.execute(f"SELECT count(*) FROM {self.database.table('scouts')}")
        failure = self.failures.pop(0) if self.failures else None
        if failure == BAD_STATEMENT:
            table = self.database.table("scouts")  # every other column is NOT NULL
            cursor.execute(f"INSERT INTO {table} (account_id) VALUES (%s)", (str(account_id),))
        if isinstance(failure, Exception):
            raise failure
        return super().export(cursor, account_id)


def test_a_service_that_cannot_export_answers_failed_with_a_code(
    service_store: StoreFactory, running: list[Running]
) -> None:
    database = service_store("scout")
    failures: list[Exception | str] = [ExportFailedError("data_locked"), BAD_STATEMENT]
    service = started(running, Service("scout", database, FailingScouts(database, failures)))
    member, withdrawn = uuid.uuid4(), uuid.uuid4()
    _, public = new_key_pair()
    service.send(
        scout_received(TOPICS, member, 2),
        request(member, public),
        request(member, public),
        withdrawal(TOPICS, withdrawn, 3),
        request(withdrawn, public),
        request(member, public),
    )
    wait_until(service.settled)
    answers = service.parts()
    assert [(p.outcome, p.failure_code) for p in answers] == [
        ("failed", "data_locked"),
        ("failed", "internal_error"),
        ("failed", "account_withdrawn"),
        ("sealed", None),
    ]
    assert all(p.sealed is None for p in answers[:3])
    assert service.consumer.stats.dead_lettered == 0
    # The failed reads rolled back to their savepoint; the batch's other effects committed.
    assert scout.scouts_of(database, member) == ["scout-2"]


def test_a_database_fault_while_exporting_is_waited_out_and_the_part_sent_once(
    service_store: StoreFactory, running: list[Running], backend: str
) -> None:
    database = service_store("scout")
    cut: Exception | str = (
        psycopg.OperationalError("connection cut")
        if backend == "postgres"
        else sqlite3.OperationalError("database is locked")
    )
    service = started(running, Service("scout", database, FailingScouts(database, [cut, cut])))
    member = uuid.uuid4()
    private, public = new_key_pair()
    service.send(scout_received(TOPICS, member, 2), request(member, public))
    wait_until(service.settled)
    [part] = service.parts()
    section = opened(private, [part], ScoutSectionV1)
    assert isinstance(section, ScoutSectionV1) and len(section.scouts) == 1
    assert service.consumer.stats.waits >= 1
    assert service.consumer.stats.dead_lettered == 0


def test_a_request_no_key_agreement_is_possible_with_is_dead_lettered(
    service_store: StoreFactory, running: list[Running]
) -> None:
    database = service_store("scout")
    service = started(running, Service("scout", database, scout.ScoutHandler(database, TOPICS)))
    member = uuid.uuid4()
    low_order = "A" * 43  # the all-zero X25519 point: every shared secret is zero
    _, public = new_key_pair()
    service.send(request(member, low_order), request(member, public))
    wait_until(service.settled)
    assert [p.outcome for p in service.parts()] == ["sealed"]  # the next request is answered
    [letter] = service.log.read(TOPICS.dlq("scout"))
    assert dict(letter.record.headers)[DLQ_ERROR_CODE] == b"export_key_invalid"
    assert letter.record.value is None
