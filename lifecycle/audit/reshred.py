"""`lifecycle audit reshred`: after a backup restore, who is known purged outside the database.

A restored dump taken before a purge brings that account's key back. The lifecycle topic
still holds the `Purged` record, so it names the accounts to purge and shred again
(`Accounts.reshred` does both).
"""

from __future__ import annotations

from uuid import UUID

from lifecycle.kafka.admin import read_from_start
from schemas.contract import ContractError, PurgedV1, decode_record


def purged_ids_on_topic(bootstrap: str, topic: str) -> set[UUID]:
    """Accounts whose Purged event is still on the lifecycle topic: a ledger outside the DB."""
    purged: set[UUID] = set()
    for record in read_from_start(bootstrap, [topic]):
        try:
            envelope = decode_record(record.headers or [], record.value)
        except ContractError:
            continue
        if envelope.type == PurgedV1.ce_type():
            purged.add(envelope.account_id)
    return purged
