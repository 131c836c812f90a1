"""The keyring's files: private, exclusive, refused when anyone else may read them; versions
that are destroyed open nothing; the master key is a secret in the settings."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lifecycle.crypto import new_master_key
from lifecycle.errors import MasterKeyError
from lifecycle.keyring import (
    FileKeyring,
    KeyringError,
    KeyVersionDestroyedError,
    MasterKeyring,
    wrapped_version,
)
from lifecycle.settings import Settings

AAD = b"account"


def test_a_new_keyring_is_private_and_its_files_are_0600(tmp_path: Path) -> None:
    keyring = FileKeyring(tmp_path / "keys")

    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    files = sorted(p.name for p in (tmp_path / "keys").iterdir() if not p.name.startswith("."))
    assert files == ["claim-1.key", "kek-1.key", "signing-1.key", "state.json"]
    for name in files:
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600
    assert keyring.unwrap(keyring.wrap(b"k" * 32, AAD), AAD) == b"k" * 32


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    keyring = FileKeyring(tmp_path / "keys")
    wrapped = keyring.wrap(b"k" * 32, AAD)
    (tmp_path / "keys" / "kek-1.key").chmod(mode)

    with pytest.raises(KeyringError, match="may be read by others"):
        FileKeyring(tmp_path / "keys").unwrap(wrapped, AAD)


def test_a_directory_others_may_read_is_refused(tmp_path: Path) -> None:
    FileKeyring(tmp_path / "keys")
    (tmp_path / "keys").chmod(0o755)

    with pytest.raises(KeyringError, match="may be read by others"):
        FileKeyring(tmp_path / "keys")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_a_key_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    keyring = FileKeyring(tmp_path / "keys")
    wrapped = keyring.wrap(b"k" * 32, AAD)
    os.chown(tmp_path / "keys" / "kek-1.key", 65534, 65534)

    with pytest.raises(KeyringError, match="owned by another user"):
        FileKeyring(tmp_path / "keys").unwrap(wrapped, AAD)


def test_a_symbolic_link_in_place_of_a_key_file_is_refused(tmp_path: Path) -> None:
    keyring = FileKeyring(tmp_path / "keys")
    wrapped = keyring.wrap(b"k" * 32, AAD)
    target = tmp_path / "elsewhere.key"
    (tmp_path / "keys" / "kek-1.key").rename(target)
    (tmp_path / "keys" / "kek-1.key").symlink_to(target)

    with pytest.raises(KeyringError):
        FileKeyring(tmp_path / "keys").unwrap(wrapped, AAD)


def test_a_destroyed_version_opens_nothing_and_its_file_is_gone(tmp_path: Path) -> None:
    keyring = FileKeyring(tmp_path / "keys")
    old = keyring.wrap(b"k" * 32, AAD)
    assert keyring.create_version("kek") == 2
    new = keyring.wrap(b"k" * 32, AAD)
    assert (wrapped_version(old), wrapped_version(new)) == (1, 2)
    keyring.retire("kek", 1)
    keyring.destroy("kek", 1)

    assert not (tmp_path / "keys" / "kek-1.key").exists()
    for reader in (keyring, FileKeyring(tmp_path / "keys")):
        with pytest.raises(KeyVersionDestroyedError):
            reader.unwrap(old, AAD)
        assert reader.unwrap(new, AAD) == b"k" * 32


def test_the_master_key_serves_version_1_as_before_and_cannot_rotate(tmp_path: Path) -> None:
    master = MasterKeyring(os.urandom(32))
    wrapped = master.wrap(b"k" * 32, AAD)
    assert len(wrapped) == 60 and wrapped_version(wrapped) == 1  # the master-key era's shape
    with pytest.raises(KeyringError, match="LIFECYCLE_KEYRING_DIR"):
        master.create_version("kek")


def test_the_master_key_is_a_secret_in_the_settings(tmp_path: Path) -> None:
    key = new_master_key()
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.sqlite3'}", master_key=key)

    assert key not in repr(settings) and key not in str(settings.model_dump())
    assert settings.resolved_master_key() == key


def test_the_embedded_default_refuses_a_legacy_key_file_others_may_read(tmp_path: Path) -> None:
    legacy = tmp_path / "master.key"
    legacy.write_text(new_master_key())
    legacy.chmod(0o644)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'lifecycle.sqlite3'}")

    with pytest.raises(MasterKeyError):
        settings.application_env()
    legacy.chmod(0o600)
    env = settings.application_env()
    assert env["MASTER_KEY"] and env["KEYRING_DIR"] == str(tmp_path / "keys")
