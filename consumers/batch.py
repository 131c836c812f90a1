"""One poll batch's records, from bytes to a committed transaction (steps 1-4 of `consumers.kit`).

Pure of the loop's concerns (waiting, retrying, dead-lettering, offsets): the records decoded,
the runs that share a transaction, and the transaction itself, in which the handler's effects,
the `processed_events` marks and the outgoing records commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from consumers.handler import ERASURE_OUTCOMES, Handler, HandlerResult
from consumers.store import ConsumerStore, Outgoing
from lifecycle.kafka.source import Incoming
from schemas.contract import ContractError, Envelope, decode_record, dedupe_key

# A record of the batch by its index: its envelope, or why it breaks the contract.
Decoded = tuple[int, Envelope | ContractError]
Applied = list[tuple[Envelope, HandlerResult]]


@dataclass(frozen=True)
class Kept:
    """What a committed transaction left in the outbox: its records, in order, and their row
    ids, so the loop publishes them and deletes the rows without reading the outbox back."""

    outgoing: list[Outgoing]
    row_ids: list[int]
    erased_from: tuple[str, ...] = ()  # personal tables rows were erased from (to vacuum)


def decode_batch(batch: Sequence[Incoming]) -> list[Decoded]:
    decoded: list[Decoded] = []
    for index, incoming in enumerate(batch):
        try:
            decoded.append((index, decode_record(incoming.headers, incoming.value, incoming.topic)))
        except ContractError as error:
            decoded.append((index, error))
    return decoded


def transaction_runs(handler: Handler, todo: list[Decoded]) -> Iterator[list[Decoded]]:
    """Runs of records, in order, that share a transaction. A new run starts at a record
    whose `prepare` must see the records before it committed; a record that breaks the
    contract is a run of its own (dead-lettered in its place)."""
    wants_commit = getattr(handler, "commits_before_prepare", None)
    segment: list[Decoded] = []
    for index, item in todo:
        alone = isinstance(item, ContractError)
        cut = alone or wants_commit is None or wants_commit(item)
        if segment and (cut or isinstance(segment[0][1], ContractError)):
            yield segment
            segment = []
        segment.append((index, item))
    if segment:
        yield segment


def apply_records(
    handler: Handler,
    store: ConsumerStore,
    envelopes: list[Envelope],
    extra_headers: Callable[[Envelope], list[tuple[str, bytes]]] | None = None,
) -> tuple[Applied, Kept]:
    """Prepare, then mark, handle and keep the outgoing records in one transaction; the
    records applied (those another member marked meanwhile are left out), with their results,
    and what the transaction kept in the outbox (and erased: the caller runs the database's
    `after_erasure` once the confirmations are out). `extra_headers` adds to each outgoing
    record headers of the record that caused it."""
    if (prepare_many := getattr(handler, "prepare_many", None)) is not None:
        prepare_many(envelopes)
    else:
        for envelope in envelopes:
            handler.prepare(envelope)
    with store.transaction() as cursor:
        fresh = store.mark_all_processed(cursor, [dedupe_key(e) for e in envelopes])
        todo = [envelope for envelope in envelopes if dedupe_key(envelope) in fresh]
        handle_many = getattr(handler, "handle_many", None)
        if handle_many is not None:
            results: list[HandlerResult] = handle_many(todo, cursor)
        else:
            results = [handler.handle(envelope, cursor) for envelope in todo]
        applied = list(zip(todo, results, strict=True))
        outgoing = _outgoing(applied, extra_headers)
        row_ids = store.add_outgoing(cursor, outgoing)
    if (committed := getattr(handler, "committed", None)) is not None:
        committed()
    erased = any(result.outcome in ERASURE_OUTCOMES for _, result in applied)
    return applied, Kept(
        outgoing, row_ids, tuple(getattr(handler, "personal_tables", ())) if erased else ()
    )


def _outgoing(
    applied: Applied, extra_headers: Callable[[Envelope], list[tuple[str, bytes]]] | None
) -> list[Outgoing]:
    if extra_headers is None:
        return [item for _, result in applied for item in result.outgoing]
    return [
        Outgoing(item.topic, item.record._replace(headers=[*item.record.headers, *extra]))
        for envelope, result in applied
        for extra in [extra_headers(envelope)]
        for item in result.outgoing
    ]
