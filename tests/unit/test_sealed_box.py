"""Sealing a data-export part to the export's public key (lifecycle.sealed_box)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from pydantic import ValidationError

from lifecycle.sealed_box import (
    PartContext,
    SealedBoxError,
    b64url,
    failed_part,
    new_key_pair,
    open_box,
    open_part,
    public_key_of,
    seal,
    seal_part,
    unb64url,
)
from schemas.contract import decode_record
from schemas.data_export import (
    ExportPartV1,
    ExportRequestedV1,
    ScoutSectionV1,
    SealedBoxV1,
    encode_export_part,
    encode_export_requested,
)

SECRET = "山田花子 hanako.yamada@example.jp".encode()


def context() -> PartContext:
    return PartContext(uuid4(), uuid4(), "chat", uuid4(), 0, 1)


def test_round_trip() -> None:
    private, public = new_key_pair()
    assert public_key_of(private) == public
    assert len(unb64url(public)) == 32
    where = context()
    box = seal(public, SECRET, where)
    assert SECRET not in box.model_dump_json().encode()
    assert open_box(private, box, where) == SECRET


def test_each_seal_is_fresh() -> None:
    _, public = new_key_pair()
    where = context()
    first, second = seal(public, SECRET, where), seal(public, SECRET, where)
    assert first.ephemeral_public_key != second.ephemeral_public_key
    assert first.ciphertext != second.ciphertext


def flip(text: str, at: int) -> str:
    raw = bytearray(unb64url(text))
    raw[at] ^= 1
    return b64url(bytes(raw))


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "ephemeral_public_key"])
def test_tampered_box_does_not_open(field: str) -> None:
    private, public = new_key_pair()
    where = context()
    box = seal(public, SECRET, where)
    tampered = box.model_copy(update={field: flip(getattr(box, field), 3)})
    with pytest.raises(SealedBoxError):
        open_box(private, tampered, where)


def test_another_key_does_not_open() -> None:
    _, public = new_key_pair()
    other_private, _ = new_key_pair()
    where = context()
    with pytest.raises(SealedBoxError):
        open_box(other_private, seal(public, SECRET, where), where)


@pytest.mark.parametrize(
    "change",
    [
        {"export_id": uuid4()},
        {"account_id": uuid4()},
        {"service": "mail"},
        {"part_id": uuid4()},
        {"chunk": 1, "chunks": 2},
        {"chunks": 2},
    ],
)
def test_another_context_does_not_open(change: dict[str, object]) -> None:
    """A part replayed into another export, service, part or place fails authentication."""
    private, public = new_key_pair()
    where = context()
    box = seal(public, SECRET, where)
    with pytest.raises(SealedBoxError):
        open_box(private, box, replace(where, **change))  # type: ignore[arg-type]


def test_malformed_keys_are_refused_without_content() -> None:
    private, public = new_key_pair()
    with pytest.raises(SealedBoxError):
        seal("A" * 10, SECRET, context())
    box = seal(public, SECRET, context())
    with pytest.raises(SealedBoxError):
        open_box(private[:5], box, context())


def test_a_section_in_chunks_round_trips_and_travels_as_records() -> None:
    private, public = new_key_pair()
    export_id, account_id = uuid4(), uuid4()
    section = ScoutSectionV1.model_validate(
        {
            "scouts": [
                {"scout_id": f"s{i}", "company_id": "c", "job_id": "j", "received_at": NOW}
                for i in range(500)
            ]
        }
    ).model_dump_json()
    parts = seal_part(
        public,
        section.encode(),
        export_id=export_id,
        account_id=account_id,
        service="scout",
        chunk_bytes=4096,
    )
    assert len(parts) > 3
    assert {part.part_id for part in parts} == {parts[0].part_id}
    assert [part.chunk for part in parts] == list(range(len(parts)))
    opened = b""
    for part in parts:
        record = encode_export_part(part)
        envelope = decode_record(record.headers, record.value)
        assert envelope.data == part
        assert dict(record.headers)["ce_source"] == b"/scout/export"
        opened += open_part(private, part)
    assert ScoutSectionV1.model_validate_json(opened).model_dump_json() == section
    # A chunk moved to another place does not open.
    moved = parts[1].model_copy(update={"chunk": 2})
    with pytest.raises(SealedBoxError):
        open_part(private, moved)


def test_an_empty_section_is_one_chunk() -> None:
    private, public = new_key_pair()
    [part] = seal_part(public, b"", export_id=uuid4(), account_id=uuid4(), service="chat")
    assert part.chunks == 1 and open_part(private, part) == b""


NOW = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)


def test_a_failed_part_holds_a_code_and_nothing_to_open() -> None:
    part = failed_part(
        export_id=uuid4(), account_id=uuid4(), service="mail", failure_code="data_locked"
    )
    with pytest.raises(SealedBoxError):
        open_part(new_key_pair()[0], part)
    with pytest.raises(ValidationError):
        ExportPartV1.model_validate({**part.model_dump(), "failure_code": None})
    with pytest.raises(ValidationError):
        ExportPartV1.model_validate(
            {
                **part.model_dump(),
                "outcome": "sealed",
                "failure_code": None,
                "chunk": 1,
                "sealed": SealedBoxV1(
                    ephemeral_public_key="A" * 43, nonce="B" * 16, ciphertext="C" * 30
                ),
            }
        )


def test_a_request_carries_ids_and_the_public_key_only() -> None:
    _, public = new_key_pair()
    account_id = uuid4()
    request = ExportRequestedV1(
        export_id=uuid4(),
        account_id=account_id,
        public_key=public,
        requested_at=NOW,
        expires_at=NOW + timedelta(days=7),
    )
    record = encode_export_requested(request)
    assert set(json.loads(record.value or b"")) == {
        "export_id",
        "account_id",
        "public_key",
        "requested_at",
        "expires_at",
        "services",
    }
    assert request.addresses("chat")
    retry = encode_export_requested(request.model_copy(update={"services": ["chat"]}), retry="x")
    envelope = decode_record(retry.headers, retry.value)
    assert envelope.id.endswith(":retry-x") and envelope.id.startswith(str(account_id))
    assert isinstance(envelope.data, ExportRequestedV1)
    assert envelope.data.addresses("chat") and not envelope.data.addresses("mail")
