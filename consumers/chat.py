"""The chat service's eraser: threads and messages per account, gone on withdrawal.

`open_thread` and `post_message` are the minimal write path (members chatting with companies);
both refuse a withdrawn account. `withdrawn_accounts` keeps the account id only.
"""

from __future__ import annotations

from uuid import UUID, uuid4

from consumers.handler import AccountWithdrawnError, Handler, HandlerResult, erase_on_withdrawal
from consumers.store import count_rows
from lifecycle.storage import Cursor, Database, lock_key
from schemas.contract import Envelope, TopicNames

SERVICE = "chat"


def subscribed_topics(topics: TopicNames) -> list[str]:
    return [topics.lifecycle]


class ChatHandler(Handler):
    personal_tables = ("chat_threads", "chat_messages")

    def __init__(self, database: Database, topics: TopicNames) -> None:
        self.database = database
        self.topics = topics

    def handle(self, envelope: Envelope, cursor: Cursor) -> HandlerResult:
        erased = erase_on_withdrawal(
            envelope.data,
            lambda account_id: erase(self.database, cursor, account_id),
            self.topics,
            SERVICE,
        )
        return erased or HandlerResult(outcome="ignored")


# The write path


def open_thread(database: Database, account_id: UUID, company_id: str) -> str:
    thread_id = str(uuid4())
    with database.transaction() as cursor:
        _check_not_withdrawn(database, cursor, account_id)
        cursor.execute(
            f"INSERT INTO {database.table('chat_threads')} (thread_id, account_id, company_id) "
            "VALUES (%s, %s, %s)",
            (thread_id, str(account_id), company_id),
        )
    return thread_id


def post_message(
    database: Database, account_id: UUID, thread_id: str, sender: str, body: str
) -> str:
    message_id = str(uuid4())
    with database.transaction() as cursor:
        _check_not_withdrawn(database, cursor, account_id)
        found = cursor.execute(
            f"SELECT 1 FROM {database.table('chat_threads')} "
            "WHERE thread_id = %s AND account_id = %s",
            (thread_id, str(account_id)),
        ).fetchone()
        if found is None:
            raise LookupError("thread_not_found")
        cursor.execute(
            f"INSERT INTO {database.table('chat_messages')} "
            "(message_id, thread_id, account_id, sender, body) VALUES (%s, %s, %s, %s, %s)",
            (message_id, thread_id, str(account_id), sender, body),
        )
    return message_id


def erase(database: Database, cursor: Cursor, account_id: UUID) -> int:
    account = str(account_id)
    lock_key(database, cursor, f"chat:{account}")
    cursor.execute(
        f"INSERT INTO {database.table('withdrawn_accounts')} (account_id) VALUES (%s) "
        "ON CONFLICT DO NOTHING",
        (account,),
    )
    removed = 0
    for table in ("chat_messages", "chat_threads"):
        cursor.execute(f"DELETE FROM {database.table(table)} WHERE account_id = %s", (account,))
        removed += cursor.rowcount
    return removed


def held_rows(database: Database, account_id: UUID) -> int:
    return count_rows(database, ("chat_threads", "chat_messages"), account_id)


def _check_not_withdrawn(database: Database, cursor: Cursor, account_id: UUID) -> None:
    lock_key(database, cursor, f"chat:{account_id}")
    row = cursor.execute(
        f"SELECT 1 FROM {database.table('withdrawn_accounts')} WHERE account_id = %s",
        (str(account_id),),
    ).fetchone()
    if row is not None:
        raise AccountWithdrawnError()
