"""Erasure receipts over HTTP: ops by account id, auditors by receipt id (401/403 otherwise),
and the public key, with which the fetched receipt's signature checks out."""

from __future__ import annotations

import base64
import uuid
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from support import auth

from lifecycle.application import Accounts
from lifecycle.audit.receipt import signature_holds
from lifecycle.bootstrap import build_erasure
from lifecycle.erasure.process import Confirmation
from lifecycle.erasure.status import CONFIRMED
from lifecycle.settings import Settings
from schemas.contract import erasure_receipt_id

NAME = "Ottilie Receiptwood"


@pytest.fixture
def purged(accounts: Accounts, settings: Settings) -> UUID:
    process = build_erasure(accounts, settings)
    account_id = accounts.register(
        email=f"or-{uuid.uuid4().hex[:8]}@example.jp", display_name=NAME, consent_version="v1"
    )
    accounts.request_withdrawal(account_id, reason="other")
    for service in process.services:
        process.handle(Confirmation(account_id, service, CONFIRMED, 1, f"c-{service}"))
    return account_id


def paths(account_id: UUID) -> dict[str, str]:
    return {
        "ops": f"/admin/v1/erasures/{account_id}/receipt",
        "auditor": f"/audit/v1/receipts/{erasure_receipt_id(account_id)}",
    }


@pytest.mark.parametrize("role", ["ops", "auditor"])
def test_ops_and_auditors_fetch_the_signed_receipt(
    client: TestClient, purged: UUID, role: str
) -> None:
    response = client.get(paths(purged)[role], headers=auth(role))
    key = client.get("/.well-known/erasure-receipt-key")

    assert response.status_code == 200
    receipt = response.json()
    assert receipt["account_id"] == str(purged)
    assert receipt["receipt_id"] == str(erasure_receipt_id(purged))
    assert NAME not in response.text
    assert key.status_code == 200 and key.json()["algorithm"] == "Ed25519"
    assert key.json()["key_id"] == receipt["signature"]["key_id"]
    assert signature_holds(receipt, base64.b64decode(key.json()["public_key"]))


@pytest.mark.parametrize("role", ["ops", "auditor"])
@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer nope"}, 401), ("service", 403), ("other", 403)],
    ids=["none", "unknown", "service", "other-role"],
)
def test_without_the_role_no_receipt(
    client: TestClient, purged: UUID, role: str, headers: object, status: int
) -> None:
    other = {"ops": "auditor", "auditor": "ops"}[role]
    sent = auth(other if headers == "other" else "service") if isinstance(headers, str) else headers
    assert isinstance(sent, dict)

    response = client.get(paths(purged)[role], headers=sent)

    assert response.status_code == status
    assert "signature" not in response.text


def test_no_receipt_before_the_purge_is_404(client: TestClient, accounts: Accounts) -> None:
    account_id = accounts.register(
        email=f"np-{uuid.uuid4().hex[:8]}@example.jp", display_name=NAME, consent_version="v1"
    )

    for role, path in paths(account_id).items():
        response = client.get(path, headers=auth(role))
        assert response.status_code == 404
        assert response.json()["reason"] == "receipt_not_found"
    assert client.get("/audit/v1/receipts/not-a-uuid", headers=auth("auditor")).status_code == 404
