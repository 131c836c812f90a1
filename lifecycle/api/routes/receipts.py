"""Signed erasure receipts over HTTP: ops by account id, auditors by receipt id, and the public
key anyone may use to check a receipt's signature (see lifecycle.audit.receipt).

A receipt holds ids, times and counts only. Its id follows from the account id
(`schemas.contract.erasure_receipt_id`); the withdrawal-confirmation mail gives it.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from lifecycle.api.auth import require_role
from lifecycle.api.deps import AccountId, ErasureEvidenceDep
from lifecycle.api.problems import problem_responses
from lifecycle.errors import AccountNotFoundError

ops_router = APIRouter(
    prefix="/admin/v1",
    tags=["admin"],
    dependencies=[Depends(require_role("ops"))],
    responses=problem_responses(401, 403),
)
audit_router = APIRouter(
    prefix="/audit/v1",
    tags=["audit"],
    dependencies=[Depends(require_role("auditor"))],
    responses=problem_responses(401, 403),
)
# The public key is public: no token, so anyone holding a receipt can check it.
public_router = APIRouter(tags=["receipts"])

RECEIPT_DESCRIPTION = (
    "The signed erasure receipt: account id, requested and purged times, each service's "
    "confirmation with its counts, the key's destruction, the hash-chain link of the `Purged` "
    "event, and when the last copy on the compacted profile topic is due to be gone. "
    "`signature` is Ed25519 over the rest (JSON, sorted keys, compact separators, UTF-8)."
)


class PublishedKey(BaseModel):
    algorithm: str = Field(examples=["Ed25519"])
    key_id: str = Field(description="First 16 hex digits of SHA-256 over the raw public key.")
    public_key: str = Field(description="The raw 32-byte public key, base64.")
    pem: str = Field(description="The same key as PEM (SubjectPublicKeyInfo).")


class ReceiptKey(PublishedKey):
    """The key that signs new receipts, and every key that ever signed one."""

    signed_bytes: str
    keys: list[PublishedKey] = Field(
        description="Every signing key's public half, current and older: a receipt's "
        "`signature.key_id` names the one that verifies it."
    )


@ops_router.get(
    "/erasures/{account_id}/receipt",
    operation_id="getAccountErasureReceipt",
    summary="The signed erasure receipt of a purged account",
    description=RECEIPT_DESCRIPTION,
    responses=problem_responses(404),
)
def receipt_of_account(account_id: AccountId, evidence: ErasureEvidenceDep) -> dict[str, Any]:
    return evidence.receipt_of(account_id)


@audit_router.get(
    "/receipts/{receipt_id}",
    operation_id="getErasureReceipt",
    summary="A signed erasure receipt, by its id",
    description=RECEIPT_DESCRIPTION,
    responses=problem_responses(404),
)
def receipt(
    receipt_id: Annotated[str, Path(json_schema_extra={"format": "uuid"})],
    evidence: ErasureEvidenceDep,
) -> dict[str, Any]:
    try:
        wanted = UUID(receipt_id)
    except ValueError:  # not an id a receipt could have: none was issued under it
        raise AccountNotFoundError(
            "receipt_not_found", detail="no erasure receipt was issued"
        ) from None
    return evidence.receipt(wanted)


@public_router.get(
    "/.well-known/erasure-receipt-key",
    operation_id="getErasureReceiptKey",
    summary="The public key that signs erasure receipts",
)
def receipt_key(evidence: ErasureEvidenceDep) -> ReceiptKey:
    return ReceiptKey.model_validate(evidence.receipt_key())
