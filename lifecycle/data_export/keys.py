"""Each export's X25519 private key: stored like the account keys (wrapped by the keyring's
current KEK, bound to the export's id), destroyed when the export expires or is cancelled, and
by the database's own trigger in the transaction that records the account's withdrawal or
purge (lifecycle.migrations). Once it is gone no saved copy of a part opens again."""

from __future__ import annotations

from uuid import UUID

from lifecycle.keyring import Keyring, KeyVersionDestroyedError
from lifecycle.migrations import EXPORT_KEYS
from lifecycle.sealed_box import new_key_pair, public_key_of
from lifecycle.storage import Database

ASSOCIATED = b"data-export-key|"


class ExportKeys:
    def __init__(self, database: Database, keyring: Keyring) -> None:
        self.database = database
        self.keyring = keyring
        self.table = database.table(EXPORT_KEYS)

    def create(self, export_id: UUID, account_id: UUID) -> str:
        """The export's public key: a new pair's, or the one already stored for this id (two
        racing requests for one export end up with the same key)."""
        private, _ = new_key_pair()
        wrapped = self.keyring.wrap(private, ASSOCIATED + export_id.bytes)
        db = self.database
        with db.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO {self.table} (export_id, account_id, wrapped_key) "
                "VALUES (%s, %s, %s) ON CONFLICT (export_id) DO NOTHING",
                (db.id_param(export_id), db.id_param(account_id), wrapped),
            )
        stored = self.private_key(export_id)
        if stored is None:
            raise LookupError("export key destroyed at once")
        return public_key_of(stored)

    def private_key(self, export_id: UUID) -> bytes | None:
        """The private key; None once destroyed (or its KEK version is)."""
        db = self.database
        with db.transaction(commit=False) as cursor:
            row = cursor.execute(
                f"SELECT wrapped_key FROM {self.table} WHERE export_id = %s",
                (db.id_param(export_id),),
            ).fetchone()
        if row is None:
            return None
        try:
            return self.keyring.unwrap(bytes(row[0]), ASSOCIATED + export_id.bytes)
        except KeyVersionDestroyedError:
            return None

    def destroy(self, export_id: UUID) -> int:
        db = self.database
        with db.transaction() as cursor:
            cursor.execute(
                f"DELETE FROM {self.table} WHERE export_id = %s", (db.id_param(export_id),)
            )
            return cursor.rowcount
