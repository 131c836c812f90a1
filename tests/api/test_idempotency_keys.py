"""Idempotency keys (IETF draft) on the state-changing member routes and bulk scouts, on both
backends: the first answer replayed, a reused key refused, a running one refused, expiry, keys
scoped to the caller's token, and nothing of the member's left in kept answers after purge."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from fastapi.testclient import TestClient
from support import auth, wait_until

from lifecycle.api import create_app
from lifecycle.application import Accounts
from lifecycle.idempotency import TABLE
from lifecycle.settings import Settings, token_digest

SERVICE = auth("service")
OTHER_SERVICE_TOKEN = "another-service-token-of-the-platform"


def keyed(key: str, headers: dict[str, str] = SERVICE) -> dict[str, str]:
    return {**headers, "Idempotency-Key": f'"{key}"'}


def registration(**overrides: Any) -> dict[str, Any]:
    return {
        "email": f"member-{uuid4().hex[:10]}@example.com",
        "display_name": "Sato Hanako",
        "consent_version": "2024-04",
        **overrides,
    }


@pytest.fixture
def two_tokens(settings: Settings, accounts: Accounts) -> Iterator[TestClient]:
    """The app with a second token of the service role (another calling service)."""
    tokens = {**settings.api_tokens, token_digest(OTHER_SERVICE_TOKEN): "service"}
    with TestClient(create_app(settings.model_copy(update={"api_tokens": tokens}), accounts)) as c:
        yield c


def registered(accounts: Accounts) -> int:
    db = accounts.database
    with db.transaction(commit=False) as cursor:
        row = cursor.execute(
            f"SELECT count(*) FROM {db.events_table} WHERE topic LIKE %s", ("%Account.Registered",)
        ).fetchone()
    assert row is not None
    return int(row[0])


def kept_rows(accounts: Accounts) -> list[tuple[Any, ...]]:
    db = accounts.database
    with db.transaction(commit=False) as cursor:
        return cursor.execute(f"SELECT * FROM {db.table(TABLE)}").fetchall()


def test_the_same_key_and_payload_get_the_first_answer(
    client: TestClient, accounts: Accounts
) -> None:
    body = registration()
    first = client.post("/v1/accounts", json=body, headers=keyed("k-1"))
    again = client.post("/v1/accounts", json=body, headers=keyed("k-1"))
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert registered(accounts) == 1
    # Without a key the same body is a second request: the e-mail is taken.
    assert client.post("/v1/accounts", json=body, headers=SERVICE).status_code == 409


def test_a_key_reused_for_another_payload_is_422(client: TestClient) -> None:
    assert client.post("/v1/accounts", json=registration(), headers=keyed("k-2")).status_code == 201
    response = client.post("/v1/accounts", json=registration(), headers=keyed("k-2"))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "idempotency_key_reused"
    assert response.headers["content-type"] == "application/problem+json"


def test_a_retry_while_the_first_runs_is_409(
    client: TestClient, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    account_id = client.post("/v1/accounts", json=registration(), headers=SERVICE).json()[
        "account_id"
    ]
    release, entered = threading.Event(), threading.Event()
    edit = accounts.edit_preferences

    def slow_edit(*args: Any, **kwargs: Any) -> list[str]:
        entered.set()
        assert release.wait(30), "the test never released the first request"
        return edit(*args, **kwargs)

    monkeypatch.setattr(accounts, "edit_preferences", slow_edit)
    url = f"/v1/accounts/{account_id}/preferences"
    body = {"notifications": {"scouts": False}}
    answers: list[Any] = []
    first = threading.Thread(
        target=lambda: answers.append(client.patch(url, json=body, headers=keyed("k-3")))
    )
    first.start()
    try:
        wait_until(entered.is_set, "the first request is running", timeout_s=30)
        second = client.patch(url, json=body, headers=keyed("k-3"))
        assert second.status_code == 409, second.text
        assert second.json()["code"] == "idempotency_key_in_use"
    finally:
        release.set()
        first.join(timeout=30)
    assert answers[0].status_code == 200
    assert answers[0].json() == {"changed": ["notifications"]}
    replayed = client.patch(url, json=body, headers=keyed("k-3"))
    assert (replayed.status_code, replayed.json()) == (200, {"changed": ["notifications"]})


def test_a_kept_answer_expires(client: TestClient, accounts: Accounts) -> None:
    account_id = client.post("/v1/accounts", json=registration(), headers=SERVICE).json()[
        "account_id"
    ]
    url = f"/v1/accounts/{account_id}/preferences"
    body = {"notifications": {"scouts": False}}
    assert client.patch(url, json=body, headers=keyed("k-4")).json() == {
        "changed": ["notifications"]
    }
    store = accounts.idempotency
    assert store.ttl_s == 24 * 3600
    now = time.time()
    store.clock = lambda: now + store.ttl_s - 60
    assert client.patch(url, json=body, headers=keyed("k-4")).json() == {
        "changed": ["notifications"]
    }
    store.clock = lambda: now + store.ttl_s + 60
    # Expired: the request runs again, and this time nothing changes.
    assert client.patch(url, json=body, headers=keyed("k-4")).json() == {"changed": []}


def test_another_tokens_key_is_not_seen(two_tokens: TestClient, accounts: Accounts) -> None:
    other = {"Authorization": f"Bearer {OTHER_SERVICE_TOKEN}"}
    mine = two_tokens.post("/v1/accounts", json=registration(), headers=keyed("k-5"))
    theirs = two_tokens.post("/v1/accounts", json=registration(), headers=keyed("k-5", other))
    assert mine.status_code == theirs.status_code == 201
    assert mine.json() != theirs.json()
    assert registered(accounts) == 2


def test_bulk_scouts_replay_their_first_answer(client: TestClient, accounts: Accounts) -> None:
    account_id = client.post("/v1/accounts", json=registration(), headers=SERVICE).json()[
        "account_id"
    ]
    body = {
        "scouts": [
            {"account_id": account_id, "scout_id": "s-1", "company_id": "c-1", "job_id": "j-1"}
        ]
    }
    first = client.post("/v1/scouts", json=body, headers=keyed("k-6"))
    again = client.post("/v1/scouts", json=body, headers=keyed("k-6"))
    assert first.json()["results"][0]["result"] == "recorded"
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    fresh = client.post("/v1/scouts", json=body, headers=keyed("k-7"))
    assert fresh.json()["results"][0]["result"] == "duplicate"


def test_a_malformed_key_is_422_and_keeps_nothing(client: TestClient, accounts: Accounts) -> None:
    response = client.post(
        "/v1/accounts", json=registration(), headers={**SERVICE, "Idempotency-Key": '"a"b"'}
    )
    assert response.status_code == 422
    assert registered(accounts) == 0
    assert kept_rows(accounts) == []


def test_after_purge_no_kept_answer_holds_the_members_values(
    client: TestClient, accounts: Accounts
) -> None:
    values = {"email": f"hanako-{uuid4().hex[:8]}@example.com", "display_name": "Hanako Zzyzx"}
    body = registration(**values, phone="090-5555-0199")
    account_id = client.post("/v1/accounts", json=body, headers=keyed("p-1")).json()["account_id"]
    base = f"/v1/accounts/{account_id}"
    comment = "Leaving for Zzyzx Corp"
    client.patch(
        f"{base}/preferences",
        json={"profile": {"job_title": "Zzyzx engineer"}},
        headers=keyed("p-2"),
    )
    client.post(
        f"{base}/withdrawal",
        json={"reason": "hired_elsewhere", "comment": comment},
        headers=keyed("p-3"),
    )
    rows = kept_rows(accounts)
    assert len(rows) == 3
    for secret in (values["email"], "Hanako", "Zzyzx", "090-5555-0199"):
        assert secret.encode() not in b"".join(_bytes(value) for row in rows for value in row)
    accounts.purge(UUID(account_id))
    assert kept_rows(accounts) == []


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()
