"""`lifecycle audit reshred`: after a backup restore, who is known purged, from the service's
own evidence only.

A restored dump taken before a purge brings that account back as the backup caught it (active
or withdrawing) with its key. Two kinds of evidence name the accounts to bring back to
`Purged`, and reshred believes nothing else:

- erasure receipts, signed with the service's receipt key (derived from the master key), kept
  outside the database (the auditors' archive, `GET /audit/v1/...`, the file the member was
  sent): each gives the account, the withdrawal's reason and time and the purge's time, and a
  receipt whose signature does not verify is refused and counted;
- the destroyed-keys list (`destroyed_keys`): an account whose key is listed there was purged,
  whatever the restored log says.

Never a record on a Kafka topic: anyone allowed to write the lifecycle topic (or a forger on a
broker without ACLs) could name a live member there as purged, and reshred would shred them
(issue 19). `Accounts.reshred` records the facts again and destroys the keys, so the restored
log replays without violations and every member route answers 410.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from lifecycle.application import Accounts, KnownErasure
from lifecycle.audit.receipt import KIND, ReceiptSigner
from lifecycle.logs import get_logger
from schemas.contract import erasure_receipt_id

log = get_logger(__name__)


@dataclass
class Evidence:
    """What reshred may act on: known erasures by account, and the receipts it refused."""

    known: dict[UUID, KnownErasure] = field(default_factory=dict)
    refused: int = 0


def evidence(accounts: Accounts, receipt_paths: Iterable[Path], signer: ReceiptSigner) -> Evidence:
    """Every verified receipt under `receipt_paths`, then the destroyed-keys list."""
    found = Evidence()
    for receipt in _documents(receipt_paths):
        account_id = _verified(receipt, signer)
        if account_id is None:
            found.refused += 1
            # The id as written in an outside file: logged only when it is a UUID.
            log.warning("reshred.receipt_refused", receipt_id=_uuid_text(receipt.get("receipt_id")))
            continue
        found.known[account_id] = KnownErasure(
            purged_at=_moment(receipt.get("purged_at")),
            reason=_text(receipt.get("withdrawal_reason")),
            requested_at=_moment(receipt.get("requested_at")),
        )
    for account_id in destroyed_ids(accounts):
        found.known.setdefault(account_id, KnownErasure())
    return found


def destroyed_ids(accounts: Accounts) -> list[UUID]:
    """Every account whose key was destroyed (the list the shredding trigger keeps)."""
    db = accounts.database
    with db.transaction(commit=False) as cursor:
        rows = cursor.execute(f"SELECT account_id FROM {db.table('destroyed_keys')}").fetchall()
    return [db.to_uuid(row[0]) for row in rows]


def _verified(receipt: dict[str, Any], signer: ReceiptSigner) -> UUID | None:
    """The account of a receipt this service signed (any published signing version); None
    for anything else."""
    if receipt.get("kind") != KIND or not signer.signed(receipt):
        return None
    try:
        account_id = UUID(str(receipt.get("account_id")))
    except ValueError:
        return None
    if str(erasure_receipt_id(account_id)) != receipt.get("receipt_id"):
        return None
    return account_id


def _documents(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Receipts from files: one JSON document, a JSON array, or JSON Lines; a directory's
    `*.json` and `*.jsonl` files. What does not parse counts as a refused receipt."""
    for path in paths:
        files = sorted(path.glob("*.json*")) if path.is_dir() else [path]
        for file in files:
            text = file.read_text()
            try:
                parsed: Any = json.loads(text)
                items = parsed if isinstance(parsed, list) else [parsed]
            except json.JSONDecodeError:
                items = [_line(line) for line in text.splitlines() if line.strip()]
            for item in items:
                yield item if isinstance(item, dict) else {}


def _line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return {}


def _uuid_text(value: object) -> str | None:
    try:
        return str(UUID(value)) if isinstance(value, str) else None
    except ValueError:
        return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
