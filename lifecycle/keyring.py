"""Versioned keys kept outside the database: the key-encryption keys (KEKs) that wrap every
per-account data key, the e-mail claim key and the receipt signing key.

Why versions, and why not derived from one secret: a data key destroyed at `Purged` stays
recoverable from any old copy of its wrapped form (a WAL segment, a backup, a dump) for as long
as a KEK that wrapped it exists. A KEK version that is destroyed must therefore really be gone,
which it cannot be if every version is derivable from a secret that stays. So each version
here is random key material of its own, and destroying it deletes that material.

Three purposes, each with versions of its own (a KEK rotation changes neither of the others):
- `kek`: wraps data keys (AES-GCM, the account id as associated data); a wrapped key records
  the version that wrapped it (`VERSION_HEADER`);
- `claim`: the HMAC key of e-mail claim ids (one version: a claim id must stay the same);
- `signing`: the Ed25519 seed of erasure receipts (receipts name their key id; every version's
  public key stays published).

`Keyring` is the narrow interface a KMS or a secrets manager can implement (wrap, unwrap,
current version, versions, create, retire, destroy, secret). `FileKeyring` is the embedded
default: a directory of one file per version, each created exclusively with mode 0600, refused
if anyone else may read it or someone else owns it. The legacy `LIFECYCLE_MASTER_KEY` is served
as version 1 of each purpose, derived as before (HKDF), so existing wrapped keys, claim ids and
receipts keep working; see the README's key hierarchy for the migration off it.

Infrastructure: imports nothing of the service's core (the consumer kit uses it too).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

Purpose = Literal["kek", "claim", "signing"]
PURPOSES: tuple[Purpose, ...] = ("kek", "claim", "signing")
# The HKDF purposes the master key always used: version 1 of each, unchanged.
LEGACY_INFO: dict[Purpose, str] = {
    "kek": "lifecycle/data-key-wrapping",
    "claim": "lifecycle/email-claim-id",
    "signing": "lifecycle/erasure-receipt-signing",
}
NONCE_BYTES = 12
KEY_BYTES = 32
# A wrapped key is b"v" + six ASCII digits of the KEK version + nonce + ciphertext. A wrapped
# key of the master-key era has no header (exactly 60 bytes) and is version 1.
VERSION_HEADER = 7
LEGACY_WRAPPED_LENGTH = NONCE_BYTES + KEY_BYTES + 16
STATE_FILE = "state.json"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class KeyringError(Exception):
    """A keyring that cannot be used as configured; the message names no secret."""


class KeyVersionDestroyedError(KeyringError):
    """The version that wrapped this key has been destroyed: it opens nothing any more."""


@dataclass(frozen=True)
class KeyVersion:
    purpose: Purpose
    version: int
    created_at: datetime
    origin: Literal["file", "master", "kms"] = "file"
    retired_at: datetime | None = None
    destroyed_at: datetime | None = None
    # False for the master key alone (no keyring directory): nothing can supersede it.
    rotatable: bool = True

    @property
    def live(self) -> bool:
        return self.destroyed_at is None


@dataclass(frozen=True)
class KeyPolicy:
    rotation: timedelta = timedelta(days=90)
    retention: timedelta = timedelta(days=35)

    def destroy_by(self, version: KeyVersion) -> datetime | None:
        """When this version is (or will be) destroyed under the policy; None: never (a
        master key without a keyring cannot be rotated away)."""
        if version.destroyed_at is not None:
            return version.destroyed_at
        if version.retired_at is not None:
            return version.retired_at + self.retention
        if not version.rotatable:
            return None
        return version.created_at + self.rotation + self.retention


class Keyring(Protocol):
    """What the service asks of wherever its keys live (a directory, a KMS)."""

    def current_version(self, purpose: Purpose = "kek") -> int: ...

    def versions(self, purpose: Purpose = "kek") -> list[KeyVersion]: ...

    def wrap(self, plaintext: bytes, associated: bytes) -> bytes:
        """`plaintext` sealed under the current KEK; the result records the version."""
        ...

    def unwrap(self, wrapped: bytes, associated: bytes) -> bytes:
        """KeyVersionDestroyedError when the version that wrapped it is gone."""
        ...

    def secret(self, purpose: Purpose, version: int) -> bytes:
        """The material of a `claim` or `signing` version (never of a KEK)."""
        ...

    def create_version(self, purpose: Purpose) -> int:
        """A new version, current from now on."""
        ...

    def retire(self, purpose: Purpose, version: int) -> None:
        """Nothing live uses it any more; destroy it once the retention has passed."""
        ...

    def destroy(self, purpose: Purpose, version: int) -> None: ...


def wrapped_version(wrapped: bytes) -> int:
    """The KEK version that wrapped this data key."""
    if len(wrapped) == LEGACY_WRAPPED_LENGTH:
        return 1
    header = wrapped[:VERSION_HEADER]
    if header[:1] != b"v" or not header[1:].isdigit():
        raise KeyringError("wrapped key has no version header")
    return int(header[1:])


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)


def derive(master_key: bytes, info: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info.encode()).derive(
        master_key
    )


def _now() -> datetime:
    return datetime.now(UTC)


class _VersionedKeyring:
    """Wrap and unwrap over versions whose material `_material` finds (shared by both kinds)."""

    def _material(self, purpose: Purpose, version: int) -> bytes:
        raise NotImplementedError

    def versions(self, purpose: Purpose = "kek") -> list[KeyVersion]:
        raise NotImplementedError

    def current_version(self, purpose: Purpose = "kek") -> int:
        live = [v.version for v in self.versions(purpose) if v.live and v.retired_at is None]
        if not live:
            raise KeyringError(f"no live {purpose} version")
        return max(live)

    def wrap(self, plaintext: bytes, associated: bytes) -> bytes:
        version = self.current_version("kek")
        sealed = seal(self._material("kek", version), plaintext, associated)
        if version == 1:
            return sealed  # the master-key era's shape, so older readers still open it
        return b"v%06d" % version + sealed

    def unwrap(self, wrapped: bytes, associated: bytes) -> bytes:
        version = wrapped_version(wrapped)
        body = wrapped if len(wrapped) == LEGACY_WRAPPED_LENGTH else wrapped[VERSION_HEADER:]
        try:
            return open_sealed(self._material("kek", version), body, associated)
        except InvalidTag:
            raise KeyringError(f"wrapped key does not open under kek version {version}") from None

    def secret(self, purpose: Purpose, version: int) -> bytes:
        if purpose == "kek":
            raise KeyringError("KEK material never leaves the keyring")
        return self._material(purpose, version)


class MasterKeyring(_VersionedKeyring):
    """Only the legacy master key: version 1 of each purpose, derived; nothing to rotate to.
    (Rotation needs a place for new versions: `LIFECYCLE_KEYRING_DIR`.)"""

    def __init__(self, master_key: bytes) -> None:
        # Derived once: every account load unwraps a key through `_material`.
        self._materials = {
            purpose: derive(master_key, LEGACY_INFO[purpose]) for purpose in PURPOSES
        }

    def _material(self, purpose: Purpose, version: int) -> bytes:
        if version != 1:
            raise KeyVersionDestroyedError(f"{purpose} version {version} is not in this keyring")
        return self._materials[purpose]

    def versions(self, purpose: Purpose = "kek") -> list[KeyVersion]:
        return [KeyVersion(purpose, 1, EPOCH, origin="master", rotatable=False)]

    def create_version(self, purpose: Purpose) -> int:
        raise KeyringError("rotation needs LIFECYCLE_KEYRING_DIR: new versions are kept there")

    def retire(self, purpose: Purpose, version: int) -> None:
        self.create_version(purpose)

    def destroy(self, purpose: Purpose, version: int) -> None:
        self.create_version(purpose)


class FileKeyring(_VersionedKeyring):
    """One file per version in a private directory; `state.json` says which versions exist,
    when each was created, retired and destroyed (no secret in it).

    Other processes (API workers, relay, erasure) see a rotation within one `stat` of the
    state file: each read of the state checks whether it changed."""

    def __init__(self, directory: Path, master_key: bytes | None = None) -> None:
        self.directory = directory
        self._master_key = master_key
        self._lock = threading.Lock()
        self._state: dict[Purpose, dict[int, KeyVersion]] = {}
        self._stamp: tuple[int, int] | None = None
        self._materials: dict[tuple[Purpose, int], bytes] = {}
        self._open()

    # Setting up and checking the directory

    def _open(self) -> None:
        with suppress(FileExistsError):
            self.directory.mkdir(mode=0o700, parents=True)
        _check_private(self.directory, directory=True)
        if any(not versions for versions in self._current_state().values()) or not self._stamp:
            with self._writing():  # first use: version 1 of each purpose
                state = self._read_state()
                for purpose in PURPOSES:
                    if not state.get(purpose):
                        origin: Literal["file", "master"] = (
                            "master" if self._master_key is not None else "file"
                        )
                        if origin == "file":
                            self._write_material(purpose, 1, os.urandom(KEY_BYTES))
                        state[purpose] = {1: KeyVersion(purpose, 1, _now(), origin=origin)}
                self._write_state(state)
        if self._master_key is not None and not any(
            v.origin == "master" and v.live for p in PURPOSES for v in self.versions(p)
        ):
            raise KeyringError(
                "LIFECYCLE_MASTER_KEY is configured, but every version it served has been "
                "destroyed or copied into the keyring: remove it from the configuration"
            )

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time across processes (a lock file beside the state)."""
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read_state(self) -> dict[Purpose, dict[int, KeyVersion]]:
        """A copy of the state, for a writer to change and write back."""
        return {p: dict(v) for p, v in self._current_state().items()}

    def _current_state(self) -> dict[Purpose, dict[int, KeyVersion]]:
        """The state as last read (read again when the file changed); readers only, no copy:
        every account load reaches it through `_material`."""
        path = self.directory / STATE_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp == self._stamp:
                return self._state
        raw = json.loads(path.read_text())
        state: dict[Purpose, dict[int, KeyVersion]] = {}
        for purpose in PURPOSES:
            state[purpose] = {
                int(number): KeyVersion(
                    purpose,
                    int(number),
                    datetime.fromisoformat(entry["created_at"]),
                    origin=entry.get("origin", "file"),
                    retired_at=_when(entry.get("retired_at")),
                    destroyed_at=_when(entry.get("destroyed_at")),
                )
                for number, entry in raw.get(purpose, {}).items()
            }
        with self._lock:
            self._state, self._stamp = state, stamp
        return state

    def _write_state(self, state: dict[Purpose, dict[int, KeyVersion]]) -> None:
        document = {
            purpose: {
                str(v.version): {
                    "created_at": v.created_at.isoformat(),
                    "origin": v.origin,
                    "retired_at": v.retired_at.isoformat() if v.retired_at else None,
                    "destroyed_at": v.destroyed_at.isoformat() if v.destroyed_at else None,
                }
                for v in versions.values()
            }
            for purpose, versions in state.items()
        }
        temporary = self.directory / f".{STATE_FILE}.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        _write_private(temporary, json.dumps(document, indent=2, sort_keys=True).encode())
        os.replace(temporary, self.directory / STATE_FILE)
        _fsync_directory(self.directory)

    def _file(self, purpose: Purpose, version: int) -> Path:
        return self.directory / f"{purpose}-{version}.key"

    def _write_material(self, purpose: Purpose, version: int, material: bytes) -> None:
        _write_private(self._file(purpose, version), base64.urlsafe_b64encode(material))
        _fsync_directory(self.directory)

    # Reading

    def versions(self, purpose: Purpose = "kek") -> list[KeyVersion]:
        return sorted(self._current_state().get(purpose, {}).values(), key=lambda v: v.version)

    def _material(self, purpose: Purpose, version: int) -> bytes:
        with self._lock:
            found = self._materials.get((purpose, version))
        entry = self._current_state().get(purpose, {}).get(version)
        if entry is None or not entry.live:
            with self._lock:
                self._materials.pop((purpose, version), None)
            raise KeyVersionDestroyedError(f"{purpose} version {version} is destroyed or unknown")
        if found is not None:
            return found
        if entry.origin == "master":
            if self._master_key is None:
                raise KeyringError(f"{purpose} version 1 needs LIFECYCLE_MASTER_KEY")
            material = derive(self._master_key, LEGACY_INFO[purpose])
        else:
            material = base64.urlsafe_b64decode(read_private(self._file(purpose, version)))
        with self._lock:
            self._materials[(purpose, version)] = material
        return material

    # Changing

    def create_version(self, purpose: Purpose) -> int:
        with self._writing():
            state = self._read_state()
            version = max(state[purpose], default=0) + 1
            self._write_material(purpose, version, os.urandom(KEY_BYTES))
            state[purpose][version] = KeyVersion(purpose, version, _now())
            self._write_state(state)
        return version

    def detach_from_master(self, purpose: Purpose) -> bool:
        """Copy a master-derived version into the keyring, so it outlives the master key
        (the claim and signing keys before the master key goes); True if one was copied."""
        with self._writing():
            state = self._read_state()
            copied = False
            for version in list(state[purpose].values()):
                if version.origin == "master" and version.live:
                    material = self._material(purpose, version.version)
                    self._write_material(purpose, version.version, material)
                    state[purpose][version.version] = replace(version, origin="file")
                    copied = True
            self._write_state(state)
        return copied

    def retire(self, purpose: Purpose, version: int) -> None:
        with self._writing():
            state = self._read_state()
            entry = state[purpose][version]
            if entry.retired_at is None:
                state[purpose][version] = replace(entry, retired_at=_now())
                self._write_state(state)

    def destroy(self, purpose: Purpose, version: int) -> None:
        """Overwrite and delete the version's file (a master-derived version is marked
        destroyed: the master key itself must then leave the configuration)."""
        with self._writing():
            state = self._read_state()
            entry = state[purpose][version]
            path = self._file(purpose, version)
            if path.exists():
                size = path.stat().st_size
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
                try:
                    os.write(fd, b"\0" * size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                path.unlink()
                _fsync_directory(self.directory)
            state[purpose][version] = replace(
                entry, retired_at=entry.retired_at or _now(), destroyed_at=_now()
            )
            self._write_state(state)
        with self._lock:
            self._materials.pop((purpose, version), None)


def _when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


# Private files: created exclusively with mode 0600, refused when anyone else may read them.


def _write_private(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private(path: Path) -> str:
    """A key file's text, after checking that only its owner, this user, can read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyringError(f"key file {path.name} is missing") from None
    except OSError:
        raise KeyringError(f"key file {path.name} cannot be opened (a symbolic link?)") from None
    try:
        _check_mode(os.fstat(fd), path.name, directory=False)
        with os.fdopen(os.dup(fd)) as handle:
            return handle.read().strip()
    finally:
        os.close(fd)


def _check_private(path: Path, *, directory: bool) -> None:
    _check_mode(path.lstat(), path.name, directory=directory)


def _check_mode(st: os.stat_result, name: str, *, directory: bool) -> None:
    if directory != stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
        raise KeyringError(f"{name} is not a plain {'directory' if directory else 'file'}")
    if st.st_uid != os.geteuid():
        raise KeyringError(f"{name} is owned by another user")
    if st.st_mode & 0o077:
        raise KeyringError(
            f"{name} may be read by others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"it must be {'0700' if directory else '0600'}"
        )


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private_key_file(path: Path, material: bytes) -> bool:
    """Write a key file exclusively (mode 0600); False when it already existed."""
    try:
        _write_private(path, base64.urlsafe_b64encode(material))
    except FileExistsError:
        return False
    return True
