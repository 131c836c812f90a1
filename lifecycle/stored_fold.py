"""Folding the log from stored states, without the library's event objects.

Reading the whole log (the audit replay, a read model's rebuild) spends most of its time
building one event object per stored event (`Mapper.to_domain_event`) and mutating through it.
This does what those do, on plain values: a stored event's state is decoded by the
application's transcoder into a dict, given its originator id and version, upcast by its
class's own `upcast_v*` functions, its sealed personal fields opened (or redacted) by the
application's mapper (`PersonalDataMapper.open_values`, the code its event objects use), and
folded into the aggregate by the domain's own table (`lifecycle.domain.FOLDS`,
`lifecycle.email_claim.FOLDS`, which `Account.fold` and `EmailClaim.fold` apply too). So
the rules live in one place, and `tests/integration/test_stored_fold.py` proves the result
equal to the library's fold, field by field, over generated histories.

The aggregate made is the domain's own class (`Account`, `EmailClaim`), so its `check_*`
rules can be asked of the state between two events.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate, OriginatorIDError, OriginatorVersionError
from eventsourcing.persistence import Transcoder

from lifecycle import domain, email_claim, event_names
from lifecycle.crypto import KEYS_TABLE, PersonalDataMapper
from lifecycle.domain import Account
from lifecycle.email_claim import EmailClaim
from lifecycle.storage import Database

T = TypeVar("T")
Facts = dict[str, Any]
# A stored event as the events table holds it: originator id, version, topic, state.
Row = tuple[UUID, int, str, bytes]
# Streams are read in (originator id, version) order; bigger pages mean fewer key queries.
STREAM_PAGE = 2000


@dataclass(frozen=True)
class EventKind:
    """What folding one stored event type needs, read once from its class."""

    topic: str  # the stored name (lifecycle.event_names)
    name: str  # the class's name, for messages
    aggregate: type[Aggregate]
    creates: bool
    fold: Callable[[dict[str, Any], Facts], None]
    class_version: int
    # upcasts[n] takes a state from class version n + 1 to n + 2.
    upcasts: tuple[Callable[[dict[str, Any]], None], ...]


def _kind(event_class: type[Any], aggregate: type[Aggregate], folds: dict[str, Any]) -> EventKind:
    class_version: int = getattr(event_class, "class_version", 1)
    return EventKind(
        topic=event_class.TOPIC,
        name=event_class.__name__,
        aggregate=aggregate,
        creates=issubclass(event_class, Aggregate.Created),
        fold=folds[event_class.TOPIC],
        class_version=class_version,
        upcasts=tuple(
            getattr(event_class, f"upcast_v{n}_v{n + 1}") for n in range(1, class_version)
        ),
    )


def _recorded(aggregate: type[Aggregate], folds: dict[str, Any]) -> list[type[Any]]:
    """The aggregate's event classes that are stored: those whose stored name has a fold.
    Found by that name, not by class name, so a class renamed or moved keeps its kind
    (tests/integration/test_migrations.py renames `Purged`)."""
    return [
        cls
        for cls in vars(aggregate).values()
        if isinstance(cls, type) and getattr(cls, "TOPIC", None) in folds
    ]


# Each recorded event type's stored name -> its kind (Account.Created is never recorded).
KINDS: dict[str, EventKind] = {
    cls.TOPIC: _kind(cls, Account, domain.FOLDS) for cls in _recorded(Account, domain.FOLDS)
} | {
    cls.TOPIC: _kind(cls, EmailClaim, email_claim.FOLDS)
    for cls in _recorded(EmailClaim, email_claim.FOLDS)
}


class UnknownTopicError(Exception):
    """A stored event of a type this fold does not know."""


class StoredFold:
    """Decodes stored events into facts and folds them, with one application's mapper.

    `opened`: personal values opened with their account's key (as the application loads
    them); False reads every one as `[redacted]` without asking for a key (read models)."""

    def __init__(self, mapper: PersonalDataMapper, *, opened: bool = True) -> None:
        self.mapper = mapper
        self.transcoder: Transcoder = mapper.transcoder
        self.opened = opened

    def facts(self, originator_id: UUID, version: int, topic: str, state: bytes) -> Facts:
        """The event's values, as its object would hold them; raises UnknownTopicError, or
        what decoding raises (a state that does not parse, a seal that does not open)."""
        kind = KINDS.get(topic)
        if kind is None:
            raise UnknownTopicError(topic)
        facts: Facts = self.transcoder.decode(state)
        facts["originator_id"] = originator_id
        facts["originator_version"] = version
        from_version = facts.pop("class_version", 1)
        while from_version < kind.class_version:
            kind.upcasts[from_version - 1](facts)
            from_version += 1
        self.mapper.open_values(facts, opened=self.opened)
        return facts

    def aggregate(self, rows: Iterable[Row]) -> Aggregate | None:
        """One aggregate's stream of stored events, in version order, folded (None: empty)."""
        aggregate: Aggregate | None = None
        for originator_id, version, topic, state in rows:
            facts = self.facts(originator_id, version, topic, state)
            aggregate = fold(aggregate, KINDS[topic], facts)
        return aggregate


