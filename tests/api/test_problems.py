"""Problem documents, request ids, access logs and health, on the real app and both backends.

Routes that raise on demand are added to the app built by `create_app`, so the mapping is
tested through the same middleware and handlers members' requests go through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote
from uuid import uuid4

import pytest
import structlog
from eventsourcing.persistence import OperationalError
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from support import auth, wait_until

from lifecycle.api import create_app
from lifecycle.api.problems import PROBLEM_MEDIA_TYPE
from lifecycle.application import Accounts
from lifecycle.errors import (
    AccountNotFoundError,
    AccountNotWithdrawingError,
    AccountPurgedError,
    AccountWithdrawingError,
    ConcurrentUpdateError,
    EmailAlreadyClaimedError,
    GiftAlreadyClaimedError,
    GiftNotEligibleError,
    GiftUnclaimedError,
    InvalidCommandError,
    KeyDestroyedError,
    LifecycleError,
)
from lifecycle.logs import get_logger
from lifecycle.settings import Settings

SERVICE = auth("service")


class SomethingOfOursBrokeError(LifecycleError):
    code = "something_broke"


RAISED: dict[str, Exception] = {
    "not_found": AccountNotFoundError(),
    "purged": AccountPurgedError(),
    "key_destroyed": KeyDestroyedError(),
    "withdrawing": AccountWithdrawingError("account_withdrawing"),
    "not_withdrawing": AccountNotWithdrawingError("account_not_withdrawing"),
    "email_in_use": EmailAlreadyClaimedError("email_in_use"),
    "gift_claimed": GiftAlreadyClaimedError("gift_already_claimed"),
    "gift_unclaimed": GiftUnclaimedError("gift_unclaimed"),
    "concurrent": ConcurrentUpdateError(),
    "not_eligible": GiftNotEligibleError("company_not_scouted"),
    "invalid": InvalidCommandError("display_name_empty"),
    "ours": SomethingOfOursBrokeError(detail="config at /etc/secret is wrong"),
    "runtime": RuntimeError("secret-value-from-the-depths"),
    "database": OperationalError("connection to server at 10.0.0.1 failed: password secret"),
}


def raising_app(settings: Settings, accounts: Accounts) -> FastAPI:
    app = create_app(settings, accounts)

    def raise_it(kind: str) -> None:
        raise RAISED[kind]

    def log_something() -> dict[str, str]:
        # A plain function, so FastAPI runs it in its thread pool, as it runs the routes.
        get_logger("lifecycle.test").info("inside_the_handler")
        return {}

    app.add_api_route("/test/raise/{kind}", raise_it, methods=["GET"])
    app.add_api_route("/test/log", log_something, methods=["GET"])
    return app


@pytest.fixture
def client(settings: Settings, accounts: Accounts) -> Iterator[TestClient]:
    with TestClient(raising_app(settings, accounts)) as client:
        yield client


def problem_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == f"urn:lifecycle:problem:{body['code']}"
    assert body["title"]
    assert body["detail"]
    assert body["instance"] == f"urn:lifecycle:request:{response.headers['X-Request-ID']}"
    return body


@pytest.mark.parametrize(
    ("kind", "status", "code", "reason"),
    [
        ("not_found", 404, "account_not_found", None),
        ("purged", 410, "account_purged", None),
        ("key_destroyed", 410, "key_destroyed", None),
        ("withdrawing", 409, "account_withdrawing", None),
        ("not_withdrawing", 409, "account_not_withdrawing", None),
        ("email_in_use", 409, "email_in_use", None),
        ("gift_claimed", 409, "gift_already_claimed", None),
        ("gift_unclaimed", 409, "gift_unclaimed", None),
        ("concurrent", 409, "concurrent_update", None),
        ("not_eligible", 422, "gift_not_eligible", "company_not_scouted"),
        ("invalid", 422, "invalid_command", "display_name_empty"),
    ],
)
def test_lifecycle_errors_map_to_statuses_and_codes(
    client: TestClient, kind: str, status: int, code: str, reason: str | None
) -> None:
    body = problem_of(client.get(f"/test/raise/{kind}"), status)

    assert body["code"] == code
    assert body.get("reason") == reason


def test_an_error_of_ours_no_client_explains_is_500_without_its_detail(
    client: TestClient,
) -> None:
    response = client.get("/test/raise/ours")

    body = problem_of(response, 500)
    assert "/etc/secret" not in response.text
    assert body["code"] == "something_broke"


def test_an_unexpected_exception_is_500_without_traceback(client: TestClient) -> None:
    with structlog.testing.capture_logs() as logs:
        response = client.get("/test/raise/runtime", headers={"X-Request-ID": "req-500"})

    body = problem_of(response, 500)
    assert body["code"] == "internal_error"
    assert "secret-value" not in response.text
    assert "Traceback" not in response.text
    assert "RuntimeError" not in response.text
    assert response.headers["X-Request-ID"] == "req-500"
    access = [event for event in logs if event["event"] == "request"]
    assert [event["status"] for event in access] == [500]
    assert any(event["event"] == "unhandled_error" for event in logs)


def test_an_unavailable_database_is_503(client: TestClient) -> None:
    response = client.get("/test/raise/database")

    body = problem_of(response, 503)
    assert body["code"] == "database_unavailable"
    assert "10.0.0.1" not in response.text
    assert "password" not in response.text


def test_an_unknown_route_is_a_404_problem_that_does_not_echo_the_path(
    client: TestClient,
) -> None:
    response = client.get("/v1/members/someone@example.com", headers=SERVICE)

    body = problem_of(response, 404)
    assert body["code"] == "not_found"
    assert "someone@example.com" not in response.text


def test_a_wrong_method_is_a_405_problem_with_allow(client: TestClient) -> None:
    response = client.delete(f"/v1/accounts/{uuid4()}", headers=SERVICE)

    body = problem_of(response, 405)
    assert body["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_a_bad_email_is_not_echoed_in_the_422(client: TestClient) -> None:
    email = "taro.yamada.private@@example.co.jp"

    response = client.post(
        "/v1/accounts",
        json={"email": email, "display_name": "Yamada Taro", "consent_version": "2024-04"},
        headers=SERVICE,
    )

    body = problem_of(response, 422)
    assert body["code"] == "invalid_request"
    assert body["errors"] == [
        {
            "loc": ["body", "email"],
            "msg": body["errors"][0]["msg"],
            "type": "string_pattern_mismatch",
        }
    ]
    assert email not in response.text
    assert "taro.yamada" not in response.text
    assert "Yamada Taro" not in response.text
    assert "input" not in body["errors"][0]


def test_no_personal_input_is_echoed_in_any_422(client: TestClient) -> None:
    account_id = client.post(
        "/v1/accounts",
        json={"email": "a@example.com", "display_name": "Sato", "consent_version": "1"},
        headers=SERVICE,
    ).json()["account_id"]
    secret = "my-boss-is-terrible-" * 60  # too long a comment
    responses = [
        client.post(
            "/v1/accounts",
            json={"email": "b@example.com", "display_name": secret, "consent_version": "1"},
            headers=SERVICE,
        ),
        client.post(
            "/v1/accounts",
            json={
                "email": "c@example.com",
                "display_name": "Sato",
                "consent_version": "1",
                "phone": "my-boss-is-terrible",
                "nickname": "my-boss-is-terrible",
            },
            headers=SERVICE,
        ),
        client.post(
            f"/v1/accounts/{account_id}/withdrawal",
            json={"reason": "other", "comment": secret},
            headers=SERVICE,
        ),
        client.post(
            f"/v1/accounts/{account_id}/withdrawal",
            json={"reason": "my-boss-is-terrible"},
            headers=SERVICE,
        ),
        client.patch(
            f"/v1/accounts/{account_id}/preferences",
            json={"profile": {"job_title": secret}},
            headers=SERVICE,
        ),
    ]

    for response in responses:
        problem_of(response, 422)
        assert "my-boss" not in response.text, response.text


def test_a_request_id_is_generated_and_echoed(client: TestClient) -> None:
    response = client.get("/healthz")

    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    assert client.get("/healthz").headers["X-Request-ID"] != response.headers["X-Request-ID"]


def test_a_sane_incoming_request_id_is_kept(client: TestClient) -> None:
    response = client.get(f"/v1/accounts/{uuid4()}", headers={**SERVICE, "X-Request-ID": "abc-123"})

    assert response.headers["X-Request-ID"] == "abc-123"
    assert problem_of(response, 404)["instance"] == "urn:lifecycle:request:abc-123"


@pytest.mark.parametrize(
    "incoming", ["has space", "x" * 200, "semi;colon", "<script>", "a@example.com", "-leading"]
)
def test_an_odd_incoming_request_id_is_replaced(client: TestClient, incoming: str) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": incoming})

    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_one_access_line_per_request_with_the_route_template_and_no_personal_data(
    client: TestClient,
) -> None:
    email = "hanako.private@example.com"
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        created = client.post(
            "/v1/accounts",
            json={
                "email": email,
                "display_name": "Hanako Private",
                "phone": "090-9999-8888",
                "consent_version": "1",
            },
            headers={**SERVICE, "X-Request-ID": "req-1"},
        )
        account_id = created.json()["account_id"]
        client.get(f"/v1/accounts/{account_id}", headers={**SERVICE, "X-Request-ID": "req-2"})
        client.post(
            f"/v1/accounts/{account_id}/withdrawal",
            json={"reason": "other", "comment": "private words"},
            headers={**SERVICE, "X-Request-ID": "req-3"},
        )
        client.get("/nowhere/hanako.private@example.com", headers={"X-Request-ID": "req-4"})

    access = [event for event in logs if event["event"] == "request"]
    assert [(e["request_id"], e["method"], e["route"], e["status"]) for e in access] == [
        ("req-1", "POST", "/v1/accounts", 201),
        ("req-2", "GET", "/v1/accounts/{account_id}", 200),
        ("req-3", "POST", "/v1/accounts/{account_id}/withdrawal", 202),
        ("req-4", "GET", "<unmatched>", 404),
    ]
    assert all(isinstance(e["duration_ms"], float) and e["duration_ms"] >= 0 for e in access)
    logged = repr(logs)
    for personal in ("hanako.private", "Hanako Private", "090-9999-8888", "private words"):
        assert personal not in logged


def test_log_lines_from_handlers_carry_the_request_id(client: TestClient) -> None:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        client.get("/test/log", headers={"X-Request-ID": "req-in-thread"})

    inside = [event for event in logs if event["event"] == "inside_the_handler"]
    assert [event["request_id"] for event in inside] == ["req-in-thread"]
    assert structlog.contextvars.get_contextvars().get("request_id") is None


def test_healthz_is_ok(client: TestClient) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_while_the_database_answers(client: TestClient) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_readyz_is_503_when_the_database_does_not_answer(
    client: TestClient, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    @contextmanager
    def unreachable(*, commit: bool = True) -> Iterator[Any]:
        raise OperationalError("connection refused")
        yield  # pragma: no cover

    monkeypatch.setattr(accounts.database, "transaction", unreachable)

    # The database is checked in the background: the verdict turns within a round.
    wait_until(lambda: client.get("/readyz").status_code == 503, "readiness sees the outage")
    response = client.get("/readyz")
    assert problem_of(response, 503)["code"] == "not_ready"
    assert response.json()["detail"] == "the database does not answer"
    assert client.get("/healthz").status_code == 200


def test_a_body_growing_past_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 8192

    response = client.post(
        "/v1/accounts",
        content=chunks(),
        headers={**SERVICE, "Content-Type": "application/json"},
    )

    assert problem_of(response, 413)["code"] == "content_too_large"


def test_a_body_declared_too_large_is_413_before_it_is_read(client: TestClient) -> None:
    response = client.post(
        "/v1/accounts",
        content=b"{}" + b" " * 300_000,
        headers={"Content-Type": "application/json", **SERVICE},
    )

    assert problem_of(response, 413)["code"] == "content_too_large"


def test_authentication_comes_before_the_body_limit(client: TestClient) -> None:
    response = client.post(
        "/v1/accounts",
        content=b"{}" + b" " * 300_000,
        headers={"Content-Type": "application/json"},
    )

    assert problem_of(response, 401)["code"] == "unauthenticated"


# Never a 500 for anything a client sends

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.dates().map(str),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

VALID_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", ""): {
        "email": "fuzz@example.com",
        "display_name": "Fuzz",
        "consent_version": "1",
        "profile": {"birth_year": 1990, "prefecture": "Tokyo", "job_title": "Dev"},
        "work_history": [{"company": "A", "title": "B", "from": "2020-01-01"}],
        "desired": {"locations": ["Tokyo"], "min_salary": 1},
        "notifications": {"scouts": True},
        "channel": "web",
    },
    ("PATCH", "/preferences"): {
        "profile": {"job_title": "Dev"},
        "work_history": [],
        "desired": {"min_salary": 1},
        "notifications": {"scouts": False},
    },
    ("POST", "/scouts"): {"scout_id": "s", "company_id": "c", "job_id": "j"},
    ("POST", "/gift-claim"): {"company_id": "c", "start_date": "2025-04-01"},
    ("POST", "/withdrawal"): {"reason": "other", "comment": "x", "acknowledge_gift_loss": True},
}


def mutated(body: dict[str, Any], data: st.DataObject) -> Any:
    """A valid body with one field (or the whole body) replaced by arbitrary JSON."""
    choice = data.draw(st.sampled_from(["whole", "field", "nested", "extra"]))
    if choice == "whole":
        return data.draw(JSON)
    changed = dict(body)
    key = data.draw(st.sampled_from(sorted(body)))
    if choice == "field":
        changed[key] = data.draw(JSON)
    elif choice == "nested" and isinstance(body[key], dict) and body[key]:
        inner = dict(body[key])
        inner[data.draw(st.sampled_from(sorted(inner)))] = data.draw(JSON)
        changed[key] = inner
    else:
        changed[data.draw(st.text(max_size=12))] = data.draw(JSON)
    return changed


@hypothesis_settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_client_input_causes_a_server_error(
    client: TestClient, accounts: Accounts, data: st.DataObject
) -> None:
    account_id = accounts.register(
        email=f"fuzz-{uuid4().hex}@example.com", display_name="Fuzz", consent_version="1"
    )
    accounts.receive_scout(account_id, scout_id="s", company_id="c", job_id="j")
    (method, suffix), valid = data.draw(st.sampled_from(sorted(VALID_BODIES.items())))
    path_id = data.draw(st.sampled_from([str(account_id), str(uuid4())]) | st.text(min_size=1))
    path = (
        "/v1/accounts"
        if suffix == "" and method == "POST"
        else (f"/v1/accounts/{quote(path_id, safe='')}{suffix}")
    )

    # Python's JSON reader takes NaN and Infinity, so the service must cope with them too.
    response = client.request(
        method,
        path,
        content=json.dumps(mutated(valid, data)),
        headers={**SERVICE, "Content-Type": "application/json"},
    )

    assert response.status_code < 500, response.text
    assert response.status_code in (200, 201, 202) or (
        response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    )


def test_a_problem_stays_small_and_names_no_unknown_key(client: TestClient) -> None:
    body = {f"k{index}-hanako@example.jp": index for index in range(8_000)}

    response = client.post("/v1/accounts", json=body, headers=SERVICE)

    problem = problem_of(response, 422)
    assert len(response.content) < 4096
    assert len(problem["errors"]) == 20
    assert problem["errors_omitted"] > 0
    assert "hanako" not in response.text


PLANTED = "planted-hanako@example.jp"
# Parameters are fixed values: pytest-xdist workers must collect the same test ids.
UNKNOWN_ID = "0b7c3a52-8e1d-4f6a-9c2e-5d4b3a291f07"


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("POST", f"/admin/v1/erasures/{UNKNOWN_ID}/services/{PLANTED}/retry", "ops"),
        ("GET", f"/admin/v1/dead-letters/{PLANTED}", "ops"),
        ("POST", f"/admin/v1/dead-letters/{PLANTED}/0/0/discard", "ops"),
        ("GET", f"/admin/v1/stats/withdrawal-reasons?until={PLANTED}", "ops"),
        ("GET", f"/admin/v1/accounts?{PLANTED}=1", "ops"),
        ("GET", f"/v1/accounts/{PLANTED}", "service"),
        ("GET", f"/v1/accounts/{UNKNOWN_ID}?{PLANTED}=1", "service"),
    ],
)
def test_no_problem_echoes_a_path_or_query_value(
    client: TestClient, method: str, path: str, role: str
) -> None:
    response = client.request(method, path, headers=auth(role))

    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert "planted" not in response.text and "hanako" not in response.text
