"""The chat service: threads and messages per account, gone on withdrawal, exported on
request (`ChatSectionV1`).

`open_thread` and `post_message` are the minimal write path (members chatting with companies);
both refuse a withdrawn account. A message's body is free text a member or a company wrote:
it is stored sealed under the account's key (`consumers.sealed`, table `sealed_keys`), which
the erasure destroys with the rows, so no copy of it (a page, a WAL segment, a backup) stays
readable. `withdrawn_accounts` (the kit's tombstones) keeps the account id only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

from consumers.handler import ExportFailedError
from consumers.member_data import MemberDataHandler, Tombstones
from consumers.sealed import SealedValues
from consumers.store import count_rows, utc
from lifecycle.keyring import Keyring
from lifecycle.storage import Cursor, Database
from schemas.contract import TopicNames
from schemas.data_export import ChatMessageV1, ChatSectionV1, ChatThreadV1

SERVICE = "chat"
# The sealed column (consumers.sealed binds each value to its column).
MESSAGE_BODY = "chat_messages.body"


def subscribed_topics(topics: TopicNames) -> list[str]:
    return list(topics.inputs_of(SERVICE))


class ChatHandler(MemberDataHandler):
    service = SERVICE
    personal_tables = ("chat_messages", "chat_threads")

    def __init__(self, database: Database, topics: TopicNames, *, keyring: Keyring) -> None:
        self.bodies = SealedValues(database, keyring)  # what opens the messages' bodies
        super().__init__(database, topics, self.bodies)

    def export(self, cursor: Cursor, account_id: UUID) -> ChatSectionV1:
        """The account's threads, oldest first, each with its messages, oldest first (their
        bodies opened with the account's key)."""
        db, account = self.database, str(account_id)
        threads = cursor.execute(
            f"SELECT thread_id, company_id, opened_at FROM {db.table('chat_threads')} "
            "WHERE account_id = %s ORDER BY opened_at, thread_id",
            (account,),
        ).fetchall()
        messages = cursor.execute(
            f"SELECT message_id, thread_id, sender, body, sent_at FROM {db.table('chat_messages')} "
            "WHERE account_id = %s ORDER BY sent_at, message_id",
            (account,),
        ).fetchall()
        key = self.bodies.keys_for(cursor, [account_id]).get(account_id)
        by_thread: dict[str, list[ChatMessageV1]] = {thread_id: [] for thread_id, *_ in threads}
        for message_id, thread_id, sender, stored, sent_at in messages:
            body = self.bodies.open(key, account_id, MESSAGE_BODY, stored)
            if body is None:
                raise ExportFailedError("internal_error")  # a body its key no longer opens
            by_thread.setdefault(thread_id, []).append(
                ChatMessageV1(message_id=message_id, sender=sender, body=body, sent_at=utc(sent_at))
            )
        return ChatSectionV1(
            threads=[
                ChatThreadV1(
                    thread_id=thread_id,
                    company_id=company_id,
                    opened_at=utc(opened_at),
                    messages=by_thread[thread_id],
                )
                for thread_id, company_id, opened_at in threads
            ]
        )


# The write path


def open_thread(database: Database, account_id: UUID, company_id: str) -> str:
    thread_id = str(uuid4())
    with database.transaction() as cursor:
        Tombstones(database, SERVICE).check_not_withdrawn(cursor, account_id)
        cursor.execute(
            f"INSERT INTO {database.table('chat_threads')} "
            "(thread_id, account_id, company_id, opened_at) VALUES (%s, %s, %s, %s)",
            (thread_id, str(account_id), company_id, database.dialect.timestamp(datetime.now(UTC))),
        )
    return thread_id


def post_message(
    database: Database,
    account_id: UUID,
    thread_id: str,
    sender: str,
    body: str,
    *,
    keyring: Keyring,
) -> str:
    """Keep a message, its body sealed under the account's key (the service's `keyring`)."""
    message_id = str(uuid4())
    sealed = SealedValues(database, keyring)
    with database.transaction() as cursor:
        Tombstones(database, SERVICE).check_not_withdrawn(cursor, account_id)
        found = cursor.execute(
            f"SELECT 1 FROM {database.table('chat_threads')} "
            "WHERE thread_id = %s AND account_id = %s",
            (thread_id, str(account_id)),
        ).fetchone()
        if found is None:
            raise LookupError("thread_not_found")
        key = sealed.keys_for(cursor, [account_id], create=True)[account_id]
        cursor.execute(
            f"INSERT INTO {database.table('chat_messages')} "
            "(message_id, thread_id, account_id, sender, body, sent_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (
                message_id,
                thread_id,
                str(account_id),
                sender,
                sealed.seal(key, account_id, MESSAGE_BODY, body),
                database.dialect.timestamp(datetime.now(UTC)),  # to the microsecond: kept in order
            ),
        )
    return message_id


def held_rows(database: Database, account_id: UUID) -> int:
    return count_rows(database, ("chat_threads", "chat_messages"), account_id)