def fold(aggregate: Aggregate | None, kind: EventKind, facts: Facts) -> Aggregate:
    """The aggregate after one event, as the library's `mutate` leaves it (the same object,
    changed, when there was one); raises OriginatorVersionError or OriginatorIDError when the
    event does not follow (a creation event with an aggregate already, or none without one)."""
    version: int = facts["originator_version"]
    if kind.creates:
        if aggregate is not None:
            raise OriginatorVersionError(version, aggregate.version + 1)
        cls = kind.aggregate
        created = cls.__new__(cls)
        created.__base_init__(facts["originator_id"], version, facts["timestamp"])
        cls.__init__(created)
        kind.fold(created.__dict__, facts)
        return created
    if aggregate is None:
        raise OriginatorVersionError(version, 1)
    if facts["originator_id"] != aggregate.id:
        raise OriginatorIDError(facts["originator_id"], aggregate.id)
    if version != aggregate.version + 1:
        raise OriginatorVersionError(version, aggregate.version + 1)
    kind.fold(aggregate.__dict__, facts)
    aggregate.version = version
    aggregate.modified_on = facts["timestamp"]
    return aggregate


def stream_pages(
    database: Database, page: int = STREAM_PAGE, until: int | None = None
) -> Iterator[list[list[Row]]]:
    """Every aggregate's whole stream of stored events as rows, in id order, grouped by the
    page that completed it (a page may complete none when one aggregate spans it); `until`:
    only the events up to that notification id. Memory stays flat however long the log is."""
    for streams, _ in _pages(database, page, until, with_keys=False):
        yield streams


# A range of originator ids: from the first (inclusive, None: the lowest) to the second
# (exclusive, None: past the highest).
IdRange = tuple[UUID | None, UUID | None]
EVERY_ID: IdRange = (None, None)


