"""The log read a page at a time, so an audit pass keeps memory flat however long the log is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, Notification

from lifecycle.storage import Database
from lifecycle.stored_fold import Row

PAGE = 1000
# Replay reads in (originator id, version) order; bigger pages mean fewer key queries.
STREAM_PAGE = 2000


def notifications(recorder: ApplicationRecorder, after: int = 0) -> Iterator[Notification]:
    """Every stored event after notification id `after`, in notification order."""
    while True:
        page = recorder.select_notifications(start=after, limit=PAGE, inclusive_of_start=False)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].id


def stream_pages(database: Database, page: int = STREAM_PAGE) -> Iterator[list[list[Row]]]:
    """Every aggregate's whole stream of stored events as rows (id, version, topic, state),
    in id order, grouped by the page that completed it (a page may complete none when one
    aggregate spans it)."""
    table = database.events_table
    last: tuple[Any, int] | None = None
    stream: list[Row] = []
    while True:
        where, params = (
            ("", ())
            if last is None
            else ("WHERE (originator_id, originator_version) > (%s, %s) ", last)
        )
        with database.transaction(commit=False) as cursor:
            rows = (
                cursor.plain_rows()
                .execute(
                    f"SELECT originator_id, originator_version, topic, state FROM {table} {where}"
                    "ORDER BY originator_id, originator_version LIMIT %s",
                    (*params, page),
                )
                .fetchall()
            )
        complete: list[list[Row]] = []
        for raw_id, version, topic, state in rows:
            originator_id = raw_id if isinstance(raw_id, UUID) else UUID(raw_id)
            if stream and stream[0][0] != originator_id:
                complete.append(stream)
                stream = []
            stream.append((originator_id, int(version), str(topic), bytes(state)))
        if len(rows) < page:
            if stream:
                complete.append(stream)
            if complete:
                yield complete
            return
        yield complete
        last = (rows[-1][0], int(rows[-1][1]))
