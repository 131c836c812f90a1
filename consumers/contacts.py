"""The mail service's `contacts`: each member's address, name and notification choices, from
the compacted profile topic, the address and name sealed under the account's key
(`consumers.sealed`), which the erasure destroys with the row.

The one place contacts are written and opened: the handler saves them, the withdrawal mail and
the notice delivery open them, the export reads them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from consumers.sealed import SealedValues
from consumers.store import utc
from lifecycle.storage import Cursor, Database
from schemas.contract import ProfileV1

# The sealed columns (consumers.sealed binds each value to its column).
CONTACT_EMAIL = "contacts.email"
CONTACT_NAME = "contacts.display_name"
CONTACT_COLUMNS = (
    ("account_id", "text"),
    ("email", "text"),
    ("display_name", "text"),
    ("notifications", "text"),
)


@dataclass(frozen=True)
class Contact:
    email: str
    display_name: str
    notifications: dict[str, bool]
    updated_at: datetime


class Contacts:
    """Saving and opening the contacts of one mail service's store."""

    def __init__(self, database: Database, sealed: SealedValues) -> None:
        self.database = database
        self.sealed = sealed
        self.table = database.table("contacts")

    def save(self, cursor: Cursor, profiles: Sequence[ProfileV1]) -> None:
        """Insert or update each account's contact, in one statement (the last profile of an
        account wins); the caller holds the accounts' locks."""
        latest = {profile.account_id: profile for profile in profiles}
        if not latest:
            return
        keys = self.sealed.keys_for(cursor, list(latest), create=True)
        db = self.database
        cursor.insert_rows(
            self.table,
            CONTACT_COLUMNS,
            [self._row(keys[account_id], p) for account_id, p in latest.items()],
            suffix="ON CONFLICT (account_id) DO UPDATE SET email = excluded.email, "
            "display_name = excluded.display_name, notifications = excluded.notifications, "
            f"updated_at = {db.now}",
        )

    def of(self, cursor: Cursor, account_ids: Sequence[UUID]) -> dict[UUID, Contact]:
        """The accounts' contacts that are known and can be opened (key not destroyed)."""
        if not account_ids:
            return {}
        where, params = self.database.any_of("account_id", [str(a) for a in account_ids])
        rows = cursor.execute(
            f"SELECT account_id, email, display_name, notifications, updated_at FROM {self.table} "
            f"WHERE {where}",
            params,
        ).fetchall()
        keys = self.sealed.keys_for(cursor, [UUID(account) for account, *_ in rows])
        found: dict[UUID, Contact] = {}
        for account, email, name, notifications, updated_at in rows:
            account_id = UUID(account)
            key = keys.get(account_id)
            address = self.sealed.open(key, account_id, CONTACT_EMAIL, email)
            display_name = self.sealed.open(key, account_id, CONTACT_NAME, name)
            if address is not None and display_name is not None:
                found[account_id] = Contact(
                    address, display_name, json.loads(notifications), utc(updated_at)
                )
        return found

    def known(self, cursor: Cursor, account_ids: Sequence[UUID]) -> set[UUID]:
        """Which of these accounts have a contact row (opened or not)."""
        if not account_ids:
            return set()
        where, params = self.database.any_of("account_id", [str(a) for a in account_ids])
        rows = cursor.execute(
            f"SELECT account_id FROM {self.table} WHERE {where}", params
        ).fetchall()
        return {UUID(account) for (account,) in rows}

    def _row(self, key: bytes, profile: ProfileV1) -> tuple[str, str, str, str]:
        account_id = profile.account_id
        return (
            str(account_id),
            self.sealed.seal(key, account_id, CONTACT_EMAIL, profile.email),
            self.sealed.seal(key, account_id, CONTACT_NAME, profile.display_name),
            json.dumps(profile.notifications),
        )
