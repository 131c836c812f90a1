"""A downstream service's personal values, sealed under per-account keys it destroys on erasure.

The same mechanism as the lifecycle service's own: each account gets a random data key; the
key is stored only wrapped by the service's keyring (`lifecycle.keyring`: versioned KEKs kept
outside the database, rotated and destroyed on a schedule), in the table `sealed_keys` beside
the service's tables. A value is stored as `sealed:v1:<base64>` (AES-GCM, bound to the account,
the column and the table, so a sealed value cannot be moved to another row or column).

Erasure deletes the account's rows and its key in one transaction. From then on nothing in
the service's database opens: not a deleted row's bytes left in a page, not a WAL segment, not
a backup taken before; once the KEK version that wrapped the key is destroyed, not even with
every key the service still holds.

Usage in a handler (inside the kit's transaction, with the account's lock held):

    keys = sealed.keys_for(cursor, account_ids, create=True)
    row_value = sealed.seal(keys[account_id], account_id, "contacts.email", email)
    ...
    email = sealed.open(keys.get(account_id), account_id, "contacts.email", row_value)
    sealed.destroy(cursor, account_ids)  # on erasure
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lifecycle.keyring import Keyring, KeyVersionDestroyedError, open_sealed, seal
from lifecycle.storage import Cursor, Database

PREFIX = "sealed:v1:"
TABLE = "sealed_keys"


class SealedValues:
    """Per-account keys of one service's store, and sealing and opening values with them."""

    def __init__(self, database: Database, keyring: Keyring) -> None:
        self.database = database
        self.keyring = keyring
        self.table = database.table(TABLE)

    def keys_for(
        self, cursor: Cursor, account_ids: Sequence[UUID], *, create: bool = False
    ) -> dict[UUID, bytes]:
        """The accounts' data keys; with `create`, a new key for each account without one
        (written in the caller's transaction). An account whose key was destroyed, or whose
        KEK version is gone, is left out."""
        if not account_ids:
            return {}
        found = self._read(cursor, account_ids)
        missing = [a for a in dict.fromkeys(account_ids) if a not in found]
        if create and missing:
            # One statement for them all; a key another writer stored first is read back.
            fresh = {a: AESGCM.generate_key(bit_length=256) for a in missing}
            inserted = cursor.insert_rows(
                self.table,
                (("account_id", "text"), ("wrapped_key", self.database.blob_type)),
                [(str(a), self.keyring.wrap(key, a.bytes)) for a, key in fresh.items()],
                suffix="ON CONFLICT (account_id) DO NOTHING RETURNING account_id",
            ).fetchall()
            found.update((UUID(account), fresh[UUID(account)]) for (account,) in inserted)
            if len(inserted) < len(missing):
                found.update(self._read(cursor, [a for a in missing if a not in found]))
        return found

    def _read(self, cursor: Cursor, account_ids: Sequence[UUID]) -> dict[UUID, bytes]:
        where, params = self.database.any_of("account_id", [str(a) for a in account_ids])
        rows = cursor.execute(
            f"SELECT account_id, wrapped_key FROM {self.table} WHERE {where}", params
        ).fetchall()
        keys: dict[UUID, bytes] = {}
        for account, wrapped in rows:
            account_id = UUID(account)
            try:
                keys[account_id] = self.keyring.unwrap(bytes(wrapped), account_id.bytes)
            except KeyVersionDestroyedError:
                continue
        return keys

    def destroy(self, cursor: Cursor, account_ids: Sequence[UUID]) -> int:
        """Delete the accounts' keys (in the erasure's transaction)."""
        if not account_ids:
            return 0
        where, params = self.database.any_of("account_id", [str(a) for a in account_ids])
        cursor.execute(f"DELETE FROM {self.table} WHERE {where}", params)
        return cursor.rowcount

    @staticmethod
    def seal(key: bytes, account_id: UUID, field: str, value: str) -> str:
        sealed = seal(key, value.encode(), _associated(account_id, field))
        return PREFIX + base64.b64encode(sealed).decode()

    @staticmethod
    def open(key: bytes | None, account_id: UUID, field: str, stored: str) -> str | None:
        """The value; None when its key is gone. A value stored before sealing was adopted
        (no prefix) is returned as it is, until the next write seals it."""
        if not stored.startswith(PREFIX):
            return stored
        if key is None:
            return None
        try:
            plain = open_sealed(
                key, base64.b64decode(stored[len(PREFIX) :]), _associated(account_id, field)
            )
        except InvalidTag:
            return None
        return plain.decode()


def _associated(account_id: UUID, field: str) -> bytes:
    return account_id.bytes + b"|" + field.encode()
