"""Data exports through HTTP, on SQLite and PostgreSQL: request, parts in, download, the
document against its JSON Schema, one pending export per account, expiry and withdrawal (410,
key gone, a saved part no longer opens), and the problems of the member routes.

The services' parts come from a stub producer here (the sections sealed to the export's key,
as `lifecycle.sealed_box.seal_part` does for the reference services)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from support import auth

from lifecycle.data_export.service import DataExports
from lifecycle.sealed_box import SealedBoxError, failed_part, new_key_pair, open_part, seal_part
from schemas.data_export import ExportPartV1

SERVICE = auth("service")
SCHEMA = json.loads(
    (Path(__file__).parents[2] / "schemas/v1/account.data-export.v1.json").read_text()
)
WHEN = "2026-04-01T09:30:00Z"
SECTIONS: dict[str, dict[str, Any]] = {
    "scout": {
        "scouts": [{"scout_id": "s1", "company_id": "c1", "job_id": "j1", "received_at": WHEN}]
    },
    "chat": {
        "threads": [
            {
                "thread_id": "t1",
                "company_id": "c1",
                "opened_at": WHEN,
                "messages": [
                    {"message_id": "m1", "sender": "member", "body": "秘密の相談", "sent_at": WHEN}
                ],
            }
        ]
    },
    "mail": {
        "contact": {
            "email": "hanako@example.jp",
            "display_name": "山田花子",
            "notifications": {"scouts": True},
            "updated_at": WHEN,
        },
        "notices": [
            {
                "notice_id": "n1",
                "kind": "notices",
                "subject": "Welcome",
                "body": "Hello",
                "status": "sent",
                "queued_at": WHEN,
                "sent_at": WHEN,
            }
        ],
    },
}


def exports_of(client: TestClient) -> DataExports:
    exports = client.app.state.api.exports  # type: ignore[attr-defined]
    assert isinstance(exports, DataExports)
    return exports


def register(client: TestClient) -> str:
    body = {
        "email": f"member-{uuid4().hex[:10]}@example.com",
        "display_name": "Yamada Hanako",
        "phone": "090-1234-5678",
        "profile": {"birth_year": 1990, "prefecture": "Tokyo", "job_title": "Accountant"},
        "work_history": [{"company": "Acme KK", "title": "Clerk", "from": "2014-04-01"}],
        "consent_version": "2024-04",
        "channel": "app",
    }
    response = client.post("/v1/accounts", json=body, headers=SERVICE)
    assert response.status_code == 201, response.text
    account_id = str(response.json()["account_id"])
    scout = {"scout_id": "s1", "company_id": "c1", "job_id": "j1"}
    response = client.post(f"/v1/accounts/{account_id}/scouts", json=scout, headers=SERVICE)
    assert response.status_code == 201, response.text
    return account_id


def request_export(client: TestClient, account_id: str) -> dict[str, Any]:
    response = client.post(f"/v1/accounts/{account_id}/data-exports", headers=SERVICE)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["Location"] == body["links"]["self"]
    return body


def answer(
    client: TestClient,
    export: dict[str, Any],
    services: tuple[str, ...] = ("scout", "chat", "mail"),
) -> list[ExportPartV1]:
    """What the reference services would send: each section sealed to the export's key."""
    exports = exports_of(client)
    stored = exports.get(UUID(export["account_id"]), UUID(export["export_id"]))
    parts = [
        part
        for service in services
        for part in seal_part(
            stored.public_key,
            json.dumps(SECTIONS[service]).encode(),
            export_id=stored.id,
            account_id=stored.account_id,
            service=service,
            chunk_bytes=64,  # many chunks: the document joins them in order
        )
    ]
    exports.take_parts(parts)
    return parts


