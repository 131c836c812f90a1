"""Bearer tokens and roles on every /v1 route, and the tokens generated when none are set."""

from __future__ import annotations

import io
import re
from typing import Any
from uuid import UUID, uuid4

import pytest
import structlog
from fastapi.testclient import TestClient
from support import TOKENS, auth

from lifecycle.api import create_app, with_generated_tokens
from lifecycle.api.auth import role_for_token
from lifecycle.application import Accounts
from lifecycle.crypto import new_master_key
from lifecycle.errors import StartupError
from lifecycle.settings import ROLES, Settings, token_digest


@pytest.fixture
def account_id(accounts: Accounts) -> UUID:
    """An active account that a company has scouted, so every route can succeed on it."""
    account_id = accounts.register(
        email=f"member-{uuid4().hex[:10]}@example.com",
        display_name="Tanaka Jiro",
        consent_version="2024-04",
    )
    accounts.receive_scout(account_id, scout_id="scout-0", company_id="company-1", job_id="j")
    return account_id


def registration() -> dict[str, Any]:
    return {
        "email": f"member-{uuid4().hex[:10]}@example.com",
        "display_name": "Tanaka Jiro",
        "consent_version": "2024-04",
    }


# Every route under /v1: method, path, body (a callable for bodies that must be fresh),
# and the status the service role gets.
V1_ROUTES: list[tuple[str, str, Any, int]] = [
    ("POST", "/v1/accounts", registration, 201),
    ("GET", "/v1/accounts/{account_id}", None, 200),
    ("PATCH", "/v1/accounts/{account_id}/preferences", {"notifications": {"scouts": False}}, 200),
    (
        "POST",
        "/v1/accounts/{account_id}/scouts",
        {"scout_id": "scout-1", "company_id": "company-1", "job_id": "job-1"},
        201,
    ),
    (
        "POST",
        "/v1/scouts",
        {
            "scouts": [
                {
                    "account_id": "00000000-0000-4000-8000-000000000000",
                    "scout_id": "s-1",
                    "company_id": "c-1",
                    "job_id": "j",
                }
            ]
        },
        200,
    ),
    (
        "POST",
        "/v1/accounts/{account_id}/gift-claim",
        {"company_id": "company-1", "start_date": "2025-04-01"},
        201,
    ),
    ("GET", "/v1/accounts/{account_id}/withdrawal-preview", None, 200),
    ("POST", "/v1/accounts/{account_id}/withdrawal", {"reason": "other"}, 202),
    ("GET", "/v1/accounts/{account_id}/erasure", None, 200),
    ("POST", "/v1/accounts/{account_id}/data-exports", None, 202),
    # No export has this id (`NO_EXPORT`): 404 for the service role.
    ("GET", "/v1/accounts/{account_id}/data-exports/{export_id}", None, 404),
    ("GET", "/v1/accounts/{account_id}/data-exports/{export_id}/download", None, 404),
]
NO_EXPORT = "00000000-0000-4000-8000-00000000e4b7"
ROUTE_IDS = [f"{method} {path}" for method, path, _, _ in V1_ROUTES]


def call(
    client: TestClient,
    route: tuple[str, str, Any, int],
    account_id: UUID,
    headers: dict[str, str],
) -> Any:
    method, path, body, _ = route
    return client.request(
        method,
        path.format(account_id=account_id, export_id=NO_EXPORT),
        json=body() if callable(body) else body,
        headers=headers,
    )


def test_the_table_covers_every_v1_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    served = {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/v1/")
        for method in operations
    }

    assert served == {(method, path) for method, path, _, _ in V1_ROUTES}


@pytest.mark.parametrize("route", V1_ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer not-a-known-token"},
        {"Authorization": f"Basic {TOKENS['service']}"},
        {"Authorization": TOKENS["service"]},
        {"Authorization": f"Bearer {token_digest(TOKENS['service'])}"},
    ],
    ids=["none", "empty", "unknown", "basic", "no-scheme", "digest-as-token"],
)
def test_without_a_known_token_every_route_is_401(
    client: TestClient,
    accounts: Accounts,
    account_id: UUID,
    route: tuple[str, str, Any, int],
    headers: dict[str, str],
) -> None:
    version = accounts.get_account(account_id).version

    response = call(client, route, account_id, headers)

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert accounts.get_account(account_id).version == version


def test_an_unknown_token_is_named_invalid_in_the_challenge(
    client: TestClient, account_id: UUID
) -> None:
    response = client.get(
        f"/v1/accounts/{account_id}", headers={"Authorization": "Bearer nope-nope"}
    )

    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert "nope-nope" not in response.text


