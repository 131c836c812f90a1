"""Accounts this process just saved, kept briefly so the next command on one skips its load.

Safe with any number of processes because nothing is decided by the cache: a command run on
a cached account is trusted only when it recorded events and their save passed the store's
version check (its events take the versions after the cached one, so any event stored since,
by this process or another, makes the save conflict). A command that recorded nothing, or
that a rule refused, may have been answered from a stale copy, so it runs again on a fresh
load (`lifecycle.application.Accounts`); so does a conflicting one.

An account is taken out while a command runs on it (two threads never share one mutable
aggregate: the second loads its own), and put back after its save, unless a newer version is
there already. Entries hold decrypted personal values: they live no longer than the key they
were read with stays cached (`KeyVault.CACHE_SECONDS`, from the load), only active accounts
are kept, and a purge forgets its account.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from uuid import UUID

from lifecycle.account_terms import AccountStatus
from lifecycle.domain import Account

DEFAULT_SIZE = 10_000


class HotAccounts:
    """A bounded, briefly-lived map of account id to the account as last saved."""

    def __init__(self, seconds: float, size: int = DEFAULT_SIZE) -> None:
        self.seconds = seconds
        self.size = size
        self._entries: OrderedDict[UUID, tuple[float, Account]] = OrderedDict()
        self._lock = threading.Lock()
        # Counters, for tests and the bench.
        self.hits = 0
        self.misses = 0

    def take(self, account_id: UUID) -> tuple[float, Account] | None:
        """The cached account and when it expires, removed from the cache; None if absent or
        expired."""
        with self._lock:
            entry = self._entries.pop(account_id, None)
        if entry is None or entry[0] <= time.monotonic():
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, account: Account, expires: float | None = None) -> None:
        """Keep `account` as saved (or as loaded) until `expires` (default: `seconds` from
        now), unless the cache holds a newer version of it."""
        if self.seconds <= 0 or account.status is not AccountStatus.ACTIVE:
            return
        if account.pending_events:  # not saved: not a state the store holds
            return
        expires = time.monotonic() + self.seconds if expires is None else expires
        with self._lock:
            held = self._entries.get(account.id)
            if held is not None and held[1].version > account.version:
                return
            self._entries[account.id] = (expires, account)
            self._entries.move_to_end(account.id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def take_many(self, account_ids: Iterable[UUID]) -> dict[UUID, Account]:
        """`take` for many (a bulk command's): those held and not expired, under one lock."""
        now = time.monotonic()
        found: dict[UUID, Account] = {}
        with self._lock:
            for account_id in account_ids:
                entry = self._entries.pop(account_id, None)
                if entry is not None and entry[0] > now:
                    found[account_id] = entry[1]
        self.hits += len(found)
        return found

    def put_many(self, accounts: Iterable[Account]) -> None:
        """`put` for many, each kept for `seconds` from now, under one lock."""
        if self.seconds <= 0:
            return
        expires = time.monotonic() + self.seconds
        with self._lock:
            for account in accounts:
                if account.status is not AccountStatus.ACTIVE or account.pending_events:
                    continue
                held = self._entries.get(account.id)
                if held is not None and held[1].version > account.version:
                    continue
                self._entries[account.id] = (expires, account)
                self._entries.move_to_end(account.id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def forget(self, account_id: UUID) -> None:
        with self._lock:
            self._entries.pop(account_id, None)

    def __len__(self) -> int:
        return len(self._entries)
