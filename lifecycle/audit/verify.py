"""`lifecycle audit verify`: every link of the hash chain recomputed from the stored events.

Walks the stored events and the chain rows side by side, a page of each at a time (memory
stays flat), and names each event that was altered, deleted or inserted since it was chained.
`chain_point` gives the link at one notification, recomputed from the log where the chain's
read model has not reached it yet (an erasure receipt states the link of its `Purged`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Notification

from lifecycle.audit.pages import PAGE, notifications
from projections.base import as_uuid
from projections.hashchain import GENESIS, HashChain, link


@dataclass(frozen=True)
class ChainPoint:
    """The chain at one notification: which event it is and its link (hex)."""

    position: int
    originator_id: str
    originator_version: int
    link: str


def chain_point(
    chain: HashChain,
    recorder: ApplicationRecorder,
    position: int,
    known: tuple[int, str] | None = None,
) -> ChainPoint | None:
    """The link at notification `position`: the chained row, or recomputed from the log from
    the last chained link before it when the read model lags (or from `known`, a link
    computed earlier, when that is nearer). None: no such notification."""
    table = chain.table("hash_chain")
    with chain.database.transaction(commit=False) as cursor:
        row = cursor.execute(
            f"SELECT originator_id, originator_version, link FROM {table} "
            "WHERE notification_id = %s",
            (position,),
        ).fetchone()
        if row is not None:
            return ChainPoint(position, str(row[0]), int(row[1]), str(row[2]))
        below = cursor.execute(
            f"SELECT notification_id, link FROM {table} WHERE notification_id < %s "
            "ORDER BY notification_id DESC LIMIT 1",
            (position,),
        ).fetchone()
    after, previous = (0, GENESIS) if below is None else (int(below[0]), bytes.fromhex(below[1]))
    if known is not None and after < known[0] < position:
        after, previous = known[0], bytes.fromhex(known[1])
    for event in notifications(recorder, after=after):
        if event.id > position:
            return None
        previous = link(previous, event)
        if event.id == position:
            return ChainPoint(
                position,
                str(as_uuid(event.originator_id)),
                event.originator_version,
                previous.hex(),
            )
    return None


@dataclass
class Mismatch:
    notification_id: int
    originator_id: str
    originator_version: int
    topic: str | None
    kind: str  # altered | missing | inserted

    def describe(self) -> str:
        what = {
            "altered": "does not match its link",
            "missing": "was chained but is no longer stored",
            "inserted": "is stored but was never chained",
        }[self.kind]
        return (
            f"notification {self.notification_id} (originator {self.originator_id}, "
            f"version {self.originator_version}, {self.topic or 'topic unknown'}) {what}"
        )


@dataclass
class Verification:
    checked: int = 0
    unchained: int = 0
    head_position: int = 0
    head_link: str = GENESIS.hex()
    mismatches: int = 0
    first: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "mismatches": self.mismatches,
            "first_mismatch": self.first[0].describe() if self.first else None,
            "mismatched": [vars(m) for m in self.first],
            "head": {"position": self.head_position, "link": self.head_link},
            "unchained_events": self.unchained,
        }


def verify(
    chain: HashChain,
    recorder: ApplicationRecorder,
    *,
    progress: Callable[[int], None] | None = None,
    keep: int = 10,
) -> Verification:
    """Recompute every link from the stored events; memory stays flat (pages of PAGE)."""
    result = Verification()
    chained_up_to = chain.position()
    events = notifications(recorder)
    links = chain.links()
    event = next(events, None)
    row = next(links, None)
    previous = GENESIS

    def mismatch(found: Mismatch) -> None:
        result.mismatches += 1
        if len(result.first) < keep:
            result.first.append(found)

    while event is not None or row is not None:
        if event is not None and (row is None or event.id < row[0]):
            if event.id <= chained_up_to:
                mismatch(_mismatch(event, "inserted"))
            else:
                result.unchained += 1
            event = next(events, None)
            continue
        assert row is not None
        nid, originator_id, version, stored = row
        if event is None or nid < event.id:
            mismatch(Mismatch(nid, originator_id, version, None, "missing"))
        else:
            expected = link(previous, event)
            same_place = str(as_uuid(event.originator_id)) == originator_id and (
                event.originator_version == version
            )
            if expected != stored or not same_place:
                mismatch(_mismatch(event, "altered"))
            result.checked += 1
            if progress is not None and result.checked % PAGE == 0:
                progress(result.checked)
            event = next(events, None)
        previous = stored
        result.head_position, result.head_link = nid, stored.hex()
        row = next(links, None)
    if progress is not None:
        progress(result.checked)
    return result


def _mismatch(event: Notification, kind: str) -> Mismatch:
    return Mismatch(
        event.id, str(as_uuid(event.originator_id)), event.originator_version, event.topic, kind
    )
