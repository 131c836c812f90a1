"""The chat service: threads and messages per account, gone on withdrawal.

`open_thread` and `post_message` are the minimal write path (members chatting with companies);
both refuse a withdrawn account. A message's body is free text a member or a company wrote:
it is stored sealed under the account's key (`consumers.sealed`, table `sealed_keys`), which
the erasure destroys with the rows, so no copy of it (a page, a WAL segment, a backup) stays
readable. `withdrawn_accounts` (the kit's tombstones) keeps the account id only.
"""

from __future__ import annotations

from uuid import UUID, uuid4

from consumers.member_data import MemberDataHandler, Tombstones
from consumers.sealed import SealedValues
from consumers.store import count_rows
from lifecycle.keyring import Keyring
from lifecycle.storage import Database
from schemas.contract import TopicNames

SERVICE = "chat"
# The sealed column (consumers.sealed binds each value to its column).
MESSAGE_BODY = "chat_messages.body"


def subscribed_topics(topics: TopicNames) -> list[str]:
    return list(topics.inputs_of(SERVICE))


class ChatHandler(MemberDataHandler):
    service = SERVICE
    personal_tables = ("chat_messages", "chat_threads")

    def __init__(self, database: Database, topics: TopicNames, *, keyring: Keyring) -> None:
        super().__init__(database, topics, SealedValues(database, keyring))


# The write path


def open_thread(database: Database, account_id: UUID, company_id: str) -> str:
    thread_id = str(uuid4())
    with database.transaction() as cursor:
        Tombstones(database, SERVICE).check_not_withdrawn(cursor, account_id)
        cursor.execute(
            f"INSERT INTO {database.table('chat_threads')} (thread_id, account_id, company_id) "
            "VALUES (%s, %s, %s)",
            (thread_id, str(account_id), company_id),
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
            "(message_id, thread_id, account_id, sender, body) VALUES (%s, %s, %s, %s, %s)",
            (
                message_id,
                thread_id,
                str(account_id),
                sender,
                sealed.seal(key, account_id, MESSAGE_BODY, body),
            ),
        )
    return message_id


def held_rows(database: Database, account_id: UUID) -> int:
    return count_rows(database, ("chat_threads", "chat_messages"), account_id)
