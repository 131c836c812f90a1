"""KEK rotation: every live data key re-wrapped under a new version, online, in batches; a
retired version destroyed once the retention (backups, WAL archives) has passed.

Rotation is resumable by construction: each batch is its own transaction, and the state that
says what is left is the data itself (each wrapped key records its version). A rotation killed
with `kill -9` is run again: it finds a version newer than some un-retired older one, creates
none, and re-wraps what still names an older version. Each update is a compare-and-set on the
old wrapped bytes, so a concurrent purge (the trigger deletes the row) or a registration
(written under the current version already) is never undone.

The policy's two durations make the bound a receipt states: a version is superseded at the
latest `rotation` after it was created (rotation on a schedule), retired when the re-wrap is
done, and destroyed `retention` after that.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lifecycle.crypto import KEYS_TABLE, KeyVault
from lifecycle.keyring import PURPOSES, FileKeyring, KeyPolicy, wrapped_version
from lifecycle.logs import get_logger

log = get_logger(__name__)

Progress = Callable[[int, int], None]
# Passes over the table before giving up on stragglers (keys a process still wrapped under
# the old version while the rotation ran); `keys destroy` re-wraps any left before it destroys.
MAX_PASSES = 5


@dataclass
class RotationReport:
    version: int
    created: bool
    rewrapped: int = 0
    scanned: int = 0
    passes: int = 0
    retired: tuple[int, ...] = ()
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        rate = self.rewrapped / self.seconds if self.seconds else 0.0
        return {
            "version": self.version,
            "created": self.created,
            "rewrapped": self.rewrapped,
            "scanned": self.scanned,
            "passes": self.passes,
            "retired": list(self.retired),
            "seconds": round(self.seconds, 3),
            "keys_per_second": round(rate, 1),
        }


class KeyRotation:
    def __init__(
        self,
        vault: KeyVault,
        policy: KeyPolicy | None = None,
        *,
        batch_size: int = 500,
        progress: Progress | None = None,
    ) -> None:
        self.vault = vault
        self.keyring = vault.keyring
        self.database = vault.database
        self.policy = policy or KeyPolicy()
        self.batch_size = batch_size
        self.progress = progress

    def rotate(self) -> RotationReport:
        """Create a version (unless an unfinished rotation is resumed), re-wrap every live
        key under it, retire the older versions."""
        started = time.monotonic()
        keyring = self.keyring
        current = keyring.current_version("kek")
        unfinished = [
            v.version
            for v in keyring.versions("kek")
            if v.live and v.retired_at is None and v.version < current
        ]
        created = not unfinished
        if created:
            if isinstance(keyring, FileKeyring):
                # The claim and signing keys outlive the master key: copied in before it goes.
                keyring.detach_from_master("claim")
                keyring.detach_from_master("signing")
            current = keyring.create_version("kek")
        report = RotationReport(version=current, created=created)
        log.info("keys.rotation_started", version=current, resumed=not created)
        for _ in range(MAX_PASSES):
            report.passes += 1
            scanned, rewrapped = self._rewrap_pass()
            report.scanned += scanned
            report.rewrapped += rewrapped
            if rewrapped == 0:
                break
        retired = []
        if self.count_older(current) == 0:
            for version in keyring.versions("kek"):
                if version.live and version.retired_at is None and version.version < current:
                    keyring.retire("kek", version.version)
                    retired.append(version.version)
        report.retired = tuple(retired)
        report.seconds = time.monotonic() - started
        log.info("keys.rotation_finished", **report.as_dict())
        return report

    def new_signing_version(self) -> int:
        """A new receipt signing version (receipts signed from now on name its key id; the
        older public keys stay published). A KEK rotation never needs this, nor the reverse."""
        if isinstance(self.keyring, FileKeyring):
            self.keyring.detach_from_master("signing")
        version = self.keyring.create_version("signing")
        log.info("keys.signing_version_created", version=version)
        return version

    def _rewrap_pass(self) -> tuple[int, int]:
        """One keyset walk over the key table; each batch re-wrapped in one transaction."""
        total = self._count()
        scanned = rewrapped = 0
        for rows in self._pages():
            scanned += len(rows)
            rewrapped += self._rewrap(rows)
            if self.progress is not None:
                self.progress(scanned, max(total, scanned))
            log.info("keys.rotation_progress", scanned=scanned, total=total, rewrapped=rewrapped)
        return scanned, rewrapped

    def _pages(self) -> Iterator[list[tuple[Any, bytes]]]:
        """The key table in account-id order, a batch at a time (each read on its own)."""
        db, table = self.database, self.database.table(KEYS_TABLE)
        last: Any = None
        while True:
            after = "" if last is None else "WHERE account_id > %s "
            with db.transaction(commit=False) as cursor:
                rows = cursor.execute(
                    f"SELECT account_id, wrapped_key FROM {table} {after}"
                    "ORDER BY account_id LIMIT %s",
                    (() if last is None else (last,)) + (self.batch_size,),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [(account_id, bytes(wrapped)) for account_id, wrapped in rows]

    def _rewrap(self, rows: list[tuple[Any, ...]]) -> int:
        current = self.keyring.current_version("kek")
        changes: list[tuple[Any, bytes, bytes]] = []
        for account_id, raw in rows:
            old = bytes(raw)
            if wrapped_version(old) >= current:
                continue
            aad = self.database.to_uuid(account_id).bytes
            changes.append((account_id, self.keyring.wrap(self.keyring.unwrap(old, aad), aad), old))
        if not changes:
            return 0
        db, table = self.database, self.database.table(KEYS_TABLE)
        changed, params = db.dialect.rows(
            [("account_id", db.id_type), ("new", "bytea"), ("old", "bytea")], changes
        )
        with db.transaction() as cursor:
            cursor.execute(
                f"UPDATE {table} AS k SET wrapped_key = c.new FROM ({changed}) AS c "
                "WHERE k.account_id = c.account_id AND k.wrapped_key = c.old",
                params,
            )
            return cursor.rowcount

    def _count(self) -> int:
        with self.database.transaction(commit=False) as cursor:
            row = cursor.execute(
                f"SELECT COUNT(*) FROM {self.database.table(KEYS_TABLE)}"
            ).fetchone()
        return int(row[0]) if row else 0

    def count_older(self, version: int) -> int:
        """Live keys still wrapped under a version older than `version` (one walk)."""
        return sum(self.versions_in_use().get(v, 0) for v in range(1, version))

    def versions_in_use(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for rows in self._pages():
            for _, wrapped in rows:
                version = wrapped_version(wrapped)
                counts[version] = counts.get(version, 0) + 1
        return counts

    def destroy_due(self, now: datetime | None = None) -> list[int]:
        """Destroy every retired KEK version whose retention has passed; a key still under
        one (a straggler) is re-wrapped first. Returns the versions destroyed."""
        now = now or datetime.now(UTC)
        due = [
            v
            for v in self.keyring.versions("kek")
            if v.live and v.retired_at is not None and v.retired_at + self.policy.retention <= now
        ]
        if not due:
            return []
        current = self.keyring.current_version("kek")
        if self.count_older(current):
            self._rewrap_pass()
        destroyed = []
        in_use = self.versions_in_use()
        for version in due:
            if in_use.get(version.version):
                log.warning("keys.destroy_refused", version=version.version, reason="in_use")
                continue
            self.keyring.destroy("kek", version.version)
            destroyed.append(version.version)
            log.info("keys.version_destroyed", purpose="kek", version=version.version)
        return destroyed

    def status(self) -> list[dict[str, Any]]:
        counts = self.versions_in_use()
        return [
            {
                "purpose": v.purpose,
                "version": v.version,
                "origin": v.origin,
                "created_at": v.created_at.isoformat(),
                "retired_at": v.retired_at.isoformat() if v.retired_at else None,
                "destroyed_at": v.destroyed_at.isoformat() if v.destroyed_at else None,
                "destroy_by": _iso(self.policy.destroy_by(v)) if v.purpose == "kek" else None,
                "data_keys": counts.get(v.version, 0) if v.purpose == "kek" else None,
            }
            for purpose in PURPOSES
            for v in self.keyring.versions(purpose)
        ]


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
