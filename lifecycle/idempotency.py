"""Idempotency keys (the IETF `Idempotency-Key` header draft): a request's first answer, kept.

A client that did not hear an answer (a timeout, a cut connection) sends the same request
again with the same key and gets the first answer back instead of a second effect. Each key
belongs to the caller's token (`scope`: the sha256 digest configuration already holds); the
first request's status, body and `Location` are kept for `ttl_s` (default 24 h).

`begin` decides, in one transaction, what a request with a key is: `Started` (first, now
running: the caller runs it and `finish`es or `abandon`s it), `Replay` (answered before, same
payload), `KeyReused` (the key was used with another payload: 422) or `InFlight` (the first is
still running: 409). A running request whose process died is taken over after `LEASE_S`.

A resting place, registered in `lifecycle/audit/registry.py`: answers hold ids, statuses and
codes only (problem documents never echo a value), and the payload is kept as an HMAC under a
key derived from the master key, never as text. The rows of an account are deleted when it is
purged (`erase_account`); every row is deleted once expired.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from lifecycle.storage import Database

TABLE = "idempotency_keys"
DEFAULT_TTL_S = 24 * 3600.0
# A request still running after this long is taken to have died with its process.
LEASE_S = 120.0
# Expired rows are deleted at most this often per process (one statement).
SWEEP_EVERY_S = 60.0


@dataclass(frozen=True)
class Answer:
    """What a route answered: kept as it was sent, replayed as it is."""

    status: int
    body: bytes
    content_type: str
    location: str | None = None

    def encode(self) -> bytes:
        return json.dumps(
            {
                "status": self.status,
                "body": self.body.decode(),
                "content_type": self.content_type,
                "location": self.location,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Answer:
        found = json.loads(data)
        return cls(
            status=int(found["status"]),
            body=str(found["body"]).encode(),
            content_type=str(found["content_type"]),
            location=found["location"],
        )


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class Replay:
    answer: Answer


@dataclass(frozen=True)
class KeyReused:
    pass


@dataclass(frozen=True)
class InFlight:
    pass


Begun = Started | Replay | KeyReused | InFlight


class IdempotencyStore:
    """First answers per (caller's token, key), in the service's own database."""

    def __init__(
        self,
        database: Database,
        fingerprint_key: bytes,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = database
        self._fingerprint_key = fingerprint_key
        self.ttl_s = ttl_s
        self.clock = clock
        self._swept_at = float("-inf")
        self.table = database.table(TABLE)

    def fingerprint(self, method: str, path: str, body: bytes) -> bytes:
        """The request's identity without its values: an HMAC of method, path and body
        (JSON bodies compared by meaning, so key order and spacing do not matter)."""
        try:
            canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
            payload = canonical.encode()
        except ValueError:
            payload = body
        message = b"\n".join([method.upper().encode(), path.encode(), payload])
        return hmac.new(self._fingerprint_key, message, hashlib.sha256).digest()

    def begin(self, scope: str, key: str, fingerprint: bytes) -> Begun:
        now = self.clock()
        self._sweep(now)
        with self.database.transaction() as cursor:
            # An expired key, or a run abandoned by a dead process, is free again.
            cursor.execute(
                f"DELETE FROM {self.table} WHERE scope = %s AND idem_key = %s "
                "AND (expires_at <= %s OR (status IS NULL AND started_at <= %s))",
                (scope, key, now, now - LEASE_S),
            )
            cursor.execute(
                f"INSERT INTO {self.table} (scope, idem_key, fingerprint, started_at, "
                "expires_at) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (scope, key, fingerprint, now, now + self.ttl_s),
            )
            if cursor.rowcount == 1:
                return Started()
            row = cursor.execute(
                f"SELECT fingerprint, status, answer FROM {self.table} "
                "WHERE scope = %s AND idem_key = %s",
                (scope, key),
            ).fetchone()
        if row is None:  # deleted between the two statements (an account's purge)
            return InFlight()
        stored_fingerprint, status, answer = row
        if not hmac.compare_digest(bytes(stored_fingerprint), fingerprint):
            return KeyReused()
        if status is None or answer is None:
            return InFlight()
        return Replay(Answer.decode(bytes(answer)))

    def finish(self, scope: str, key: str, answer: Answer, account_id: UUID | None) -> None:
        """Keep the first answer; `account_id` ties the row to the account it concerns."""
        db = self.database
        with db.transaction() as cursor:
            cursor.execute(
                f"UPDATE {self.table} SET status = %s, answer = %s, account_id = %s, "
                "expires_at = %s WHERE scope = %s AND idem_key = %s",
                (
                    answer.status,
                    answer.encode(),
                    None if account_id is None else str(account_id),
                    self.clock() + self.ttl_s,
                    scope,
                    key,
                ),
            )

    def abandon(self, scope: str, key: str) -> None:
        """Forget a run that kept no answer (a server error): a retry runs again."""
        with self.database.transaction() as cursor:
            cursor.execute(
                f"DELETE FROM {self.table} WHERE scope = %s AND idem_key = %s AND status IS NULL",
                (scope, key),
            )

    def erase_account(self, account_id: UUID) -> int:
        """Delete every kept answer about an account (at its purge); how many."""
        db = self.database
        with db.transaction() as cursor:
            cursor.execute(f"DELETE FROM {self.table} WHERE account_id = %s", (str(account_id),))
            return cursor.rowcount

    def _sweep(self, now: float) -> None:
        if now - self._swept_at < SWEEP_EVERY_S:
            return
        self._swept_at = now
        with self.database.transaction() as cursor:
            cursor.execute(f"DELETE FROM {self.table} WHERE expires_at <= %s", (now,))
