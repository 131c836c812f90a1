"""Crypto-shredding: personal fields sealed with a per-account key that `Purged` destroys.

The key table lives in the event store's own database. A new account's key is written in
the transaction that stores its `Registered` event (the mapper hands it over on the stored
event, lifecycle.recorders inserts it), so a failed registration leaves no key behind. A
trigger on the events table deletes an account's key in the same transaction that inserts
its `Purged` event, so the two cannot be separated by a crash; a tombstone table refuses to
bring a key back. Those tables and triggers are migrations (lifecycle.migrations), keyed on the
stable name of `Purged` (lifecycle.event_names), so renaming the class never disarms them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
    Transcoder,
)

from lifecycle import event_names, tracing
from lifecycle.account_terms import REDACTED
from lifecycle.domain import Account
from lifecycle.errors import KeyDestroyedError, MasterKeyError
from lifecycle.keyring import (
    FileKeyring,
    Keyring,
    KeyringError,
    KeyVersionDestroyedError,
    MasterKeyring,
    open_sealed,
    seal,
)
from lifecycle.storage import Database

SEALED_FIELD = "sealed"
# What the refusing trigger raises, on both backends.
KEY_DESTROYED = "key_destroyed"
KEYS_TABLE = "account_keys"


def decode_master_key(encoded: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(encoded.encode())
    except ValueError:
        raise MasterKeyError(detail="master key must be URL-safe base64") from None
    if len(key) != 32:
        raise MasterKeyError(detail="master key must decode to 32 bytes")
    return key


def new_master_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def keyring_from_env(env: Mapping[str, str]) -> Keyring:
    """The keyring the settings name: a directory (`KEYRING_DIR`, with `MASTER_KEY` serving
    version 1 where a deployment still has one), or the master key alone (no rotation)."""
    encoded, directory = env.get("MASTER_KEY") or "", env.get("KEYRING_DIR") or ""
    master_key = decode_master_key(encoded) if encoded else None
    try:
        if directory:
            return FileKeyring(Path(directory), master_key)
    except KeyringError as error:
        raise MasterKeyError(detail=str(error)) from None
    if master_key is None:
        raise MasterKeyError(detail="configure LIFECYCLE_KEYRING_DIR or LIFECYCLE_MASTER_KEY")
    return MasterKeyring(master_key)


def keyed_id(key: bytes, value: str) -> UUID:
    """A stable id for a value that nobody without the key can recompute."""
    return UUID(bytes=hmac.new(key, value.encode(), hashlib.sha256).digest()[:16])


def holder_token(data_key: bytes, claim_id: UUID) -> str:
    """Who holds an e-mail claim, as only the holder's own data key can say (see
    lifecycle.email_claim.EmailClaim): unlinkable once that key is destroyed."""
    return hmac.new(data_key, b"email-claim|" + claim_id.bytes, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class StoredEventWithKey(StoredEvent):
    """A `Registered` event with its account's new data key, wrapped: the recorder inserts
    the key row in the transaction that stores the event (see lifecycle.recorders)."""

    wrapped_key: bytes


class KeyVault:
    """Per-account data keys, wrapped by the keyring's current KEK, cached briefly in memory.

    A key whose wrapping version has been destroyed reads as destroyed (None): that is what
    a restored copy from before a rotation holds once the retention has passed."""

    # Another process may destroy a key at any moment; a cached copy outlives that by at
    # most this long, while a replay or a load still looks each key up about once.
    CACHE_SECONDS = 1.0

    def __init__(
        self, database: Database, keyring: Keyring, cache_seconds: float = CACHE_SECONDS
    ) -> None:
        self.database = database
        self.keyring = keyring
        self._cache: OrderedDict[UUID, tuple[float, bytes | None]] = OrderedDict()
        self._cache_seconds = cache_seconds
        self._cache_size = 10_000
        self._lock = threading.Lock()
        # Keys made for accounts being registered (their claim holder is computed before the
        # mapper stores the key with `Registered`): used by `new_key` however many times the
        # event is mapped (a group-commit batch that fails is saved again request by
        # request), dropped when the registration ends (`drop_fresh`).
        self._fresh: OrderedDict[UUID, bytes] = OrderedDict()

    def new_key(self, account_id: UUID) -> tuple[bytes, bytes]:
        """A new account's data key and its wrapped form, to be stored with its first event.

        The key is cached at once: the id is new, so no other process can know it yet."""
        with self._lock:
            fresh = self._fresh.get(account_id)
        key = fresh or AESGCM.generate_key(bit_length=256)
        wrapped = self.keyring.wrap(key, account_id.bytes)
        self._remember(account_id, key)
        return key, wrapped

    def holder_token(self, account_id: UUID, claim_id: UUID, *, new: bool = False) -> str:
        """The account's holder token for a claim; `new`: for an account being registered,
        with the key its `Registered` event will store."""
        if new:
            with self._lock:
                key = self._fresh.get(account_id)
                if key is None:
                    key = self._fresh[account_id] = AESGCM.generate_key(bit_length=256)
                while len(self._fresh) > self._cache_size:
                    self._fresh.popitem(last=False)
        elif (found := self.find_key(account_id)) is not None:
            key = found
        else:
            raise KeyDestroyedError()
        return holder_token(key, claim_id)

    def create_key(self, account_id: UUID) -> bytes:
        """Store a data key on its own (a repair tool's path; registrations use `new_key`);
        refuses an id whose key was ever destroyed, keeps a key that already exists."""
        key, wrapped = self.new_key(account_id)
        db = self.database
        try:
            with db.transaction() as cursor:
                inserted = cursor.execute(
                    f"INSERT INTO {db.table(KEYS_TABLE)} (account_id, wrapped_key) "
                    "VALUES (%s, %s) ON CONFLICT (account_id) DO NOTHING",
                    (db.id_param(account_id), wrapped),
                ).rowcount
        except Exception as error:
            self.forget(account_id)
            if KEY_DESTROYED in str(error):
                raise KeyDestroyedError() from None
            raise
        if inserted:
            return key
        self.forget(account_id)
        found = self.find_key(account_id)
        if found is None:
            raise KeyDestroyedError()
        return found

    def remember_wrapped(self, account_id: UUID, wrapped: bytes | None) -> bytes | None:
        """Cache a key read along with its account's events (None: it has none); returns it
        (None too when the KEK version that wrapped it was destroyed)."""
        key = None if wrapped is None else self.unwrap(account_id, wrapped)
        self._remember(account_id, key)
        return key

    def _remember(self, account_id: UUID, key: bytes | None) -> None:
        with self._lock:
            self._cache[account_id] = (time.monotonic() + self._cache_seconds, key)
            self._cache.move_to_end(account_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def find_key(self, account_id: UUID) -> bytes | None:
        """The account's data key, or None once it was destroyed."""
        with self._lock:
            cached = self._cache.get(account_id)
            if cached and cached[0] > time.monotonic():
                self._cache.move_to_end(account_id)
                return cached[1]
        return self.prefetch([account_id]).get(account_id)

    def prefetch(self, account_ids: Iterable[UUID]) -> dict[UUID, bytes | None]:
        """Look up many keys in one query (a relay batch, a replay page) into the cache;
        returns those it looked up (not those still cached).

        An id without a key is cached as None too: a key commits with its account's first
        event, so a missing one was destroyed and cannot come back.
        """
        now = time.monotonic()
        with self._lock:
            wanted = {
                account_id
                for account_id in account_ids
                if not ((cached := self._cache.get(account_id)) and cached[0] > now)
            }
        if not wanted:
            return {}
        db = self.database
        where, params = db.any_of("account_id", [db.id_param(a) for a in wanted])
        with db.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT account_id, wrapped_key FROM {db.table(KEYS_TABLE)} WHERE {where}",
                params,
            ).fetchall()
        wrapped = {db.to_uuid(row[0]): bytes(row[1]) for row in rows}
        keys = {
            account_id: (
                self.unwrap(account_id, wrapped[account_id]) if account_id in wrapped else None
            )
            for account_id in wanted
        }
        with self._lock:
            for account_id, key in keys.items():
                self._cache[account_id] = (now + self._cache_seconds, key)
                self._cache.move_to_end(account_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return keys

    def unwrap(self, account_id: UUID, wrapped: bytes) -> bytes | None:
        """The data key, or None when the KEK version that wrapped it was destroyed."""
        try:
            return self.keyring.unwrap(wrapped, account_id.bytes)
        except KeyVersionDestroyedError:
            return None

    def drop_fresh(self, account_id: UUID) -> None:
        with self._lock:
            self._fresh.pop(account_id, None)

    def forget(self, account_id: UUID) -> None:
        with self._lock:
            self._cache.pop(account_id, None)
            self._fresh.pop(account_id, None)

    def destroy_keys_of_purged_accounts(self, also_purged: Iterable[UUID] = ()) -> int:
        """Re-shred after a backup restore: every account known to be purged loses its key.

        Known purged: a Purged event in the store, a tombstone, or an id from outside the
        restored database (`also_purged`, e.g. read from the lifecycle topic).
        """
        db = self.database
        with db.transaction() as cursor:
            purged = {
                row[0]
                for row in cursor.execute(
                    f"SELECT originator_id FROM {db.events_table} WHERE topic = %s "
                    f"UNION SELECT account_id FROM {db.table('destroyed_keys')}",
                    (event_names.PURGED,),
                ).fetchall()
            }
            purged |= {db.id_param(account_id) for account_id in also_purged}
            destroyed = 0
            for account_id in sorted(purged, key=str):
                cursor.execute(
                    f"DELETE FROM {db.table(KEYS_TABLE)} WHERE account_id = %s", (account_id,)
                )
                destroyed += cursor.rowcount
                cursor.execute(
                    f"INSERT INTO {db.table('destroyed_keys')} (account_id) VALUES (%s) "
                    "ON CONFLICT DO NOTHING",
                    (account_id,),
                )
        with self._lock:
            self._cache.clear()
        return destroyed

    def is_destroyed(self, account_id: UUID) -> bool:
        db = self.database
        with db.transaction(commit=False) as cursor:
            row = cursor.execute(
                f"SELECT 1 FROM {db.table('destroyed_keys')} WHERE account_id = %s",
                (db.id_param(account_id),),
            ).fetchone()
        return row is not None


class PersonalDataMapper(Mapper[UUID]):
    """Seals each event's `personal_fields` with its account's key; reads them back redacted
    once the key is gone, so replay after purge works and shows the lifecycle facts.
    """

    def __init__(self, transcoder: Transcoder, vault: KeyVault) -> None:
        super().__init__(transcoder=transcoder)
        self.vault = vault

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        fields: tuple[str, ...] = getattr(type(domain_event), "personal_fields", ())
        state = dict(vars(domain_event))
        # An absent value (None) says nothing about the person, so it stays as it is.
        present = [name for name in fields if state.get(name) is not None]
        if not present:
            return super().to_stored_event(domain_event)
        account_id: UUID = state["originator_id"]
        personal = {name: state.pop(name) for name in present}
        wrapped_key: bytes | None = None
        if isinstance(domain_event, Account.Registered):
            key, wrapped_key = self.vault.new_key(account_id)
        elif (found := self.vault.find_key(account_id)) is not None:
            key = found
        else:
            raise KeyDestroyedError()
        associated = _associated_data(account_id, state["originator_version"], present)
        sealed = seal(key, self.transcoder.encode(personal), associated)
        state[SEALED_FIELD] = {"fields": present, "data": base64.b64encode(sealed).decode()}
        shell = object.__new__(type(domain_event))
        object.__setattr__(shell, "__dict__", state)
        stored = super().to_stored_event(shell)
        if wrapped_key is None:
            return stored
        return StoredEventWithKey(
            stored.originator_id,
            stored.originator_version,
            stored.topic,
            stored.state,
            wrapped_key=wrapped_key,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        return self._decoded(stored_event, opened=True)

    def to_unopened_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        """The event with its sealed personal values left sealed (read as redacted), for a
        reader that needs none of them: no key looked up or unwrapped, nothing decrypted."""
        return self._decoded(stored_event, opened=False)

    def _decoded(self, stored_event: StoredEvent, *, opened: bool) -> DomainEventProtocol[UUID]:
        domain_event = super().to_domain_event(stored_event)
        self.open_values(domain_event.__dict__, opened=opened)
        return domain_event

    def open_values(self, state: dict[str, Any], *, opened: bool = True) -> None:
        """An event's decoded values (its originator id and version set, upcast) made as the
        event reads: tracing metadata dropped, personal values opened with the account's key,
        or `[redacted]` when it is gone or `opened` is False. Shared by the event objects
        above and by lifecycle.stored_fold, which folds the log without building them."""
        tracing.strip(state)  # metadata stored with the event, not the event's own
        sealed = state.pop(SEALED_FIELD, None)
        if sealed is None:
            return
        fields: list[str] = sealed["fields"]
        account_id: UUID = state["originator_id"]
        key = self.vault.find_key(account_id) if opened else None
        if key is None:
            state.update(dict.fromkeys(fields, REDACTED))
            return
        version: int = state["originator_version"]
        associated = _associated_data(account_id, version, fields)
        try:
            plaintext = open_sealed(key, binascii.a2b_base64(sealed["data"]), associated)
        except InvalidTag:
            raise MapperDeserialisationError(
                f"sealed personal fields of event {version} of {account_id} fail authentication"
            ) from None
        state.update(self.transcoder.decode(plaintext))


def _associated_data(account_id: UUID, version: int, fields: list[str]) -> bytes:
    """Binds sealed values to their event, so they cannot be moved to another one."""
    return b"|".join([account_id.bytes, str(version).encode(), ",".join(fields).encode()])
