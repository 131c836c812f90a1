"""`consumers.sealed`: per-account keys, made for many accounts in one statement."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from uuid import UUID

from consumers.sealed import SealedValues
from lifecycle.keyring import MasterKeyring
from lifecycle.storage import Cursor, Database

KEYRING = MasterKeyring(os.urandom(32))


class CountingCursor(Cursor):
    def __init__(self, inner: Cursor) -> None:
        super().__init__(inner.raw, inner.dialect)
        self.statements: list[str] = []

    def execute(self, statement: str, params: tuple[object, ...] | list[object] = ()) -> Cursor:
        self.statements.append(statement.split(maxsplit=1)[0])
        return super().execute(statement, params)


def test_keys_for_new_accounts_are_made_in_one_statement_and_kept(
    service_store: Callable[[str], Database],
) -> None:
    sealed = SealedValues(service_store("mail"), KEYRING)
    known = uuid.uuid4()
    with sealed.database.transaction() as cursor:
        first = sealed.keys_for(cursor, [known], create=True)
    accounts = [known, uuid.uuid4(), uuid.uuid4(), uuid.uuid4()]
    with sealed.database.transaction() as plain:
        cursor = CountingCursor(plain)
        keys = sealed.keys_for(cursor, accounts, create=True)
    assert cursor.statements == ["SELECT", "INSERT"]
    assert set(keys) == set(accounts) and keys[known] == first[known]
    with sealed.database.transaction(commit=False) as cursor:
        assert sealed.keys_for(cursor, accounts) == keys


def test_a_key_another_writer_stored_first_is_the_one_returned(
    service_store: Callable[[str], Database],
) -> None:
    sealed = SealedValues(service_store("mail"), KEYRING)
    raced, fresh = uuid.uuid4(), uuid.uuid4()
    with sealed.database.transaction() as cursor:
        theirs = sealed.keys_for(cursor, [raced], create=True)[raced]
    read = sealed._read
    reads: list[list[UUID]] = []

    def blind_first(cursor: Cursor, account_ids: list[UUID]) -> dict[UUID, bytes]:
        reads.append(list(account_ids))
        return {} if len(reads) == 1 else read(cursor, account_ids)  # read before they wrote

    setattr(sealed, "_read", blind_first)  # noqa: B010 - a test seam
    with sealed.database.transaction() as cursor:
        keys = sealed.keys_for(cursor, [raced, fresh], create=True)
    assert keys[raced] == theirs
    assert reads[1:] == [[raced]]
    assert set(keys) == {raced, fresh}
