"""`lifecycle audit reshred`: after a backup restore, who is known purged outside the database.

A restored dump taken before a purge brings that account back as the backup caught it (active
or withdrawing) with its key. The lifecycle topic still holds the `Purged` record, so it names
the accounts to bring back to `Purged`, and its `WithdrawalRequested` record gives the reason
and time of a withdrawal the restore lost; `Accounts.reshred` records both again and destroys
the keys, so the restored log replays without violations and every member route answers 410.
"""

from __future__ import annotations

from uuid import UUID

from lifecycle.application import KnownErasure
from lifecycle.kafka.admin import read_from_start
from schemas.contract import ContractError, PurgedV1, WithdrawalRequestedV1, decode_record


def known_erasures_on_topic(bootstrap: str, topic: str) -> dict[UUID, KnownErasure]:
    """Accounts whose Purged record is still on the lifecycle topic, with what the topic
    still tells of their withdrawal: a ledger outside the database."""
    purged: dict[UUID, PurgedV1] = {}
    withdrawn: dict[UUID, WithdrawalRequestedV1] = {}
    for record in read_from_start(bootstrap, [topic]):
        try:
            envelope = decode_record(record.headers or [], record.value)
        except ContractError:
            continue
        data = envelope.data
        if isinstance(data, PurgedV1):
            purged[data.account_id] = data
        elif isinstance(data, WithdrawalRequestedV1):
            withdrawn[data.account_id] = data
    return {
        account_id: KnownErasure(
            purged_at=purge.purged_at,
            reason=withdrawn[account_id].reason if account_id in withdrawn else None,
            requested_at=withdrawn[account_id].requested_at if account_id in withdrawn else None,
        )
        for account_id, purge in purged.items()
    }
