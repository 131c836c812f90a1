"""The log read a page at a time, so an audit pass keeps memory flat however long the log is."""

from __future__ import annotations

from collections.abc import Iterator

from eventsourcing.persistence import ApplicationRecorder, Notification

PAGE = 1000


def notifications(recorder: ApplicationRecorder, after: int = 0) -> Iterator[Notification]:
    """Every stored event after notification id `after`, in notification order."""
    while True:
        page = recorder.select_notifications(start=after, limit=PAGE, inclusive_of_start=False)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].id
