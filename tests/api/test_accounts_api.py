"""The member-facing routes under /v1, end to end through HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from fastapi.testclient import TestClient
from support import auth

from lifecycle.account_terms import MAX_COMMENT_LENGTH, REDACTED, WithdrawalReason
from lifecycle.api import create_app
from lifecycle.api.account_view import REDACTED_OUT
from lifecycle.application import Accounts
from lifecycle.settings import Settings

SERVICE = auth("service")


def new_email() -> str:
    return f"member-{uuid4().hex[:10]}@example.com"


def registration(**overrides: Any) -> dict[str, Any]:
    return {
        "email": new_email(),
        "display_name": "Sato Hanako",
        "consent_version": "2024-04",
        **overrides,
    }


FULL_REGISTRATION: dict[str, Any] = {
    "display_name": "Suzuki Ichiro",
    "phone": "090-1234-5678",
    "profile": {"birth_year": 1990, "prefecture": "Tokyo", "job_title": "Backend engineer"},
    "work_history": [
        {"company": "Acme KK", "title": "Engineer", "from": "2014-04-01", "to": "2019-03-31"},
        {"company": "Example Inc", "title": "Senior engineer", "from": "2019-04-01"},
    ],
    "desired": {
        "locations": ["Tokyo", "Remote"],
        "industries": ["IT"],
        "job_types": ["full_time"],
        "min_salary": 8_000_000,
    },
    "notifications": {"scouts": True, "recommendations": False, "notices": True},
    "consent_version": "2024-04",
    "channel": "app",
}


def register(client: TestClient, **overrides: Any) -> str:
    response = client.post("/v1/accounts", json=registration(**overrides), headers=SERVICE)
    assert response.status_code == 201, response.text
    return str(response.json()["account_id"])


def assert_problem(
    response: httpx.Response, status: int, code: str, reason: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(code)
    assert {"type", "title", "status", "detail", "code", "instance"} <= set(body)
    assert body["instance"].endswith(response.headers["X-Request-ID"])
    if reason is not None:
        assert body["reason"] == reason
    return body


def version_of(accounts: Accounts, account_id: str) -> int:
    return int(accounts.get_account(UUID(account_id)).version)


def scout(client: TestClient, account_id: str, scout_id: str, company_id: str) -> httpx.Response:
    return client.post(
        f"/v1/accounts/{account_id}/scouts",
        json={"scout_id": scout_id, "company_id": company_id, "job_id": "job-1"},
        headers=SERVICE,
    )


def withdraw(client: TestClient, account_id: str, **body: Any) -> httpx.Response:
    return client.post(
        f"/v1/accounts/{account_id}/withdrawal",
        json={"reason": "hired_elsewhere", **body},
        headers=SERVICE,
    )


# Registration


def test_register_answers_201_with_id_and_location(client: TestClient) -> None:
    response = client.post("/v1/accounts", json=registration(), headers=SERVICE)

    assert response.status_code == 201
    account_id = UUID(response.json()["account_id"])
    assert response.headers["Location"] == f"/v1/accounts/{account_id}"
    assert client.get(response.headers["Location"], headers=SERVICE).status_code == 200


def test_registered_account_reads_back_with_defaults(client: TestClient) -> None:
    email = new_email()
    account_id = register(client, email=email)

    body = client.get(f"/v1/accounts/{account_id}", headers=SERVICE).json()

    assert body["account_id"] == account_id
    assert body["email"] == email
    assert body["display_name"] == "Sato Hanako"
    assert body["phone"] is None
    assert body["profile"] == {"birth_year": None, "prefecture": None, "job_title": None}
    assert body["work_history"] == []
    assert body["desired"] == {
        "locations": [],
        "industries": [],
        "job_types": [],
        "min_salary": None,
    }
    assert body["notifications"] == {"scouts": True, "recommendations": True, "notices": True}
    assert body["consent_version"] == "2024-04"
    assert body["channel"] == "web"
    assert body["status"] == "active"
    assert body["registered_at"]
    assert body["scouts_received"] == 0
    assert body["gift"] is None
    assert body["withdrawal"] is None


def test_full_registration_reads_back_as_sent(client: TestClient) -> None:
    email = new_email()
    account_id = register(client, email=email.upper(), **FULL_REGISTRATION)

    body = client.get(f"/v1/accounts/{account_id}", headers=SERVICE).json()

    assert body["email"] == email  # normalised
    for field in ("display_name", "phone", "profile", "desired", "notifications", "channel"):
        assert body[field] == FULL_REGISTRATION[field], field
    assert body["work_history"] == [
        {"company": "Acme KK", "title": "Engineer", "from": "2014-04-01", "to": "2019-03-31"},
        {"company": "Example Inc", "title": "Senior engineer", "from": "2019-04-01", "to": None},
    ]


def test_register_with_an_address_in_use_is_409(client: TestClient) -> None:
    email = new_email()
    register(client, email=email)

    response = client.post(
        "/v1/accounts", json=registration(email=f"  {email.upper()} "), headers=SERVICE
    )

    assert_problem(response, 409, "email_in_use")


@pytest.mark.parametrize("invisible", ["\u200b", "\u200d", "\u200f", "\ufeff", "\u00ad"])
def test_an_invisible_character_variant_of_an_address_opens_no_second_account(
    client: TestClient, invisible: str
) -> None:
    email = new_email()
    register(client, email=email)
    variant = email[:3] + invisible + email[3:]

    response = client.post("/v1/accounts", json=registration(email=variant), headers=SERVICE)

    assert response.status_code == 422, response.text
    assert variant not in response.text and invisible not in response.text


@pytest.mark.parametrize(
    "email",
    [
        "attacker＠evil.example，victim@example.jp",  # noqa: RUF001 - full-width on purpose
        "victim@example.jp；attacker@evil.example",  # noqa: RUF001
        "＜victim@example.jp＞",  # noqa: RUF001
        "a@x.jp,b@y.jp",
        '"victim"@example.jp',
    ],
)
def test_an_address_that_folds_into_more_than_one_mailbox_is_422(
    client: TestClient, email: str
) -> None:
    response = client.post("/v1/accounts", json=registration(email=email), headers=SERVICE)

    problem = assert_problem(response, 422, "invalid_request")
    assert ["body", "email"] in [error["loc"] for error in problem["errors"]]
    assert email not in response.text


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"email": None}, ["body", "email"]),
        ({"email": "no-at-sign.example.com"}, ["body", "email"]),
        ({"display_name": "   "}, ["body", "display_name"]),
        ({"display_name": "x" * 101}, ["body", "display_name"]),
        ({"consent_version": ""}, ["body", "consent_version"]),
        ({"channel": "fax"}, ["body", "channel"]),
        ({"phone": "call me maybe"}, ["body", "phone"]),
        ({"profile": {"birth_year": 1850}}, ["body", "profile", "birth_year"]),
        ({"profile": {"birth_year": 3000}}, ["body", "profile", "birth_year"]),
        ({"profile": {"birth_year": "1990"}}, ["body", "profile", "birth_year"]),
        ({"profile": {"prefecture": 13}}, ["body", "profile", "prefecture"]),
        ({"desired": {"min_salary": -1}}, ["body", "desired", "min_salary"]),
        ({"desired": {"locations": "Tokyo"}}, ["body", "desired", "locations"]),
        ({"notifications": {"scouts": "yes"}}, ["body", "notifications", "scouts"]),
        ({"work_history": [{"company": "A", "title": "B"}]}, ["body", "work_history", 0, "from"]),
        (
            {"work_history": [{"company": "A", "title": "B", "from": "2020-01-01", "to": "2019"}]},
            ["body", "work_history", 0, "to"],
        ),
        (
            {
                "work_history": [
                    {"company": "A", "title": "B", "from": "2020-01-01", "to": "2019-01-01"}
                ]
            },
            ["body", "work_history", 0],
        ),
        ({"unknown": 1}, ["body"]),  # named by place, never by key
        ({"profile": {"job_title": "x", "salary": 1}}, ["body", "profile"]),
    ],
)
def test_invalid_registration_is_422_naming_the_field(
    client: TestClient, change: dict[str, Any], loc: list[str | int]
) -> None:
    body = {key: value for key, value in registration(**change).items() if value is not None}

    response = client.post("/v1/accounts", json=body, headers=SERVICE)

    problem = assert_problem(response, 422, "invalid_request")
    assert loc in [error["loc"] for error in problem["errors"]]


def test_malformed_json_is_a_422_problem(client: TestClient) -> None:
    response = client.post(
        "/v1/accounts",
        content=b'{"email": "a@example.com",',
        headers={**SERVICE, "Content-Type": "application/json"},
    )

    problem = assert_problem(response, 422, "invalid_request")
    assert problem["errors"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("content", [b"[]", b'"text"', b"42", b"null"])
def test_a_body_that_is_no_object_is_422(client: TestClient, content: bytes) -> None:
    response = client.post(
        "/v1/accounts", content=content, headers={**SERVICE, "Content-Type": "application/json"}
    )

    assert_problem(response, 422, "invalid_request")


def test_a_body_that_is_no_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/accounts",
        content=b"email=a@example.com",
        headers={**SERVICE, "Content-Type": "text/plain"},
    )

    assert_problem(response, 422, "invalid_request")


def test_a_body_that_is_too_large_is_413(client: TestClient) -> None:
    response = client.post(
        "/v1/accounts",
        json=registration(display_name="x" * 300_000),
        headers=SERVICE,
    )

    assert_problem(response, 413, "content_too_large")


# Reading


def test_unknown_account_is_404(client: TestClient) -> None:
    response = client.get(f"/v1/accounts/{uuid4()}", headers=SERVICE)

    assert_problem(response, 404, "account_not_found")


@pytest.mark.parametrize(
    "account_id", ["not-a-uuid", "123", "someone@example.com", "x" * 500, "%00", "%F0%9F%98%80"]
)
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("PATCH", "/preferences", {}),
        ("POST", "/scouts", {"scout_id": "s", "company_id": "c", "job_id": "j"}),
        ("POST", "/gift-claim", {"company_id": "c", "start_date": "2025-04-01"}),
        ("GET", "/withdrawal-preview", None),
        ("POST", "/withdrawal", {"reason": "other"}),
    ],
)
def test_an_id_that_is_no_uuid_is_404_on_every_route(
    client: TestClient, account_id: str, method: str, suffix: str, body: Any
) -> None:
    response = client.request(
        method, f"/v1/accounts/{account_id}{suffix}", json=body, headers=SERVICE
    )

    assert_problem(response, 404, "account_not_found")
    assert "example.com" not in response.text


def test_purged_account_is_410_on_every_route(client: TestClient, accounts: Accounts) -> None:
    account_id = register(client)
    assert withdraw(client, account_id).status_code == 202
    assert accounts.purge(UUID(account_id)) is True

    base = f"/v1/accounts/{account_id}"
    responses = [
        client.get(base, headers=SERVICE),
        client.patch(f"{base}/preferences", json={}, headers=SERVICE),
        scout(client, account_id, "s-1", "c-1"),
        client.post(
            f"{base}/gift-claim",
            json={"company_id": "c-1", "start_date": "2025-04-01"},
            headers=SERVICE,
        ),
        client.get(f"{base}/withdrawal-preview", headers=SERVICE),
        withdraw(client, account_id),
    ]

    for response in responses:
        assert_problem(response, 410, "account_purged")


def test_no_read_answers_5xx_because_its_values_are_redacted(
    client: TestClient, accounts: Accounts
) -> None:
    """A live account whose key is gone (e.g. shredded by an old reshred after a restore)
    reads with `[redacted]` in place of every personal value, of whatever type."""
    account_id = register(client, **{**FULL_REGISTRATION, "email": new_email()})
    withdrawing = register(client, **{**FULL_REGISTRATION, "email": new_email()})
    assert withdraw(client, withdrawing, comment="a comment").status_code == 202
    assert accounts.vault.destroy_keys_of_purged_accounts([UUID(account_id), UUID(withdrawing)])

    for shredded in (account_id, withdrawing):
        base = f"/v1/accounts/{shredded}"
        response = client.get(base, headers=SERVICE)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["email"] == body["display_name"] == body["phone"] == REDACTED
        assert body["work_history"] == REDACTED
        assert body["profile"]["job_title"] == REDACTED
        assert body["desired"]["industries"] == ["IT"]  # not personal: still there
        for path in ("withdrawal-preview", "erasure"):
            assert client.get(f"{base}/{path}", headers=SERVICE).status_code == 200
    assert REDACTED_OUT == REDACTED


# Preferences


def test_editing_the_job_title_changes_profile_and_keeps_the_rest(
    client: TestClient,
) -> None:
    account_id = register(client, **FULL_REGISTRATION)

    response = client.patch(
        f"/v1/accounts/{account_id}/preferences",
        json={"profile": {"job_title": "Engineering manager"}},
        headers=SERVICE,
    )

    assert response.status_code == 200
    assert response.json() == {"changed": ["profile"]}
    body = client.get(f"/v1/accounts/{account_id}", headers=SERVICE).json()
    assert body["profile"] == {
        "birth_year": 1990,
        "prefecture": "Tokyo",
        "job_title": "Engineering manager",
    }


def test_editing_several_parts_reports_each_once_in_api_terms(client: TestClient) -> None:
    account_id = register(client, **FULL_REGISTRATION)

    response = client.patch(
        f"/v1/accounts/{account_id}/preferences",
        json={
            "notifications": {"recommendations": True},
            "profile": {"prefecture": None, "job_title": "CTO"},
            "desired": {"min_salary": None, "locations": ["Osaka"]},
            "work_history": [],
        },
        headers=SERVICE,
    )

    assert response.json() == {"changed": ["profile", "work_history", "desired", "notifications"]}
    body = client.get(f"/v1/accounts/{account_id}", headers=SERVICE).json()
    assert body["profile"] == {"birth_year": 1990, "prefecture": None, "job_title": "CTO"}
    assert body["work_history"] == []
    assert body["desired"] == {
        "locations": ["Osaka"],
        "industries": ["IT"],
        "job_types": ["full_time"],
        "min_salary": None,
    }
    assert body["notifications"] == {"scouts": True, "recommendations": True, "notices": True}


def test_editing_only_the_profile_fields_of_the_domain_profile(client: TestClient) -> None:
    account_id = register(client, **FULL_REGISTRATION)

    response = client.patch(
        f"/v1/accounts/{account_id}/preferences",
        json={"profile": {"birth_year": 1991}},
        headers=SERVICE,
    )

    assert response.json() == {"changed": ["profile"]}
    profile = client.get(f"/v1/accounts/{account_id}", headers=SERVICE).json()["profile"]
    assert profile == {"birth_year": 1991, "prefecture": "Tokyo", "job_title": "Backend engineer"}


def test_editing_to_identical_values_changes_nothing_and_records_nothing(
    client: TestClient, accounts: Accounts
) -> None:
    account_id = register(client, **FULL_REGISTRATION)
    before = version_of(accounts, account_id)

    response = client.patch(
        f"/v1/accounts/{account_id}/preferences",
        json={
            "profile": FULL_REGISTRATION["profile"],
            "work_history": FULL_REGISTRATION["work_history"],
            "desired": FULL_REGISTRATION["desired"],
            "notifications": FULL_REGISTRATION["notifications"],
        },
        headers=SERVICE,
    )

    assert response.status_code == 200
    assert response.json() == {"changed": []}
    assert version_of(accounts, account_id) == before


def test_an_empty_edit_changes_nothing(client: TestClient, accounts: Accounts) -> None:
    account_id = register(client)
    before = version_of(accounts, account_id)

    response = client.patch(f"/v1/accounts/{account_id}/preferences", json={}, headers=SERVICE)

    assert response.json() == {"changed": []}
    assert version_of(accounts, account_id) == before


def test_a_real_edit_records_one_event(client: TestClient, accounts: Accounts) -> None:
    account_id = register(client)
    before = version_of(accounts, account_id)

    client.patch(
        f"/v1/accounts/{account_id}/preferences",
        json={"notifications": {"scouts": False}, "profile": {"job_title": "Designer"}},
        headers=SERVICE,
    )

    assert version_of(accounts, account_id) == before + 1


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"profile": None}, ["body", "profile"]),
        ({"work_history": None}, ["body", "work_history"]),
        ({"notifications": {"scouts": None}}, ["body", "notifications", "scouts"]),
        ({"notifications": {"scouts": 0}}, ["body", "notifications", "scouts"]),
        ({"profile": {"job_title": None}}, ["body", "profile", "job_title"]),
        ({"profile": {"birth_year": 1800}}, ["body", "profile", "birth_year"]),
        ({"desired": {"min_salary": -5}}, ["body", "desired", "min_salary"]),
        # An unknown field is named by where it is, never by its key (the client's text).
        ({"email": "other@example.com"}, ["body"]),
        ({"status": "active"}, ["body"]),
    ],
)
def test_invalid_edit_is_422(
    client: TestClient, accounts: Accounts, body: dict[str, Any], loc: list[str | int]
) -> None:
    account_id = register(client)
    before = version_of(accounts, account_id)

    response = client.patch(f"/v1/accounts/{account_id}/preferences", json=body, headers=SERVICE)

    problem = assert_problem(response, 422, "invalid_request")
    assert loc in [error["loc"] for error in problem["errors"]]
    assert version_of(accounts, account_id) == before


def test_editing_a_withdrawing_account_is_409(client: TestClient) -> None:
    account_id = register(client)
    withdraw(client, account_id)

    response = client.patch(
        f"/v1/accounts/{account_id}/preferences",
        json={"notifications": {"scouts": False}},
        headers=SERVICE,
    )

    assert_problem(response, 409, "account_withdrawing")


# Scouts


def test_a_scout_is_recorded_once(client: TestClient, accounts: Accounts) -> None:
    account_id = register(client)

    first = scout(client, account_id, "scout-1", "company-1")
    version = version_of(accounts, account_id)
    again = scout(client, account_id, "scout-1", "company-1")

    assert first.status_code == 201
    assert first.json() == {"scout_id": "scout-1", "recorded": True}
    assert again.status_code == 200
    assert again.json() == {"scout_id": "scout-1", "recorded": False}
    assert version_of(accounts, account_id) == version
    assert client.get(f"/v1/accounts/{account_id}", headers=SERVICE).json()["scouts_received"] == 1
    assert scout(client, account_id, "scout-2", "company-1").status_code == 201


def test_a_scout_for_a_withdrawing_account_is_409(client: TestClient) -> None:
    account_id = register(client)
    withdraw(client, account_id)

    assert_problem(scout(client, account_id, "scout-1", "c-1"), 409, "account_withdrawing")


def test_a_scout_for_an_unknown_account_is_404(client: TestClient) -> None:
    assert_problem(scout(client, str(uuid4()), "scout-1", "c-1"), 404, "account_not_found")


@pytest.mark.parametrize(
    "body",
    [
        {"scout_id": "s-1", "company_id": "c-1"},
        {"scout_id": "", "company_id": "c-1", "job_id": "j"},
        {"scout_id": "has space", "company_id": "c-1", "job_id": "j"},
        {"scout_id": 7, "company_id": "c-1", "job_id": "j"},
        {"scout_id": "s-1", "company_id": "c-1", "job_id": "j", "extra": True},
    ],
)
def test_an_invalid_scout_is_422(client: TestClient, body: dict[str, Any]) -> None:
    account_id = register(client)

    response = client.post(f"/v1/accounts/{account_id}/scouts", json=body, headers=SERVICE)

    assert_problem(response, 422, "invalid_request")


# Gift


def claim(client: TestClient, account_id: str, company_id: str) -> httpx.Response:
    return client.post(
        f"/v1/accounts/{account_id}/gift-claim",
        json={"company_id": company_id, "start_date": "2025-04-01"},
        headers=SERVICE,
    )


def test_a_gift_is_claimed_for_a_company_that_scouted(client: TestClient) -> None:
    account_id = register(client)
    scout(client, account_id, "scout-1", "company-1")

    response = claim(client, account_id, "company-1")

    assert response.status_code == 201
    assert response.json() == {
        "kind": "gift_card",
        "amount_jpy": 5000,
        "company_id": "company-1",
        "start_date": "2025-04-01",
    }
    gift = client.get(f"/v1/accounts/{account_id}", headers=SERVICE).json()["gift"]
    assert {k: gift[k] for k in ("kind", "amount_jpy", "company_id", "start_date")} == (
        response.json()
    )
    assert gift["claimed_at"]


def test_a_second_gift_claim_is_409(client: TestClient, accounts: Accounts) -> None:
    account_id = register(client)
    scout(client, account_id, "scout-1", "company-1")
    claim(client, account_id, "company-1")
    version = version_of(accounts, account_id)

    assert_problem(claim(client, account_id, "company-1"), 409, "gift_already_claimed")
    assert version_of(accounts, account_id) == version


def test_a_gift_for_a_company_that_never_scouted_is_422(client: TestClient) -> None:
    account_id = register(client)
    scout(client, account_id, "scout-1", "company-1")

    response = claim(client, account_id, "company-2")

    assert_problem(response, 422, "gift_not_eligible", reason="company_not_scouted")


def test_a_gift_without_any_scout_is_422(client: TestClient) -> None:
    account_id = register(client)

    assert_problem(claim(client, account_id, "company-1"), 422, "gift_not_eligible")


def test_a_gift_for_a_withdrawing_account_is_409(client: TestClient) -> None:
    account_id = register(client)
    scout(client, account_id, "scout-1", "company-1")
    withdraw(client, account_id)

    assert_problem(claim(client, account_id, "company-1"), 409, "account_withdrawing")


@pytest.mark.parametrize(
    "body",
    [
        {"company_id": "company-1"},
        {"company_id": "company-1", "start_date": "next monday"},
        {"company_id": "company-1", "start_date": "2025-02-30"},
        {"company_id": "company-1", "start_date": "2025-04-01", "amount_jpy": 10000},
    ],
)
def test_an_invalid_gift_claim_is_422(client: TestClient, body: dict[str, Any]) -> None:
    account_id = register(client)
    scout(client, account_id, "scout-1", "company-1")

    response = client.post(f"/v1/accounts/{account_id}/gift-claim", json=body, headers=SERVICE)

    assert_problem(response, 422, "invalid_request")


# Withdrawal preview


def preview(client: TestClient, account_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/accounts/{account_id}/withdrawal-preview", headers=SERVICE)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_preview_says_what_withdrawing_loses(client: TestClient) -> None:
    account_id = register(client)

    fresh = preview(client, account_id)
    scout(client, account_id, "scout-1", "company-1")
    scouted = preview(client, account_id)
    claim(client, account_id, "company-1")
    claimed = preview(client, account_id)

    assert fresh == {
        "status": "active",
        "gift_claimed": False,
        "gift_eligible": False,
        "gift_lost_on_withdrawal": False,
        "scouts_received": 0,
        "re_registration_starts_from_nothing": True,
        "reasons": [reason.value for reason in WithdrawalReason],
        "data_export_ready": False,
        "data_export": None,
    }
    assert scouted["gift_eligible"] is True
    assert scouted["gift_lost_on_withdrawal"] is True
    assert scouted["scouts_received"] == 1
    assert claimed["gift_claimed"] is True
    assert claimed["gift_eligible"] is False
    assert claimed["gift_lost_on_withdrawal"] is False
    assert set(fresh["reasons"]) == {
        "hired_via_platform",
        "hired_elsewhere",
        "too_many_notifications",
        "postings_mismatch",
        "hard_to_use",
        "other",
    }


def test_the_preview_of_an_unknown_account_is_404(client: TestClient) -> None:
    response = client.get(f"/v1/accounts/{uuid4()}/withdrawal-preview", headers=SERVICE)

    assert_problem(response, 404, "account_not_found")


# Withdrawal


def test_withdrawal_is_accepted_with_a_link_to_the_erasure(client: TestClient) -> None:
    account_id = register(client)

    response = withdraw(client, account_id, comment="Found a job, thanks")

    erasure = f"/v1/accounts/{account_id}/erasure"
    assert response.status_code == 202
    assert response.json() == {"status": "withdrawing", "erasure": erasure}
    assert response.headers["Location"] == erasure
    body = client.get(f"/v1/accounts/{account_id}", headers=SERVICE).json()
    assert body["status"] == "withdrawing"
    assert body["withdrawal"]["reason"] == "hired_elsewhere"
    assert body["withdrawal"]["requested_at"]
    assert "comment" not in body["withdrawal"]


def test_withdrawal_is_idempotent(client: TestClient, accounts: Accounts) -> None:
    account_id = register(client)
    first = withdraw(client, account_id)
    version = version_of(accounts, account_id)

    again = withdraw(client, account_id, reason="other", comment="changed my mind")

    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert version_of(accounts, account_id) == version
    body = client.get(f"/v1/accounts/{account_id}", headers=SERVICE).json()
    assert body["withdrawal"]["reason"] == "hired_elsewhere"


def test_hired_via_platform_without_gift_needs_acknowledgement(
    client: TestClient, accounts: Accounts
) -> None:
    account_id = register(client)
    scout(client, account_id, "scout-1", "company-1")
    version = version_of(accounts, account_id)

    refused = withdraw(client, account_id, reason="hired_via_platform")
    not_acknowledged = withdraw(
        client, account_id, reason="hired_via_platform", acknowledge_gift_loss=False
    )

    assert_problem(refused, 409, "gift_unclaimed")
    assert_problem(not_acknowledged, 409, "gift_unclaimed")
    assert version_of(accounts, account_id) == version
    accepted = withdraw(client, account_id, reason="hired_via_platform", acknowledge_gift_loss=True)
    assert accepted.status_code == 202


def test_hired_via_platform_with_the_gift_claimed_needs_nothing_more(client: TestClient) -> None:
    account_id = register(client)
    scout(client, account_id, "scout-1", "company-1")
    claim(client, account_id, "company-1")

    assert withdraw(client, account_id, reason="hired_via_platform").status_code == 202


def test_a_comment_of_the_maximum_length_is_accepted(client: TestClient) -> None:
    account_id = register(client)

    response = withdraw(client, account_id, comment="あ" * MAX_COMMENT_LENGTH)

    assert response.status_code == 202


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"comment": "x" * (MAX_COMMENT_LENGTH + 1)}, ["body", "comment"]),
        ({"reason": "bored"}, ["body", "reason"]),
        ({"reason": None}, ["body", "reason"]),
        ({"acknowledge_gift_loss": "sure"}, ["body", "acknowledge_gift_loss"]),
        ({"erase_now": True}, ["body"]),
    ],
)
def test_an_invalid_withdrawal_is_422(
    client: TestClient, accounts: Accounts, body: dict[str, Any], loc: list[str | int]
) -> None:
    account_id = register(client)

    response = withdraw(client, account_id, **body)

    problem = assert_problem(response, 422, "invalid_request")
    assert loc in [error["loc"] for error in problem["errors"]]
    assert accounts.get_account(UUID(account_id)).status.value == "active"


def test_withdrawal_of_an_unknown_account_is_404(client: TestClient) -> None:
    assert_problem(withdraw(client, str(uuid4())), 404, "account_not_found")


# The application's life with the app


def test_the_app_builds_and_closes_its_own_application(settings: Settings) -> None:
    app = create_app(settings)
    assert app.state.accounts is None

    with TestClient(app) as client:
        assert isinstance(app.state.accounts, Accounts)
        account_id = register(client)
        assert client.get(f"/v1/accounts/{account_id}", headers=SERVICE).status_code == 200

    assert app.state.accounts is None


def test_an_application_passed_in_is_left_open(settings: Settings, accounts: Accounts) -> None:
    with TestClient(create_app(settings, accounts)) as client:
        account_id = register(client)

    assert accounts.get_account(UUID(account_id)).display_name == "Sato Hanako"


def test_erasure_status_follows_withdrawal_to_purge(client: TestClient, accounts: Accounts) -> None:
    account_id = register(client)
    before = client.get(f"/v1/accounts/{account_id}/erasure", headers=auth("service"))
    assert before.status_code == 200
    assert before.json()["state"] == "not_requested"

    withdrawn = client.post(
        f"/v1/accounts/{account_id}/withdrawal", json={"reason": "other"}, headers=auth("service")
    )
    link = withdrawn.json()["erasure"]
    requested = client.get(link, headers=auth("service")).json()
    assert requested["state"] == "requested"
    assert requested["overdue"] is False
    assert requested["deadline_at"] is not None
    assert {name: s["state"] for name, s in requested["services"].items()} == {
        "scout": "pending",
        "chat": "pending",
        "mail": "pending",
    }

    accounts.purge(UUID(account_id))
    purged = client.get(link, headers=auth("service"))
    assert purged.status_code == 200
    assert purged.json()["state"] == "purged"
    assert purged.json()["purged_at"] is not None


def test_erasure_status_of_an_unknown_account_is_404(client: TestClient) -> None:
    response = client.get(f"/v1/accounts/{uuid4()}/erasure", headers=auth("service"))
    assert_problem(response, 404, "account_not_found")
