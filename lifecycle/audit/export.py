"""`lifecycle audit export`: the whole log as JSON Lines, exactly as stored.

Nothing is decrypted: each line carries the stored state byte for byte (personal fields
sealed); it is already compact JSON, so only its timestamp is parsed, never the whole state.
The log is read a page at a time and nothing accumulates, so memory stays flat.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, time
from typing import TextIO

from lifecycle.application import Accounts
from lifecycle.audit.pages import PAGE, notifications
from projections.base import JST

ProgressCallback = Callable[[int, int], None]

# The mapper writes an event's timestamp first; read it without parsing the whole state.
LEADING_TIMESTAMP = re.compile(rb'\{"timestamp":\{"_type_":"datetime_iso","_data_":"([^"\\]*)"\}')


def parse_bound(text: str) -> int | datetime:
    """A notification id (digits) or an ISO 8601 date / date-time; JST when no offset given."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a notification id nor an ISO 8601 date") from None
    if len(text) == 10:  # a bare date: that day's midnight
        moment = datetime.combine(moment.date(), time())
    return moment if moment.tzinfo else moment.replace(tzinfo=JST)


def export_log(
    accounts: Accounts,
    out: TextIO,
    *,
    since: int | datetime | None = None,
    until: int | datetime | None = None,
    progress: ProgressCallback | None = None,
) -> int:
    """Write every stored event in notification order as one JSON object a line.

    `since` and `until` are notification ids (both inclusive) or times (from inclusive, to
    exclusive). Returns how many events were written.
    """
    recorder = accounts.recorder
    total = recorder.max_notification_id() or 0
    start = since - 1 if isinstance(since, int) and since > 0 else 0
    stop = until if isinstance(until, int) else None
    written = read = 0
    for notification in notifications(recorder, after=start):
        if stop is not None and notification.id > stop:
            break
        read += 1
        state = bytes(notification.state)
        timestamp = _timestamp_of(state)
        if _outside(timestamp, since, until):
            continue
        envelope = {
            "notification_id": notification.id,
            "originator_id": str(notification.originator_id),
            "originator_version": notification.originator_version,
            "topic": notification.topic,
            "timestamp": timestamp.isoformat() if timestamp else None,
        }
        head = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
        out.write(f'{head[:-1]},"state":{state.decode()}}}\n')
        written += 1
        if progress is not None and read % PAGE == 0:
            progress(notification.id, total)
    if progress is not None:
        progress(total, total)
    return written


def _timestamp_of(state: bytes) -> datetime | None:
    leading = LEADING_TIMESTAMP.match(state)
    if leading is not None:
        return _parse_time(leading.group(1).decode())
    decoded = json.loads(state)
    raw = decoded.get("timestamp") if isinstance(decoded, dict) else None
    if isinstance(raw, dict):
        raw = raw.get("_data_")
    return _parse_time(raw) if isinstance(raw, str) else None


def _parse_time(raw: str) -> datetime | None:
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def _outside(
    timestamp: datetime | None, since: int | datetime | None, until: int | datetime | None
) -> bool:
    if isinstance(since, datetime) and (timestamp is None or timestamp < since):
        return True
    return isinstance(until, datetime) and (timestamp is None or timestamp >= until)
