"""Sealing to a public key: how a service's part of a data export crosses Kafka unreadable.

Each export has a fresh X25519 key pair; only the lifecycle service holds the private key
(wrapped by its keyring, destroyed when the export expires, is cancelled or the account is
purged). A service seals each chunk of its part to the export's public key:

    ephemeral X25519 key pair (fresh per chunk)
    shared = X25519(ephemeral private, export public)
    key = HKDF-SHA256(shared, salt = ephemeral public || export public, info = INFO)
    box = AES-256-GCM(key, random 96-bit nonce, chunk, associated data = the chunk's context)

The associated data binds the export, the account, the service, the part and the chunk's
place (`PartContext`), so a sealed chunk replayed into another export, another service's topic
or another position fails to open. Once the private key is destroyed, no saved copy of a part
opens again: nothing else derives the shared secret.

Infrastructure: imports only the contract (the consumer kit seals with it too).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.data_export import (
    CHUNK_BYTES,
    ExportFailureCode,
    ExportPartV1,
    SealedBoxV1,
    new_part_id,
)

INFO = b"lifecycle/data-export-part/v1"
NONCE_BYTES = 12
KEY_BYTES = 32
_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw


class SealedBoxError(Exception):
    """A box that does not open: tampered, sealed to another key or for another context, or
    malformed. The message names no content."""


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        raise SealedBoxError("not base64url") from None


def new_key_pair() -> tuple[bytes, str]:
    """A fresh export key pair: the private key (32 raw bytes, to be wrapped and stored) and
    the public key as the request carries it (base64url)."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return raw, public_key_of(raw)


def public_key_of(private_key: bytes) -> str:
    return b64url(
        X25519PrivateKey.from_private_bytes(private_key)
        .public_key()
        .public_bytes(_RAW, _RAW_PUBLIC)
    )


@dataclass(frozen=True)
class PartContext:
    """What a sealed chunk is bound to (its associated data)."""

    export_id: UUID
    account_id: UUID
    service: str
    part_id: UUID
    chunk: int = 0
    chunks: int = 1

    @classmethod
    def of(cls, part: ExportPartV1) -> PartContext:
        return cls(
            part.export_id, part.account_id, part.service, part.part_id, part.chunk, part.chunks
        )

    def associated(self) -> bytes:
        return b"|".join(
            [
                INFO,
                self.export_id.bytes,
                self.account_id.bytes,
                self.service.encode(),
                self.part_id.bytes,
                f"{self.chunk}/{self.chunks}".encode(),
            ]
        )


def _key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=ephemeral_public + recipient_public,
        info=INFO,
    ).derive(shared)


def seal(public_key: str, plaintext: bytes, context: PartContext) -> SealedBoxV1:
    """`plaintext` sealed to the export's public key (base64url), bound to `context`."""
    recipient_raw = unb64url(public_key)
    try:
        recipient = X25519PublicKey.from_public_bytes(recipient_raw)
    except ValueError:
        raise SealedBoxError("not an X25519 public key") from None
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = ephemeral.public_key().public_bytes(_RAW, _RAW_PUBLIC)
    key = _key(ephemeral.exchange(recipient), ephemeral_raw, recipient_raw)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, context.associated())
    return SealedBoxV1(
        ephemeral_public_key=b64url(ephemeral_raw),
        nonce=b64url(nonce),
        ciphertext=b64url(ciphertext),
    )


def open_box(private_key: bytes, box: SealedBoxV1, context: PartContext) -> bytes:
    """The plaintext; SealedBoxError when the box was tampered with, sealed to another key or
    bound to another context."""
    try:
        private = X25519PrivateKey.from_private_bytes(private_key)
        ephemeral_raw = unb64url(box.ephemeral_public_key)
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral_raw))
    except ValueError:
        raise SealedBoxError("not an X25519 key") from None
    recipient_raw = private.public_key().public_bytes(_RAW, _RAW_PUBLIC)
    key = _key(shared, ephemeral_raw, recipient_raw)
    nonce = unb64url(box.nonce)
    if len(nonce) != NONCE_BYTES:
        raise SealedBoxError("nonce of the wrong length")
    try:
        return AESGCM(key).decrypt(nonce, unb64url(box.ciphertext), context.associated())
    except InvalidTag:
        raise SealedBoxError("the box does not open with this key in this context") from None


def open_part(private_key: bytes, part: ExportPartV1) -> bytes:
    """One sealed chunk's plaintext, in the context its own fields name."""
    if part.sealed is None:
        raise SealedBoxError("a failed part holds nothing to open")
    return open_box(private_key, part.sealed, PartContext.of(part))


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    if not data:
        yield b""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def seal_part(
    public_key: str,
    section: bytes,
    *,
    export_id: UUID,
    account_id: UUID,
    service: str,
    part_version: int = 1,
    chunk_bytes: int = CHUNK_BYTES,
    produced_at: datetime | None = None,
) -> list[ExportPartV1]:
    """A service's whole section (its JSON bytes), as the chunked, sealed payloads to publish
    on its part topic, in order. A fresh `part_id` ties them together."""
    part_id = new_part_id()
    produced_at = produced_at or datetime.now(UTC)
    pieces = list(_chunks(section, chunk_bytes))
    parts = []
    for index, piece in enumerate(pieces):
        context = PartContext(export_id, account_id, service, part_id, index, len(pieces))
        parts.append(
            ExportPartV1(
                export_id=export_id,
                account_id=account_id,
                service=service,
                part_id=part_id,
                outcome="sealed",
                chunk=index,
                chunks=len(pieces),
                sealed=seal(public_key, piece, context),
                part_version=part_version,
                produced_at=produced_at,
            )
        )
    return parts


def failed_part(
    *,
    export_id: UUID,
    account_id: UUID,
    service: str,
    failure_code: ExportFailureCode,
    produced_at: datetime | None = None,
) -> ExportPartV1:
    """A service's answer that it could not produce its part (ops may ask it again)."""
    return ExportPartV1(
        export_id=export_id,
        account_id=account_id,
        service=service,
        part_id=new_part_id(),
        outcome="failed",
        failure_code=failure_code,
        produced_at=produced_at or datetime.now(UTC),
    )
