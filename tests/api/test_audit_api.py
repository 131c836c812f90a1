"""/audit/v1 (role auditor): auth on every route, redacted by default, decrypted only for an
explicitly allowed role, and every decrypted read recorded without its values."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
import structlog
from fastapi.testclient import TestClient
from support import auth

from lifecycle.api import create_app
from lifecycle.application import Accounts
from lifecycle.erasure.process import Confirmation, ErasureProcess
from lifecycle.services.actions import PersonalDataReads
from lifecycle.settings import Settings
from projections.hashchain import HashChain
from projections.runner import Projector

AUDITOR = auth("auditor")
NAME = "Bartholomew Quince"
PHONE = "070-5555-0199"
COMMENT = "moved to Reykjavik"


@pytest.fixture
def decrypting_client(settings: Settings, accounts: Accounts) -> Iterator[TestClient]:
    allowed = settings.model_copy(update={"audit_decrypt_roles": ["auditor"]})
    with TestClient(create_app(allowed, accounts)) as client:
        yield client


@pytest.fixture
def account_id(accounts: Accounts) -> UUID:
    account_id = accounts.register(
        email=f"bq-{uuid.uuid4().hex[:8]}@example.jp",
        display_name=NAME,
        phone=PHONE,
        consent_version="2026-04",
    )
    accounts.receive_scout(account_id, scout_id="s-1", company_id="acme", job_id="j-1")
    accounts.request_withdrawal(account_id, reason="other", comment=COMMENT)
    return account_id


AUDIT_ROUTES = [
    ("GET", "/audit/v1/accounts/{account_id}/events"),
    ("GET", "/audit/v1/accounts/{account_id}/events?personal=decrypted"),
    ("GET", "/audit/v1/hash-chain"),
    ("GET", "/audit/v1/receipts/{receipt_id}"),
]
ROUTE_IDS = [path for _, path in AUDIT_ROUTES]


def test_the_table_covers_every_audit_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    served = {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/audit/")
        for method in operations
    }

    assert served == {(method, path.split("?")[0]) for method, path in AUDIT_ROUTES}


@pytest.mark.parametrize(("method", "path"), AUDIT_ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}], ids=["none", "unknown"])
def test_without_a_known_token_every_audit_route_is_401(
    decrypting_client: TestClient, account_id: UUID, method: str, path: str, headers: Any
) -> None:
    response = decrypting_client.request(
        method, path.format(account_id=account_id, receipt_id=account_id), headers=headers
    )

    assert response.status_code == 401
    assert NAME not in response.text


@pytest.mark.parametrize(("method", "path"), AUDIT_ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("role", ["service", "ops"])
def test_with_another_role_every_audit_route_is_403(
    decrypting_client: TestClient, account_id: UUID, method: str, path: str, role: str
) -> None:
    response = decrypting_client.request(
        method, path.format(account_id=account_id, receipt_id=account_id), headers=auth(role)
    )

    assert response.status_code == 403
    assert NAME not in response.text


def test_the_raw_stream_has_versions_times_topics_and_redacted_values(
    client: TestClient, account_id: UUID
) -> None:
    response = client.get(f"/audit/v1/accounts/{account_id}/events", headers=AUDITOR)

    body = response.json()
    assert response.status_code == 200
    assert body["personal"] == "redacted" and body["key_destroyed"] is False
    events = body["events"]
    assert [e["version"] for e in events] == [1, 2, 3]
    assert [e["event"] for e in events] == [
        "Account.Registered",
        "Account.ScoutReceived",
        "Account.WithdrawalRequested",
    ]
    assert events[0]["event_type"] == "lifecycle.domain:Account.Registered"
    assert events[0]["topic"] == events[0]["event_type"]  # deprecated copy
    assert all(e["timestamp"] for e in events)
    assert events[0]["personal_fields"] == ["email", "display_name", "phone", "work_history"]
    assert events[0]["data"]["display_name"] == "[redacted]"
    assert events[0]["data"]["job_title"] is None  # absent, not sealed
    assert events[0]["data"]["consent_version"] == "2026-04"
    assert events[2]["data"]["reason"] == "other"
    assert events[2]["data"]["comment"] == "[redacted]"
    for value in (NAME, PHONE, COMMENT, "@example.jp"):
        assert value not in response.text


def test_decrypting_needs_an_allowed_role(
    client: TestClient, accounts: Accounts, account_id: UUID
) -> None:
    response = client.get(
        f"/audit/v1/accounts/{account_id}/events?personal=decrypted", headers=AUDITOR
    )

    assert response.status_code == 403
    assert "personal values" in response.json()["detail"]
    assert NAME not in response.text
    assert PersonalDataReads(accounts.database).of(account_id) == []


def test_an_allowed_role_reads_values_and_the_read_is_recorded(
    decrypting_client: TestClient, accounts: Accounts, account_id: UUID
) -> None:
    with structlog.testing.capture_logs() as logs:
        response = decrypting_client.get(
            f"/audit/v1/accounts/{account_id}/events?personal=decrypted",
            headers={**AUDITOR, "X-Request-ID": "audit-read-1"},
        )

    body = response.json()
    assert response.status_code == 200
    assert body["personal"] == "decrypted"
    assert body["events"][0]["data"]["display_name"] == NAME
    assert body["events"][0]["data"]["phone"] == PHONE
    assert body["events"][2]["data"]["comment"] == COMMENT
    assert PersonalDataReads(accounts.database).of(account_id) == [("auditor", "audit-read-1", 3)]
    reads = [e for e in logs if e["event"] == "audit.personal_values_read"]
    assert len(reads) == 1
    assert reads[0]["account_id"] == str(account_id)
    assert reads[0]["role"] == "auditor" and reads[0]["request_id"] == "audit-read-1"
    for value in (NAME, PHONE, COMMENT):
        assert value not in repr(logs)


def test_after_purge_even_an_allowed_role_gets_redacted_values(
    decrypting_client: TestClient, accounts: Accounts, account_id: UUID
) -> None:
    process = ErasureProcess(accounts)
    for service in process.services:
        process.handle(Confirmation(account_id, service, "confirmed", 1, f"c-{service}"))

    response = decrypting_client.get(
        f"/audit/v1/accounts/{account_id}/events?personal=decrypted", headers=AUDITOR
    )

    body = response.json()
    assert body["key_destroyed"] is True and body["personal"] == "redacted"
    assert body["events"][-1]["event"] == "Account.Purged"
    assert body["events"][0]["data"]["display_name"] == "[redacted]"
    assert NAME not in response.text


def test_unknown_or_malformed_accounts_are_404(client: TestClient) -> None:
    for account_id in (uuid.uuid4(), "not-a-uuid"):
        response = client.get(f"/audit/v1/accounts/{account_id}/events", headers=AUDITOR)
        assert response.status_code == 404


def test_an_unknown_personal_mode_is_422(client: TestClient, account_id: UUID) -> None:
    response = client.get(f"/audit/v1/accounts/{account_id}/events?personal=plain", headers=AUDITOR)

    assert response.status_code == 422


def test_hash_chain_head_and_lag(client: TestClient, accounts: Accounts, account_id: UUID) -> None:
    chain = HashChain(accounts.database)
    chain.create()
    Projector(accounts, chain).catch_up()
    chained = accounts.recorder.max_notification_id()
    accounts.register(email="later@example.jp", display_name="L", consent_version="1")
    head = accounts.recorder.max_notification_id()

    body = client.get("/audit/v1/hash-chain", headers=AUDITOR).json()

    assert body == {
        "position": chained,
        "link": chain.head()[1],
        "log_head": head,
        "lag": head - chained,
    }
