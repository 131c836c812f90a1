"""POST /v1/scouts: many scouts in one request, each with the single route's outcome, on
SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from fastapi.testclient import TestClient
from support import auth
from test_accounts_api import assert_problem, register, scout, withdraw

from lifecycle.api.routes.scouts import (
    MAX_BULK_SCOUTS,
    BulkScoutsRecorded,
    BulkScoutsRequest,
    results_json,
)
from lifecycle.application import Accounts, ScoutItem, ScoutOutcome
from lifecycle.bulk_scouts import BulkScouts
from lifecycle.domain import Account
from lifecycle.errors import (
    AccountNotFoundError,
    AccountPurgedError,
    AccountWithdrawingError,
    LifecycleError,
)

SERVICE = auth("service")


def item(account_id: str, scout_id: str, company_id: str = "c-1") -> dict[str, str]:
    return {"account_id": account_id, "scout_id": scout_id, "company_id": company_id, "job_id": "j"}


def bulk(client: TestClient, items: list[dict[str, Any]]) -> httpx.Response:
    return client.post("/v1/scouts", json={"scouts": items}, headers=SERVICE)


def scouts_of(client: TestClient, account_id: str) -> int:
    response = client.get(f"/v1/accounts/{account_id}", headers=SERVICE)
    assert response.status_code == 200, response.text
    return int(response.json()["scouts_received"])


def test_each_item_gets_the_single_routes_outcome_in_order(
    client: TestClient, accounts: Accounts
) -> None:
    active, other, withdrawing, purged = (register(client) for _ in range(4))
    assert scout(client, active, "seen", "c-1").status_code == 201
    assert withdraw(client, withdrawing).status_code == 202
    assert withdraw(client, purged).status_code == 202
    assert accounts.purge(UUID(purged)) is True

    response = bulk(
        client,
        [
            item(active, "s-1"),
            item(other, "s-1"),
            item(active, "seen"),
            item(str(uuid4()), "s-2"),
            item(withdrawing, "s-3"),
            item(active, "s-1"),  # the same scout twice in one request: recorded once
            item(purged, "s-5"),
            item(active, "s-6", "c-2"),
        ],
    )

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["result"], r["status"]) for r in results] == [
        ("recorded", 201),
        ("recorded", 201),
        ("duplicate", 200),
        ("refused", 404),
        ("refused", 409),
        ("duplicate", 200),
        ("refused", 410),
        ("recorded", 201),
    ]
    scout_ids = ["s-1", "s-1", "seen", "s-2", "s-3", "s-1", "s-5", "s-6"]
    assert [r["scout_id"] for r in results] == scout_ids
    assert results[4]["account_id"] == withdrawing
    codes = [r["problem"]["code"] if r["problem"] else None for r in results]
    assert codes == [
        *(None, None, None, "account_not_found", "account_withdrawing"),
        *(None, "account_purged", None),
    ]
    # The same codes and statuses the single route answers for those accounts.
    assert_problem(scout(client, withdrawing, "s-3", "c-1"), 409, "account_withdrawing")
    assert_problem(scout(client, purged, "s-5", "c-1"), 410, "account_purged")
    assert results[4]["problem"]["type"] == "urn:lifecycle:problem:account_withdrawing"
    assert results[4]["problem"]["title"] == "Conflict"
    # Durable and visible: two new scouts on `active` (and the one seen), one on `other`.
    assert scouts_of(client, active) == 3
    assert scouts_of(client, other) == 1
    assert accounts.get_account(UUID(active)).scouts["s-6"]["company_id"] == "c-2"


def test_sending_the_same_items_again_records_nothing_new(
    client: TestClient, accounts: Accounts
) -> None:
    ids = [register(client) for _ in range(3)]
    items = [item(account_id, f"s-{n}") for account_id in ids for n in range(2)]
    first = bulk(client, items)
    versions = [accounts.get_account(UUID(account_id)).version for account_id in ids]

    again = bulk(client, items)

    assert [r["result"] for r in first.json()["results"]] == ["recorded"] * 6
    assert [r["result"] for r in again.json()["results"]] == ["duplicate"] * 6
    assert [accounts.get_account(UUID(account_id)).version for account_id in ids] == versions
    # And the single route agrees that they are recorded.
    assert scout(client, ids[0], "s-1", "c-1").status_code == 200


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"scouts": []}, ["body", "scouts"]),
        ({}, ["body", "scouts"]),
        ({"scouts": [{"account_id": "a", "scout_id": "s", "company_id": "c"}]}, None),
        ({"scouts": [{**item("a", "has space")}]}, None),
        ({"scouts": [item("a", "s-0"), item("not-a-uuid", "s")]}, None),
        ({"scouts": [item("a", "s-0"), item("12345678123456781234567812345678", "s")]}, None),
        ({"scouts": [{**item("a", "s"), "extra": 1}]}, None),
        ({"scouts": [item(str(uuid4()), f"s{n}") for n in range(MAX_BULK_SCOUTS + 1)]}, None),
    ],
)
def test_a_body_invalid_as_a_whole_is_422_and_records_nothing(
    client: TestClient, body: dict[str, Any], loc: list[str] | None
) -> None:
    account_id = register(client)
    if body.get("scouts"):
        body["scouts"][0]["account_id"] = account_id

    problem = assert_problem(
        client.post("/v1/scouts", json=body, headers=SERVICE), 422, "invalid_request"
    )

    if loc is not None:
        assert problem["errors"][0]["loc"] == loc
    assert scouts_of(client, account_id) == 0


def test_the_full_thousand_items_are_taken(client: TestClient) -> None:
    ids = [register(client) for _ in range(10)]
    items = [item(ids[n % 10], f"s-{n}") for n in range(MAX_BULK_SCOUTS)]

    response = bulk(client, items)

    assert response.status_code == 200, response.text
    assert {r["result"] for r in response.json()["results"]} == {"recorded"}
    assert [scouts_of(client, account_id) for account_id in ids] == [100] * 10


def test_bulk_scouts_are_for_the_service_role(client: TestClient) -> None:
    account_id = register(client)
    body = {"scouts": [item(account_id, "s-1")]}

    assert_problem(client.post("/v1/scouts", json=body), 401, "unauthenticated")
    assert_problem(client.post("/v1/scouts", json=body, headers=auth("ops")), 403, "forbidden")


def test_openapi_documents_the_route_its_results_and_problems(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/scouts"]["post"]

    assert set(operation["responses"]) >= {"200", "401", "403", "413", "422"}
    problem = "#/components/schemas/Problem"
    for status in ("401", "403", "413", "422"):
        content = operation["responses"][status]["content"]["application/problem+json"]["schema"]
        assert content["$ref"] == problem
    request = spec["components"]["schemas"]["BulkScoutsRequest"]["properties"]["scouts"]
    assert request["maxItems"] == MAX_BULK_SCOUTS
    result = spec["components"]["schemas"]["BulkScoutResult"]["properties"]["result"]
    assert set(result["enum"]) == {"recorded", "duplicate", "refused"}


# The application's bulk command


def test_a_conflict_on_one_account_retries_that_account_only(
    accounts: Accounts, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = {"display_name": "Sato Hanako", "consent_version": "2024-04"}
    raced, calm = (
        accounts.register(email=f"m-{uuid4().hex[:8]}@example.com", **fields) for _ in range(2)
    )
    unknown = uuid4()
    loads: list[list[UUID]] = []
    load_accounts = BulkScouts._load

    def racing_load(
        bulk: BulkScouts, account_ids: list[UUID]
    ) -> dict[UUID, Account | LifecycleError]:
        loaded = load_accounts(bulk, account_ids)
        loads.append(account_ids)
        if len(loads) == 1:
            # Another writer moves one account on after this load: the bulk save conflicts.
            accounts.receive_scout(raced, scout_id="other", company_id="c", job_id="j")
        return loaded

    monkeypatch.setattr(BulkScouts, "_load", racing_load)
    saved_before = accounts.group_commit.saved_requests

    outcomes = accounts.receive_scouts(
        [
            ScoutItem(raced, "s-1", "c-1", "j"),
            ScoutItem(calm, "s-1", "c-1", "j"),
            ScoutItem(unknown, "s-1", "c-1", "j"),
        ]
    )

    assert outcomes[:2] == [True, True]
    assert isinstance(outcomes[2], AccountNotFoundError)
    assert loads == [[raced, calm, unknown], [raced]]  # only the raced account was loaded again
    assert set(accounts.get_account(raced).scouts) == {"other", "s-1"}
    assert set(accounts.get_account(calm).scouts) == {"s-1"}
    # The concurrent scout, the failed batch, the calm account's save without the raced one
    # (PostgreSQL's error names it; SQLite's does not, so there both are saved alone), the
    # retry.
    alone = 1 if backend == "postgres" else 2
    assert accounts.group_commit.saved_requests - saved_before == 3 + alone


def test_an_items_refusal_leaves_the_others_recorded_in_one_save(accounts: Accounts) -> None:
    fields = {"display_name": "Sato Hanako", "consent_version": "2024-04"}
    ids = [accounts.register(email=f"m-{uuid4().hex[:8]}@example.com", **fields) for _ in range(3)]
    accounts.request_withdrawal(ids[1], reason="hired_elsewhere")
    batches_before = accounts.group_commit.batches

    outcomes = accounts.receive_scouts([ScoutItem(i, "s-1", "c-1", "j") for i in ids])

    assert outcomes[0] is True and outcomes[2] is True
    assert isinstance(outcomes[1], AccountWithdrawingError)
    assert accounts.group_commit.batches - batches_before == 1  # one transaction for both
    assert set(accounts.get_account(ids[0]).scouts) == {"s-1"}


def test_the_answer_written_as_json_is_the_documented_model_exactly() -> None:
    request = BulkScoutsRequest.model_validate(
        {"scouts": [item(str(uuid4()), f"s-{n}") for n in range(5)]}
    )
    outcomes: list[ScoutOutcome] = [
        True,
        False,
        AccountNotFoundError(),
        AccountWithdrawingError("account_withdrawing"),
        AccountPurgedError(),
    ]

    written = json.loads(results_json(request.scouts, outcomes))

    # Valid as the model, and nothing the model would add, drop or change.
    assert BulkScoutsRecorded.model_validate(written).model_dump(mode="json") == written
    assert [(r["result"], r["status"]) for r in written["results"]] == [
        ("recorded", 201),
        ("duplicate", 200),
        ("refused", 404),
        ("refused", 409),
        ("refused", 410),
    ]
    assert written["results"][2]["problem"]["code"] == "account_not_found"