def id_ranges(parts: int) -> list[IdRange]:
    """The id space cut into `parts` contiguous ranges of equal width, in order (random ids,
    as uuid4 and the claims' keyed ids are, fall evenly into them)."""
    bounds = [None, *(UUID(int=(n << 128) // parts) for n in range(1, parts)), None]
    return list(itertools.pairwise(bounds))


def stream_pages_with_keys(
    database: Database, page: int = STREAM_PAGE, ids: IdRange = EVERY_ID
) -> Iterator[tuple[list[list[Row]], dict[UUID, bytes | None]]]:
    """`stream_pages` (of the aggregates in `ids` only), each page with the wrapped data key
    of every account it completed (None: the account has none), read by the same statement
    as its `Registered` event: no query of its own, and the key is the one stored when that
    event was read."""
    return _pages(database, page, None, with_keys=True, ids=ids)


def _pages(
    database: Database,
    page: int,
    until: int | None,
    *,
    with_keys: bool,
    ids: IdRange = EVERY_ID,
) -> Iterator[tuple[list[list[Row]], dict[UUID, bytes | None]]]:
    table = database.events_table
    last: tuple[Any, int] | None = None
    stream: list[Row] = []
    # The current stream's wrapped key, when its first event is a registration.
    stream_key: tuple[UUID, bytes | None] | None = None
    # An account's key beside its first event (one index probe per registration).
    key = (
        "CASE WHEN e.originator_version = 1 AND e.topic = %s THEN (SELECT k.wrapped_key "
        f"FROM {database.table(KEYS_TABLE)} k WHERE k.account_id = e.originator_id) END"
        if with_keys
        else "NULL"
    )
    upto = "" if until is None else f"e.{database.dialect.events_position} <= %s"
    lowest, beyond = ids
    in_ids = (
        *(() if lowest is None else ("e.originator_id >= %s",)),
        *(() if beyond is None else ("e.originator_id < %s",)),
    )
    id_params = tuple(database.id_param(bound) for bound in ids if bound is not None)
    while True:
        conditions = [
            c
            for c in (
                upto,
                *in_ids,
                "" if last is None else "(e.originator_id, e.originator_version) > (%s, %s)",
            )
            if c
        ]
        params = (
            *((event_names.REGISTERED,) if with_keys else ()),
            *(() if until is None else (until,)),
            *id_params,
            *(() if last is None else last),
        )
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        with database.transaction(commit=False) as cursor:
            rows = (
                cursor.plain_rows()
                .execute(
                    "SELECT e.originator_id, e.originator_version, e.topic, e.state, "
                    f"{key} FROM {table} e {where}"
                    "ORDER BY e.originator_id, e.originator_version LIMIT %s",
                    (*params, page),
                )
                .fetchall()
            )
        complete: list[list[Row]] = []
        keys: dict[UUID, bytes | None] = {}
        for raw_id, version, topic, state, wrapped in rows:
            # The drivers give int, str and bytes; PostgreSQL a UUID, SQLite its text.
            originator_id = raw_id if type(raw_id) is UUID else UUID(raw_id)
            if stream and stream[0][0] != originator_id:
                complete.append(stream)
                stream = []
                if stream_key is not None:
                    keys[stream_key[0]] = stream_key[1]
                    stream_key = None
            if with_keys and version == 1 and topic == event_names.REGISTERED:
                stream_key = (originator_id, None if wrapped is None else bytes(wrapped))
            stream.append((originator_id, version, topic, state))
        if len(rows) < page:
            if stream:
                complete.append(stream)
                if stream_key is not None:
                    keys[stream_key[0]] = stream_key[1]
            if complete:
                yield complete, keys
            return
        yield complete, keys
        last = (rows[-1][0], int(rows[-1][1]))


def read_ahead(pages: Iterator[T]) -> Iterator[T]:
    """The pages of `pages`, the next one read on a thread of its own while the caller writes
    this one: a rebuild's reads overlap its writes' round trips (about a fifth of its time).
    The audit replay does not use it: it only reads, and handing pages between two Python
    threads cost it more CPU than it saved time. One page ahead at most, so memory stays
    flat; the reader's error is raised here, in its place; a caller that stops early stops
    the reader."""
    slot: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stopped = threading.Event()

    def read() -> None:
        try:
            for page in pages:
                slot.put(("page", page))
                if stopped.is_set():
                    return
            slot.put(("end", None))
        except BaseException as error:  # handed to the caller, raised in its thread
            slot.put(("error", error))

    reader = threading.Thread(target=read, name="read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = slot.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stopped.set()
        while reader.is_alive():  # unblock a reader waiting to hand over its last page
            with contextlib.suppress(queue.Empty):
                slot.get(timeout=0.05)
        reader.join()


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """For a pass over the whole log: the objects alive when it starts (modules, the
    application: hundreds of thousands) left out of the garbage collector's scans until it
    ends. A pass allocates a dict or two per event, which sets off full collections that scan
    them all again and again: a fifth of the audit replay's CPU. Only scanning is spared:
    nothing is kept, and whatever of them became garbage meanwhile goes at the next
    collection after (`gc.unfreeze`)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
