"""/admin/v1 (role ops), /metrics and /readyz: every route's auth, and what each answers."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from support import TOKENS, auth, read_topic, wait_until

from lifecycle.api import create_app
from lifecycle.application import Accounts
from lifecycle.erasure.process import Confirmation, ErasureProcess
from lifecycle.erasure.status import FAILED
from lifecycle.kafka.inspector import KafkaInspectorClient, NoKafka
from lifecycle.settings import Settings
from lifecycle.storage import Database
from projections.registry import READ_MODELS, open_read_models
from projections.runner import Projector
from schemas.contract import TopicNames

OPS = auth("ops")
SECRET_NAME = "Zephyrine Okonkwo"
SECRET_COMMENT = "chrysanthemum collection"


@pytest.fixture
def account_id(accounts: Accounts) -> UUID:
    return member(accounts)


def member(accounts: Accounts, *, withdraw: bool = False) -> UUID:
    account_id = accounts.register(
        email=f"m-{uuid.uuid4().hex[:10]}@example.jp",
        display_name=SECRET_NAME,
        consent_version="2026-04",
    )
    accounts.receive_scout(account_id, scout_id="s-1", company_id="acme", job_id="j-1")
    if withdraw:
        accounts.request_withdrawal(account_id, reason="postings_mismatch", comment=SECRET_COMMENT)
    return account_id


def project(accounts: Accounts) -> None:
    """What `lifecycle project` does on PostgreSQL (the embedded default catches up on read)."""
    for model in open_read_models(accounts.database):
        Projector(accounts, model).catch_up()


# Every route: method, path, and what the ops role gets on a fresh account.
ADMIN_ROUTES: list[tuple[str, str, int]] = [
    ("GET", "/admin/v1/accounts", 200),
    ("GET", "/admin/v1/accounts/{account_id}/timeline", 200),
    ("GET", "/admin/v1/erasures", 200),
    ("GET", "/admin/v1/erasures/{account_id}", 404),
    ("GET", "/admin/v1/erasures/{account_id}/receipt", 404),
    ("POST", "/admin/v1/erasures/{account_id}/services/mail/retry", 404),
    ("GET", "/admin/v1/data-exports", 200),
    # No export has this id (an account's): 404.
    ("POST", "/admin/v1/data-exports/{account_id}/services/mail/retry", 404),
    ("GET", "/admin/v1/stats/withdrawal-reasons", 200),
    ("GET", "/admin/v1/stats/gifts", 200),
    ("GET", "/admin/v1/stats/scouts", 200),
    ("GET", "/admin/v1/projections", 200),
    ("GET", "/admin/v1/consumers", 200),
    ("GET", "/admin/v1/dead-letters/scout", 200),
    ("POST", "/admin/v1/dead-letters/scout/0/0/redrive", 404),
    ("POST", "/admin/v1/dead-letters/scout/0/0/discard", 404),
]
ROUTE_IDS = [f"{method} {path}" for method, path, _ in ADMIN_ROUTES]


def call(client: TestClient, route: tuple[str, str, int], account_id: UUID, headers: Any) -> Any:
    method, path, _ = route
    return client.request(method, path.format(account_id=account_id), headers=headers)


def test_the_table_covers_every_admin_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    served = {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/admin/v1/")
        for method in operations
    }
    templates = {
        ("POST", "/admin/v1/erasures/{account_id}/services/{service}/retry"),
        ("POST", "/admin/v1/data-exports/{export_id}/services/{service}/retry"),
        ("POST", "/admin/v1/dead-letters/{group}/{partition}/{offset}/redrive"),
        ("POST", "/admin/v1/dead-letters/{group}/{partition}/{offset}/discard"),
        ("GET", "/admin/v1/dead-letters/{group}"),
    }
    concrete = {
        (method, path)
        for method, path, _ in ADMIN_ROUTES
        if "/0/0/" not in path and "/mail/" not in path and not path.endswith("/scout")
    }

    assert served == concrete | templates


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKENS['ops']}"}],
    ids=["none", "unknown", "basic"],
)
def test_without_a_known_token_every_admin_route_is_401(
    client: TestClient, account_id: UUID, route: tuple[str, str, int], headers: Any
) -> None:
    response = call(client, route, account_id, headers)

    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("role", ["service", "auditor"])
def test_with_another_role_every_admin_route_is_403(
    client: TestClient, account_id: UUID, route: tuple[str, str, int], role: str
) -> None:
    response = call(client, route, account_id, auth(role))

    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=ROUTE_IDS)
def test_with_the_ops_role_every_admin_route_answers(
    client: TestClient, account_id: UUID, route: tuple[str, str, int]
) -> None:
    response = call(client, route, account_id, OPS)

    assert response.status_code == route[2], response.text


def test_no_request_runs_ddl(
    settings: Settings, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    account_id = member(accounts)
    decrypting = settings.model_copy(update={"audit_decrypt_roles": ["auditor"]})

    def refuse(database: Database) -> None:
        raise AssertionError("DDL while answering a request")

    with TestClient(create_app(decrypting, accounts)) as client:
        monkeypatch.setattr(Database, "ddl", refuse)
        admin = [call(client, route, account_id, OPS).status_code for route in ADMIN_ROUTES]
        audit = [
            client.get(path, headers=auth("auditor")).status_code
            for path in (
                f"/audit/v1/accounts/{account_id}/events?personal=decrypted",
                "/audit/v1/hash-chain",
            )
        ]
        erasure = client.get(f"/v1/accounts/{account_id}/erasure", headers=auth("service"))

    assert admin == [expected for _, _, expected in ADMIN_ROUTES]
    assert audit == [200, 200]
    assert erasure.status_code == 200


# Accounts


def test_accounts_by_status_with_counts_and_pages(client: TestClient, accounts: Accounts) -> None:
    active = [member(accounts) for _ in range(3)]
    leaving = member(accounts, withdraw=True)
    project(accounts)

    everyone = client.get("/admin/v1/accounts", headers=OPS).json()
    withdrawing = client.get("/admin/v1/accounts?status=withdrawing", headers=OPS).json()
    first = client.get("/admin/v1/accounts?limit=2", headers=OPS).json()
    rest = client.get(f"/admin/v1/accounts?limit=2&after={first['next_after']}", headers=OPS)

    assert everyone["counts"] == {"active": 3, "withdrawing": 1, "purged": 0}
    assert {item["account_id"] for item in everyone["items"]} == {
        str(i) for i in [*active, leaving]
    }
    assert [item["account_id"] for item in withdrawing["items"]] == [str(leaving)]
    assert withdrawing["items"][0]["withdrawal_reason"] == "postings_mismatch"
    assert len(first["items"]) == 2 and first["next_after"]
    assert len(rest.json()["items"]) == 2
    last = client.get(f"/admin/v1/accounts?after={rest.json()['next_after']}", headers=OPS)
    assert last.json()["items"] == [] and last.json()["next_after"] is None
    assert SECRET_NAME not in repr(everyone)


def test_an_unknown_status_is_422(client: TestClient) -> None:
    assert client.get("/admin/v1/accounts?status=gone", headers=OPS).status_code == 422


def test_timeline_shows_facts_and_no_personal_values(
    client: TestClient, accounts: Accounts
) -> None:
    account_id = member(accounts)
    accounts.claim_gift(account_id, company_id="acme", start_date=date(2026, 7, 1))
    accounts.request_withdrawal(account_id, reason="hired_via_platform", comment=SECRET_COMMENT)

    response = client.get(f"/admin/v1/accounts/{account_id}/timeline", headers=OPS)

    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "withdrawing"
    assert [e["event"] for e in body["events"]] == [
        "Registered",
        "ScoutReceived",
        "GiftClaimed",
        "WithdrawalRequested",
    ]
    assert [e["version"] for e in body["events"]] == [1, 2, 3, 4]
    assert body["events"][2]["facts"]["amount_jpy"] == 5000
    assert body["events"][3]["facts"] == {
        "reason": "hired_via_platform",
        "gift_forfeited": False,
        "acknowledged_gift_loss": False,
        "comment_given": True,
    }
    assert SECRET_NAME not in response.text and SECRET_COMMENT not in response.text
    assert "@example.jp" not in response.text


def test_timeline_of_an_unknown_account_is_404(client: TestClient) -> None:
    response = client.get(f"/admin/v1/accounts/{uuid.uuid4()}/timeline", headers=OPS)

    assert response.status_code == 404


# Erasures


def test_erasures_pending_errored_and_per_service(client: TestClient, accounts: Accounts) -> None:
    pending = member(accounts, withdraw=True)
    errored = member(accounts, withdraw=True)
    process = ErasureProcess(accounts)
    process.handle(Confirmation(errored, "scout", "confirmed", 2, "c-1"))
    process.handle(Confirmation(errored, "chat", FAILED, 0, "c-2", "chat_store_down"))
    project(accounts)

    open_ = client.get("/admin/v1/erasures", headers=OPS).json()
    only_errored = client.get("/admin/v1/erasures?state=errored", headers=OPS).json()
    only_pending = client.get("/admin/v1/erasures?state=pending", headers=OPS).json()
    one = client.get(f"/admin/v1/erasures/{errored}", headers=OPS).json()

    assert open_["counts"] == {"open": 2, "errored": 1, "overdue": 0, "purged": 0}
    assert {item["account_id"] for item in open_["items"]} == {str(pending), str(errored)}
    assert [item["account_id"] for item in only_errored["items"]] == [str(errored)]
    assert [item["account_id"] for item in only_pending["items"]] == [str(pending)]
    assert {name: s["state"] for name, s in one["services"].items()} == {
        "scout": "confirmed",
        "chat": "failed",
        "mail": "pending",
    }
    assert one["services"]["chat"]["error_code"] == "chat_store_down"
    assert one["errored"] is True and one["overdue"] is False


def test_erasures_past_the_deadline_are_overdue(settings: Settings, accounts: Accounts) -> None:
    overdue = member(accounts, withdraw=True)
    project(accounts)
    strict = settings.model_copy(update={"erasure_deadline_hours": 0.0})

    with TestClient(create_app(strict, accounts)) as client:
        body = client.get("/admin/v1/erasures?state=overdue", headers=OPS).json()

    assert [item["account_id"] for item in body["items"]] == [str(overdue)]
    assert body["items"][0]["overdue"] is True
    assert body["counts"]["overdue"] == 1


def test_retry_records_a_request_for_a_lagging_service(
    client: TestClient, accounts: Accounts
) -> None:
    account_id = member(accounts, withdraw=True)
    process = ErasureProcess(accounts)
    process.handle(Confirmation(account_id, "scout", "confirmed", 1, "c-1"))
    project(accounts)
    path = f"/admin/v1/erasures/{account_id}/services"

    first = client.post(f"{path}/mail/retry", headers=OPS)
    second = client.post(f"{path}/mail/retry", headers=OPS)
    confirmed = client.post(f"{path}/scout/retry", headers=OPS)
    unknown = client.post(f"{path}/billing/retry", headers=OPS)
    state = client.get(f"/admin/v1/erasures/{account_id}", headers=OPS).json()

    assert first.status_code == 202
    assert first.json() == {
        "account_id": str(account_id),
        "service": "mail",
        "attempts": 1,
        "redelivered": False,  # Kafka is not configured in this app
    }
    assert second.json()["attempts"] == 2
    assert confirmed.status_code == 409
    assert unknown.status_code == 422
    assert state["services"]["mail"]["state"] == "retry_requested"
    assert state["services"]["mail"]["retries"] == 2
    assert state["services"]["chat"]["state"] == "pending"


def test_retry_after_purge_is_409(client: TestClient, accounts: Accounts) -> None:
    account_id = member(accounts, withdraw=True)
    accounts.purge(account_id)
    project(accounts)

    response = client.post(f"/admin/v1/erasures/{account_id}/services/mail/retry", headers=OPS)

    assert response.status_code == 409
    assert response.json()["reason"] == "erasure_complete"


class RefusingKafka(NoKafka):
    """Kafka configured, but every record is refused."""

    configured = True


def test_retry_when_kafka_refuses_the_record_is_503(settings: Settings, accounts: Accounts) -> None:
    account_id = member(accounts, withdraw=True)
    project(accounts)
    app = create_app(settings, accounts)
    app.state.kafka = RefusingKafka(settings.topics)

    with TestClient(app) as client:
        response = client.post(f"/admin/v1/erasures/{account_id}/services/mail/retry", headers=OPS)

    assert response.status_code == 503
    assert response.json()["code"] == "kafka_unavailable"


# Statistics and projections


def test_statistics(client: TestClient, accounts: Accounts) -> None:
    gifted = member(accounts)
    accounts.claim_gift(gifted, company_id="acme", start_date=date(2026, 7, 1))
    member(accounts, withdraw=True)
    project(accounts)

    reasons = client.get("/admin/v1/stats/withdrawal-reasons", headers=OPS).json()
    gifts = client.get("/admin/v1/stats/gifts", headers=OPS).json()
    scouts = client.get("/admin/v1/stats/scouts", headers=OPS).json()
    none = client.get("/admin/v1/stats/gifts?since=2000-01&until=2000-02", headers=OPS).json()

    assert [(r["reason"], r["withdrawals"], r["gifts_forfeited"]) for r in reasons] == [
        ("postings_mismatch", 1, 1)
    ]
    assert [(g["company_id"], g["claims"], g["amount_jpy"]) for g in gifts] == [("acme", 1, 5000)]
    assert [(s["company_id"], s["scouts"], s["members"]) for s in scouts] == [("acme", 2, 2)]
    assert none == []
    assert client.get("/admin/v1/stats/gifts?since=June", headers=OPS).status_code == 422


def test_projection_positions_and_lag(client: TestClient, accounts: Accounts) -> None:
    member(accounts)
    project(accounts)
    member(accounts)

    body = client.get("/admin/v1/projections", headers=OPS).json()

    head = accounts.recorder.max_notification_id()
    assert body["head"] == head
    by_name = {p["name"]: p for p in body["projections"]}
    assert set(by_name) == set(READ_MODELS)
    for state in by_name.values():
        assert state["position"] + state["lag"] == head
        assert state["rebuilding_position"] is None


def test_without_kafka_consumers_and_dead_letters_are_empty(client: TestClient) -> None:
    assert client.get("/admin/v1/consumers", headers=OPS).json() == []
    assert client.get("/admin/v1/dead-letters/mail", headers=OPS).json() == []
    assert client.get("/admin/v1/dead-letters/billing", headers=OPS).status_code == 422


# Metrics and readiness


def test_metrics_in_prometheus_format(client: TestClient, accounts: Accounts) -> None:
    client.post(
        "/v1/accounts",
        json={"email": "metrics@example.jp", "display_name": "M", "consent_version": "1"},
        headers=auth("service"),
    )
    client.get("/admin/v1/accounts", headers=OPS)
    member(accounts, withdraw=True)
    project(accounts)
    # Nothing has read the database for the gauges yet: the first scrape does, once.
    assert client.app.state.state_collector.gauges.latest() is None  # type: ignore[attr-defined]

    response = client.get("/metrics")

    text = response.text
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'lifecycle_commands_total{command="register",outcome="ok"} 1.0' in text
    assert (
        'lifecycle_http_requests_total{method="GET",route="/admin/v1/accounts",status="200"} 1.0'
        in text
    )
    assert "lifecycle_http_request_duration_seconds_bucket" in text
    head = accounts.recorder.max_notification_id()
    assert f"lifecycle_events_appended_total {float(head)}" in text
    assert 'lifecycle_projection_lag{projection="account_directory"} 0.0' in text
    assert 'lifecycle_erasures{state="open"} 1.0' in text
    assert "lifecycle_metrics_database_up 1.0" in text
    assert "metrics@example.jp" not in text


def test_metrics_and_health_need_no_token(client: TestClient) -> None:
    for path in ("/metrics", "/healthz", "/readyz"):
        assert client.get(path).status_code == 200


# With the real Kafka


@pytest.mark.kafka
def test_consumer_group_lag_per_service(
    kafka_client: TestClient, kafka_bootstrap: str, names: TopicNames
) -> None:
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient
    from kafka.structs import OffsetAndMetadata

    from lifecycle.kafka.producer import KafkaPublisher

    publisher = KafkaPublisher(kafka_bootstrap, client_id="test-lag")
    for n in range(5):
        publisher.publish(names.lifecycle, f"key-{n}".encode(), [], b"{}")
    publisher.flush()
    publisher.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15_000)
    try:
        admin.alter_group_offsets(
            f"{names.prefix}chat",
            {TopicPartition(names.lifecycle, p): OffsetAndMetadata(0, "", -1) for p in (0, 1)},
        )
    finally:
        admin.close()

    groups = {g["service"]: g for g in kafka_client.get("/admin/v1/consumers", headers=OPS).json()}

    assert set(groups) == set(names.consumer_groups)
    assert groups["chat"]["group"] == f"{names.prefix}chat"
    assert groups["chat"]["lag"] == 5
    assert groups["chat"]["state"] == "ok"
    assert groups["scout"]["state"] == "no_committed_offsets"


@pytest.mark.kafka
def test_retry_redelivers_the_withdrawal_record_under_a_fresh_id(
    kafka_client: TestClient, kafka_bootstrap: str, names: TopicNames, accounts: Accounts
) -> None:
    account_id = member(accounts, withdraw=True)
    project(accounts)

    response = kafka_client.post(
        f"/admin/v1/erasures/{account_id}/services/mail/retry", headers=OPS
    )

    assert response.status_code == 202 and response.json()["redelivered"] is True
    (record,) = read_topic(kafka_bootstrap, names.lifecycle)
    headers = dict(record.headers)
    # Never a duplicate of the original, nor of anything published before (issue 19).
    assert headers["ce_id"].startswith(f"{account_id}:3:retry-".encode())
    assert len(headers["ce_id"]) == len(f"{account_id}:3:retry-") + 32
    assert b"withdrawal" in headers["ce_type"]
    assert record.key == str(account_id).encode()
    assert SECRET_COMMENT.encode() not in record.value


@pytest.mark.kafka
def test_readyz_checks_kafka_when_configured(
    settings: Settings, accounts: Accounts, kafka_bootstrap: str, names: TopicNames
) -> None:
    with_kafka = settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap})
    app = create_app(with_kafka, accounts)
    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, "Kafka checked")
        app.state.kafka = KafkaInspectorClient("127.0.0.1:1", names, timeout_s=1.0)
        wait_until(lambda: client.get("/readyz").status_code == 503, "Kafka seen down")
        unreachable = client.get("/readyz")

    assert unreachable.json()["code"] == "not_ready"
    assert unreachable.json()["detail"] == "Kafka does not answer"


# Readiness never blocks request workers (issue 19)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_fifty_readiness_probes_with_the_broker_down_leave_a_member_read_fast(
    settings: Settings, accounts: Accounts
) -> None:
    """Before: each /readyz opened a Kafka admin client with a 10 s timeout in the request
    workers' pool, and 45 parallel probes held a member read up for 9 s."""
    import asyncio
    import time

    import httpx
    from support import free_port

    down = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    app = create_app(down, accounts)
    account_id = member(accounts)

    async def scenario() -> tuple[list[int], int, float]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                path = f"/v1/accounts/{account_id}"
                await client.get(path, headers=auth("service"))  # warm: first load, key cache

                async def timed_read() -> tuple[int, float]:
                    started = time.perf_counter()
                    response = await client.get(path, headers=auth("service"))
                    return response.status_code, time.perf_counter() - started

                probes = [client.get("/readyz") for _ in range(50)]
                *answers, (status, elapsed) = await asyncio.gather(*probes, timed_read())
                return [a.status_code for a in answers], status, elapsed

    probes, status, elapsed = asyncio.run(scenario())
    assert probes == [503] * 50  # Kafka is not known to answer
    assert status == 200
    assert elapsed < 0.1, f"the member read took {elapsed * 1000:.0f} ms"