def test_request_parts_download_and_the_document_validates(client: TestClient) -> None:
    account_id = register(client)
    export = request_export(client, account_id)
    assert export["status"] == "requested"
    assert export["links"]["download"] is None
    assert {s: p["status"] for s, p in export["parts"].items()} == dict.fromkeys(
        ("scout", "chat", "mail"), "pending"
    )
    # A second request answers with the pending one.
    again = client.post(f"/v1/accounts/{account_id}/data-exports", headers=SERVICE)
    assert again.status_code == 200 and again.json()["export_id"] == export["export_id"]
    # Not ready yet: 409.
    download = export["links"]["self"] + "/download"
    assert client.get(download, headers=SERVICE).status_code == 409

    answer(client, export, ("scout", "chat"))
    assert client.get(export["links"]["self"], headers=SERVICE).json()["status"] == "requested"
    answer(client, export, ("mail",))
    ready = client.get(export["links"]["self"], headers=SERVICE).json()
    assert ready["status"] == "ready", ready["parts"]
    assert ready["links"]["download"] == download

    response = client.get(download, headers=SERVICE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert jsonschema_rs.validator_for(SCHEMA).is_valid(document)
    assert document["export_id"] == export["export_id"]
    account = document["account"]
    assert account["email"].startswith("member-")
    assert account["display_name"] == "Yamada Hanako"
    assert account["phone"] == "090-1234-5678"
    assert account["profile"] == {
        "birth_year": 1990,
        "prefecture": "Tokyo",
        "job_title": "Accountant",
    }
    assert account["work_history"] == [
        {"company": "Acme KK", "title": "Clerk", "from": "2014-04-01", "to": None}
    ]
    assert account["channel"] == "app" and account["consent_version"] == "2024-04"
    assert [s["scout_id"] for s in account["scouts"]] == ["s1"]
    assert account["gift"] is None
    for service, section in SECTIONS.items():
        assert document["services"][service] == section
    # The preview links the ready export.
    preview = client.get(f"/v1/accounts/{account_id}/withdrawal-preview", headers=SERVICE).json()
    assert preview["data_export_ready"] is True and preview["data_export"] == download


def test_withdrawal_cancels_the_export_and_its_key_is_gone(client: TestClient) -> None:
    account_id = register(client)
    export = request_export(client, account_id)
    saved = answer(client, export)
    stored = exports_of(client).keys.private_key(UUID(export["export_id"]))
    assert stored is not None and open_part(stored, saved[0])
    withdrawal = {"reason": "hired_elsewhere", "acknowledge_gift_loss": True}
    response = client.post(
        f"/v1/accounts/{account_id}/withdrawal", json=withdrawal, headers=SERVICE
    )
    assert response.status_code == 202, response.text
    gone = client.get(export["links"]["self"] + "/download", headers=SERVICE)
    assert gone.status_code == 410
    assert gone.json()["type"].endswith("data_export_gone")
    status = client.get(export["links"]["self"], headers=SERVICE).json()
    assert status["status"] == "cancelled"
    exports = exports_of(client)
    assert exports.keys.private_key(UUID(export["export_id"])) is None
    assert exports.parts.held_for(UUID(account_id)) == 0
    # A saved copy of a sealed part opens with no key this service holds any more.
    with pytest.raises(SealedBoxError):
        open_part(new_key_pair()[0], saved[0])
    # And a withdrawing account gets the member routes' problem.
    late = client.post(f"/v1/accounts/{account_id}/data-exports", headers=SERVICE)
    assert late.status_code == 409


def test_expiry_ends_the_export(client: TestClient) -> None:
    account_id = register(client)
    export = request_export(client, account_id)
    answer(client, export)
    exports = exports_of(client)
    later = datetime.now(UTC) + timedelta(days=8)
    assert exports.expire_due(later) == 1
    assert client.get(export["links"]["self"] + "/download", headers=SERVICE).status_code == 410
    assert client.get(export["links"]["self"], headers=SERVICE).json()["status"] == "expired"
    assert exports.keys.private_key(UUID(export["export_id"])) is None
    # The next request makes a new export.
    fresh = request_export(client, account_id)
    assert fresh["export_id"] != export["export_id"]


def test_failed_and_misplaced_parts(client: TestClient) -> None:
    account_id = register(client)
    export = request_export(client, account_id)
    exports = exports_of(client)
    export_id, account = UUID(export["export_id"]), UUID(account_id)
    exports.take_parts(
        [
            failed_part(
                export_id=export_id, account_id=account, service="chat", failure_code="data_locked"
            )
        ]
    )
    status = client.get(export["links"]["self"], headers=SERVICE).json()
    assert status["parts"]["chat"] == {"status": "failed", "failure_code": "data_locked"}
    # A part sealed for another export does not open here: the service's part fails.
    _, other_key = new_key_pair()
    [wrong] = seal_part(other_key, b"{}", export_id=export_id, account_id=account, service="scout")
    exports.take_parts([wrong])
    status = client.get(export["links"]["self"], headers=SERVICE).json()
    assert status["parts"]["scout"]["status"] == "failed"
    # Ops' retry asks again; the answers then make it ready.
    assert exports.retry(export_id, ["chat", "scout"]) == ["chat", "scout"]
    answer(client, export)
    assert client.get(export["links"]["self"], headers=SERVICE).json()["status"] == "ready"


def test_problems_on_the_export_routes(client: TestClient) -> None:
    unknown = f"/v1/accounts/{uuid4()}/data-exports"
    assert client.post(unknown).status_code == 401
    assert client.post(unknown, headers=auth("ops")).status_code == 403
    assert client.post(unknown, headers=SERVICE).status_code == 404
    account_id = register(client)
    base = f"/v1/accounts/{account_id}/data-exports"
    assert client.get(f"{base}/{uuid4()}", headers=SERVICE).status_code == 404
    assert client.get(f"{base}/not-a-uuid/download", headers=SERVICE).status_code == 404
    export = request_export(client, account_id)
    # Another account's export is not found under this one.
    other = register(client)
    path = f"/v1/accounts/{other}/data-exports/{export['export_id']}"
    assert client.get(path, headers=SERVICE).status_code == 404


def test_ops_see_pending_failed_and_overdue_exports_and_retry_one_service(
    client: TestClient,
) -> None:
    ops = auth("ops")
    account_id = register(client)
    export = request_export(client, account_id)
    export_id, account = UUID(export["export_id"]), UUID(account_id)
    exports_of(client).take_parts(
        [
            failed_part(
                export_id=export_id,
                account_id=account,
                service="mail",
                failure_code="dependency_unavailable",
            )
        ]
    )
    assert client.get("/admin/v1/data-exports", headers=SERVICE).status_code == 403
    page = client.get("/admin/v1/data-exports?state=failed", headers=ops).json()
    assert page["counts"]["failed"] >= 1 and page["counts"]["open"] >= 1
    [item] = [i for i in page["items"] if i["export_id"] == export["export_id"]]
    assert item["parts"]["mail"] == {"status": "failed", "failure_code": "dependency_unavailable"}
    overdue = client.get("/admin/v1/data-exports?state=overdue", headers=ops).json()
    assert export["export_id"] not in [i["export_id"] for i in overdue["items"]]

    retry = f"/admin/v1/data-exports/{export_id}/services/mail/retry"
    response = client.post(retry, headers=ops)
    assert response.status_code == 202, response.text
    assert response.json() == {"export_id": str(export_id), "service": "mail", "retries": 1}
    status = client.get(export["links"]["self"], headers=SERVICE).json()
    assert status["parts"]["mail"]["status"] == "pending" and status["retries"] == 1
    unknown = f"/admin/v1/data-exports/{export_id}/services/payroll/retry"
    assert client.post(unknown, headers=ops).status_code == 422
    answer(client, export)
    assert client.post(retry, headers=ops).status_code == 409  # nothing pending any more
    metrics = client.get("/metrics", headers=ops).text
    assert 'lifecycle_data_exports{state="ready"}' in metrics