@pytest.mark.parametrize("route", V1_ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("role", ["ops", "auditor"])
def test_with_another_role_every_route_is_403(
    client: TestClient,
    accounts: Accounts,
    account_id: UUID,
    route: tuple[str, str, Any, int],
    role: str,
) -> None:
    version = accounts.get_account(account_id).version

    response = call(client, route, account_id, auth(role))

    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "forbidden"
    assert accounts.get_account(account_id).version == version


# What the scout service may call: recording scouts, single and bulk, nothing else.
SCOUT_ROUTES = {"POST /v1/accounts/{account_id}/scouts", "POST /v1/scouts"}


@pytest.mark.parametrize("route", V1_ROUTES, ids=ROUTE_IDS)
def test_the_scout_role_records_scouts_and_nothing_else(
    client: TestClient, accounts: Accounts, account_id: UUID, route: tuple[str, str, Any, int]
) -> None:
    """Issue 19: a scout-service token read members' personal data and withdrew them."""
    version = accounts.get_account(account_id).version

    response = call(client, route, account_id, auth("scout"))

    if f"{route[0]} {route[1]}" in SCOUT_ROUTES:
        assert response.status_code == route[3], response.text
    else:
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"
        assert "Tanaka" not in response.text
        assert accounts.get_account(account_id).version == version


@pytest.mark.parametrize("prefix", ["/admin/v1/accounts", "/audit/v1/hash-chain"])
def test_the_scout_role_reaches_no_admin_or_audit_route(client: TestClient, prefix: str) -> None:
    assert client.get(prefix, headers=auth("scout")).status_code == 403


@pytest.mark.parametrize("route", V1_ROUTES, ids=ROUTE_IDS)
def test_with_the_service_role_every_route_answers(
    client: TestClient, account_id: UUID, route: tuple[str, str, Any, int]
) -> None:
    response = call(client, route, account_id, auth("service"))

    assert response.status_code == route[3], response.text


def test_the_scheme_name_is_case_insensitive(client: TestClient, account_id: UUID) -> None:
    response = client.get(
        f"/v1/accounts/{account_id}", headers={"Authorization": f"bearer {TOKENS['service']}"}
    )

    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs"])
def test_health_and_docs_need_no_token(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_openapi_documents_bearer_auth_on_v1(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()

    assert spec["info"]["title"] == "lifecycle"
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    operation = spec["paths"]["/v1/accounts/{account_id}"]["get"]
    assert operation["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


# Tokens


def test_role_for_token_finds_the_role_by_digest() -> None:
    roles = {token_digest(token): role for role, token in TOKENS.items()}

    assert role_for_token(TOKENS["ops"], roles) == "ops"
    assert role_for_token("other", roles) is None
    assert role_for_token(token_digest(TOKENS["ops"]), roles) is None
    assert role_for_token(TOKENS["ops"], {}) is None


def test_configured_tokens_are_kept_and_nothing_is_printed(settings: Settings) -> None:
    out = io.StringIO()

    assert with_generated_tokens(settings, out) is settings
    assert out.getvalue() == ""


def printed_tokens(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ +(service|scout|ops|auditor) +(\S+)$", text, flags=re.MULTILINE))


def test_a_production_database_without_tokens_refuses_to_start(
    postgres_url: str, pg_schema: str
) -> None:
    """As without a master key: generated tokens would be printed into a log stream."""
    settings = Settings(
        database_url=postgres_url, database_schema=pg_schema, master_key=new_master_key()
    )
    out = io.StringIO()
    with pytest.raises(StartupError) as refused:
        with_generated_tokens(settings, out)
    assert "LIFECYCLE_API_TOKENS is required" in refused.value.detail
    assert out.getvalue() == ""


@pytest.mark.parametrize("backend", ["sqlite"])
def test_without_tokens_the_app_generates_prints_once_and_never_logs_them(
    settings: Settings,
    accounts: Accounts,
    account_id: UUID,
    capsys: pytest.CaptureFixture[str],
) -> None:
    no_tokens = settings.model_copy(update={"api_tokens": {}})

    with structlog.testing.capture_logs() as logs:
        app = create_app(no_tokens, accounts)
        printed = capsys.readouterr().out
        with TestClient(app) as client:
            path = f"/v1/accounts/{account_id}"
            tokens = printed_tokens(printed)
            with_service = client.get(
                path, headers={"Authorization": f"Bearer {tokens['service']}"}
            )
            with_ops = client.get(path, headers={"Authorization": f"Bearer {tokens['ops']}"})
            with_old = client.get(path, headers=auth("service"))
            without = client.get(path)

    assert set(tokens) == set(ROLES)
    assert len(set(tokens.values())) == len(ROLES)
    assert with_service.status_code == 200
    assert with_ops.status_code == 403
    assert with_old.status_code == 401
    assert without.status_code == 401
    # Logged that it happened, never the tokens themselves.
    assert any(event["event"] == "api_tokens_generated" for event in logs)
    logged = repr(logs)
    assert all(token not in logged for token in tokens.values())
    # The app keeps digests only.
    kept = app.state.settings.api_tokens
    assert kept == {token_digest(token): role for role, token in tokens.items()}
    assert all(token not in repr(app.state.settings) for token in tokens.values())
    # Printed once: nothing more on stdout while serving.
    assert printed_tokens(capsys.readouterr().out) == {}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_generated_settings_do_not_generate_again(settings: Settings) -> None:
    first_out, second_out = io.StringIO(), io.StringIO()

    generated = with_generated_tokens(settings.model_copy(update={"api_tokens": {}}), first_out)
    again = with_generated_tokens(generated, second_out)

    assert set(printed_tokens(first_out.getvalue())) == set(ROLES)
    assert again is generated
    assert second_out.getvalue() == ""
    assert set(generated.api_tokens.values()) == set(ROLES)


def test_every_protected_route_is_401_before_it_reads_a_malformed_body(
    client: TestClient, account_id: UUID
) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    protected = [
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith(("/v1/", "/admin/", "/audit/"))
        for method in operations
    ]
    assert len(protected) > 20

    for method, path in protected:
        url = path.format(
            account_id=account_id,
            receipt_id=account_id,
            export_id=NO_EXPORT,
            service="mail",
            group="mail",
            partition=0,
            offset=0,
        )
        for body in (b"{not json", b"\xff\xfe\x00", b'{"unknown": 1}'):
            response = client.request(
                method, url, content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 401, (method, path, body, response.text)
            assert response.json()["code"] == "unauthenticated"
