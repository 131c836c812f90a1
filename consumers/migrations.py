"""Schema migrations of the consumer kit and of the three reference services.

The kit's own tables (`processed_events` marks and the `outbox`) are the `consumer-kit`
component; an adopting team lists it beside its own component in its own schema, runs
`migrate(database, [kit_component(), my_component])` before its consumers start (or
`lifecycle migrate --service NAME` for the reference services), and checks both at start
(`lifecycle.migrator.check`). Where the kit shares a schema with other tables (the erasure
process, in the lifecycle database) its tables carry a prefix, and the component's name says
which (`consumer-kit:erasure_`), so two kits in one schema keep their versions apart.

Released migrations never change; see lifecycle.migrations for how to add one.
"""

from __future__ import annotations

from lifecycle.migrator import Component, Migration
from lifecycle.storage import Cursor, Database

KIT = "consumer-kit"


def kit_component(table_prefix: str = "") -> Component:
    """The kit's tables, `<prefix>processed_events` and `<prefix>outbox`."""

    def first_release(cursor: Cursor, db: Database) -> None:
        serial = db.dialect.serial_primary_key
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {db.table(f'{table_prefix}processed_events')} ("
            "ce_id TEXT PRIMARY KEY, "
            f"processed_at {db.timestamp_type} NOT NULL DEFAULT {db.now})"
        )
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {db.table(f'{table_prefix}outbox')} ("
            f"id {serial}, topic TEXT NOT NULL, record_key {db.blob_type} NOT NULL, "
            f"headers TEXT NOT NULL, record_value {db.blob_type}, "
            f"created_at {db.timestamp_type} NOT NULL DEFAULT {db.now})"
        )

    def marks_by_time(cursor: Cursor, db: Database) -> None:
        # The retention sweep (`ConsumerStore.forget_processed`) deletes the oldest marks.
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {table_prefix}processed_events_by_time "
            f"ON {db.table(f'{table_prefix}processed_events')} (processed_at)"
        )

    name = f"{KIT}:{table_prefix}" if table_prefix else KIT
    return Component(
        name,
        (
            Migration(1, "first release: marks and outbox", first_release),
            Migration(2, "marks by time, for their retention", marks_by_time),
        ),
    )


def _key_locks(cursor: Cursor, db: Database) -> None:
    """What `lifecycle.storage.lock_key` needs (SQLite: the table it writes to)."""
    for statement in db.dialect.lock_table_statements():
        cursor.execute(statement)


def _scout(cursor: Cursor, db: Database) -> None:
    _key_locks(cursor, db)
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {db.table('scouts')} ("
        "account_id TEXT NOT NULL, scout_id TEXT NOT NULL, company_id TEXT NOT NULL, "
        f"job_id TEXT NOT NULL, received_at {db.timestamp_type} NOT NULL, "
        "PRIMARY KEY (account_id, scout_id))"
    )
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {db.table('withdrawn_accounts')} ("
        "account_id TEXT PRIMARY KEY, "
        f"withdrawn_at {db.timestamp_type} NOT NULL DEFAULT {db.now})"
    )


def _chat(cursor: Cursor, db: Database) -> None:
    _key_locks(cursor, db)
    ts, now = db.timestamp_type, db.now
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {db.table('chat_threads')} ("
        "thread_id TEXT PRIMARY KEY, account_id TEXT NOT NULL, company_id TEXT NOT NULL, "
        f"opened_at {ts} NOT NULL DEFAULT {now})"
    )
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {db.table('chat_messages')} ("
        "message_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, account_id TEXT NOT NULL, "
        f"sender TEXT NOT NULL, body TEXT NOT NULL, sent_at {ts} NOT NULL DEFAULT {now})"
    )
    for table in ("chat_threads", "chat_messages"):
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {table}_by_account ON {db.table(table)} (account_id)"
        )
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {db.table('withdrawn_accounts')} ("
        f"account_id TEXT PRIMARY KEY, withdrawn_at {ts} NOT NULL DEFAULT {now})"
    )


def _mail(cursor: Cursor, db: Database) -> None:
    _key_locks(cursor, db)
    ts, now = db.timestamp_type, db.now
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {db.table('contacts')} ("
        "account_id TEXT PRIMARY KEY, email TEXT NOT NULL, display_name TEXT NOT NULL, "
        f"notifications TEXT NOT NULL, updated_at {ts} NOT NULL DEFAULT {now})"
    )
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {db.table('mail_outbox')} ("
        "notice_id TEXT PRIMARY KEY, account_id TEXT NOT NULL, kind TEXT NOT NULL, "
        f"subject TEXT NOT NULL, body TEXT NOT NULL, queued_at {ts} NOT NULL DEFAULT {now})"
    )
    cursor.execute(
        "CREATE INDEX IF NOT EXISTS mail_outbox_by_account "
        f"ON {db.table('mail_outbox')} (account_id)"
    )
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {db.table('suppressions')} ("
        "account_id TEXT PRIMARY KEY, withdrawal_ce_id TEXT NOT NULL, "
        "rows_removed INTEGER NOT NULL DEFAULT 0, "
        "awaiting_address INTEGER NOT NULL DEFAULT 0, "
        f"confirmation_message_id TEXT, confirmation_sent_at {ts}, confirmed_at {ts}, "
        f"suppressed_at {ts} NOT NULL DEFAULT {now})"
    )


def _sealed_keys(cursor: Cursor, db: Database) -> None:
    """The sealed store's per-account keys (consumers.sealed): mail's contacts, chat's
    messages."""
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {db.table('sealed_keys')} (account_id TEXT PRIMARY KEY, "
        f"wrapped_key {db.blob_type} NOT NULL, "
        f"created_at {db.timestamp_type} NOT NULL DEFAULT {db.now})"
    )


def _mail_notices(cursor: Cursor, db: Database) -> None:
    """What became of each notice no longer queued (sent, dropped, suppressed), with dates:
    the member's export lists it. Subject and body sealed like the contact; erased with it."""
    ts = db.timestamp_type
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {db.table('mail_notices')} ("
        "notice_id TEXT PRIMARY KEY, account_id TEXT NOT NULL, kind TEXT NOT NULL, "
        "subject TEXT NOT NULL, body TEXT NOT NULL, status TEXT NOT NULL, "
        f"queued_at {ts} NOT NULL, sent_at {ts} NOT NULL)"
    )
    cursor.execute(
        "CREATE INDEX IF NOT EXISTS mail_notices_by_account "
        f"ON {db.table('mail_notices')} (account_id)"
    )


SERVICES: dict[str, Component] = {
    "scout": Component("scout", (Migration(1, "first release: scouts", _scout),)),
    "chat": Component(
        "chat",
        (
            Migration(1, "first release: threads and messages", _chat),
            Migration(2, "sealed keys of the messages", _sealed_keys),
        ),
    ),
    "mail": Component(
        "mail",
        (
            Migration(1, "first release: contacts, notices", _mail),
            Migration(2, "sealed keys of the contacts", _sealed_keys),
            Migration(3, "notices sent, dropped or suppressed, for exports", _mail_notices),
        ),
    ),
}


def service_components(name: str) -> list[Component]:
    """Everything in a reference service's store: the kit's tables and the service's own."""
    return [kit_component(), SERVICES[name]]
