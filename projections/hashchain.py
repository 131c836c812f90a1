"""Tamper evidence: a hash chain over the stored events, in notification order.

Each link is SHA-256 over the previous link and the event exactly as stored: notification id,
originator id (its 16 bytes), version, topic and the stored state bytes. Crypto-shredding
destroys a key and never touches a stored event, so purges leave the chain intact; any edit,
deletion or insertion of a stored event does not.

The chain is a read model like the others (same tracking, same exactly-once batches).
`lifecycle.audit.verify` recomputes every link from the stored events and the stored previous
link, and names the first event that does not match. Someone able to rewrite both the events
and this table can forge a consistent chain: compare the head that verification reports (and
that the projection logs as `hashchain.head` after each batch) with a copy kept elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

from eventsourcing.persistence import Notification

from lifecycle.errors import ChainMismatchError
from lifecycle.logs import get_logger
from lifecycle.storage import Cursor
from projections.base import Item, ReadModel, as_uuid

GENESIS = bytes(32)
PAGE = 1000

log = get_logger(__name__)


def link(previous: bytes, notification: Notification) -> bytes:
    digest = hashlib.sha256(previous)
    topic = notification.topic.encode()
    state = bytes(notification.state)
    digest.update(notification.id.to_bytes(8, "big"))
    digest.update(as_uuid(notification.originator_id).bytes)
    digest.update(notification.originator_version.to_bytes(8, "big"))
    digest.update(len(topic).to_bytes(4, "big") + topic)
    digest.update(len(state).to_bytes(8, "big") + state)
    return digest.digest()


class HashChain(ReadModel):
    name = "hash_chain"
    tables = ("hash_chain",)
    decodes_events = False  # every event, as stored

    def create_statements(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table('hash_chain')} ("
            "notification_id BIGINT PRIMARY KEY, originator_id TEXT NOT NULL, "
            "originator_version BIGINT NOT NULL, link TEXT NOT NULL)"
        ]

    def apply(self, cursor: Cursor, items: Sequence[Item]) -> None:
        table = self.table("hash_chain")
        previous = self._head(cursor)[1]
        for item in items:
            notification = item.notification
            previous = link(previous, notification)
            cursor.execute(
                f"INSERT INTO {table} (notification_id, originator_id, originator_version, link) "
                "VALUES (%s, %s, %s, %s)",
                (
                    notification.id,
                    str(as_uuid(notification.originator_id)),
                    notification.originator_version,
                    previous.hex(),
                ),
            )
        if items:
            log.info(
                "hashchain.head",
                table=table,
                position=items[-1].notification.id,
                link=previous.hex(),
            )

    def _head(self, cursor: Cursor, at_most: int | None = None) -> tuple[int, bytes]:
        where, params = ("WHERE notification_id <= %s ", (at_most,)) if at_most else ("", ())
        row = cursor.execute(
            f"SELECT notification_id, link FROM {self.table('hash_chain')} {where}"
            "ORDER BY notification_id DESC LIMIT 1",
            params,
        ).fetchone()
        return (0, GENESIS) if row is None else (int(row[0]), bytes.fromhex(row[1]))

    def head(self) -> tuple[int, str]:
        """The last chained notification id and its link (hex)."""
        with self.database.transaction(commit=False) as cursor:
            position, value = self._head(cursor)
        return position, value.hex()

    def before_swap(self, cursor: Cursor, live: ReadModel) -> None:
        """Refuse to replace a chain by one that disagrees with it: that would bless an edit."""
        assert isinstance(live, HashChain)
        rebuilt_position, _ = self._head(cursor)
        position, live_link = live._head(cursor, at_most=rebuilt_position)
        if position == 0:
            return
        row = cursor.execute(
            f"SELECT link FROM {self.table('hash_chain')} WHERE notification_id = %s",
            (position,),
        ).fetchone()
        if row is None or bytes.fromhex(row[0]) != live_link:
            raise ChainMismatchError(
                detail=f"the rebuilt chain differs from the live one at or before notification "
                f"{position}; run `lifecycle audit verify` before rebuilding it"
            )

    def links(self, after: int = 0) -> Iterator[tuple[int, str, int, bytes]]:
        """Chain rows in notification order, a page at a time."""
        while True:
            with self.database.transaction(commit=False) as cursor:
                rows = cursor.execute(
                    "SELECT notification_id, originator_id, originator_version, link "
                    f"FROM {self.table('hash_chain')} WHERE notification_id > %s "
                    "ORDER BY notification_id LIMIT %s",
                    (after, PAGE),
                ).fetchall()
            for nid, originator_id, version, value in rows:
                yield int(nid), str(originator_id), int(version), bytes.fromhex(value)
            if len(rows) < PAGE:
                return
            after = int(rows[-1][0])
