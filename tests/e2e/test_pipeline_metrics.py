"""After one withdrawal reaches Purged, `/metrics` holds every metric the alert rules and the
dashboard read (ops/), and a worker's probe port serves its process's share.

Kafka off (the workers run in threads of the API's process, as `lifecycle serve` runs them),
on both backends."""

from __future__ import annotations

import re
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support import auth, ops_expressions, promql_metric_names, recorded_names, wait_until

from lifecycle.account_terms import AccountStatus
from lifecycle.api import create_app
from lifecycle.application import Accounts
from lifecycle.bootstrap import build_erasure
from lifecycle.probe import Probe
from lifecycle.settings import Settings
from lifecycle.workers import Workers, start_workers


@pytest.fixture
def running(settings: Settings, accounts: Accounts) -> Iterator[tuple[TestClient, Workers]]:
    erasure = build_erasure(accounts, settings)
    app = create_app(settings, accounts, erasure)
    workers = start_workers(settings, accounts, erasure=erasure)
    app.state.workers = workers
    try:
        with TestClient(app) as client:
            yield client, workers
    finally:
        workers.stop()


def selected_labels(expressions: list[str]) -> set[tuple[str, str, str]]:
    """(metric, label, value) of each exact matcher (`name{label="value"}`) in the expressions."""
    found = set()
    for expr in expressions:
        for name, matchers in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", expr):
            for label, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"]*)"', matchers):
                found.add((name, label, value))
    return found


def sample_names(exposition: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name; a family declared with no sample (a gauge with nothing to report, such
    as `lifecycle_waiting_for_dependency` while nothing waits) is there with none."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(exposition):
        found.setdefault(family.name, [])
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_a_scrape_after_a_withdrawal_holds_every_metric_the_rules_and_dashboard_read(
    running: tuple[TestClient, Workers], accounts: Accounts
) -> None:
    client, _ = running
    body = {
        "email": f"m.{uuid.uuid4().hex[:8]}@example.jp",
        "display_name": "M",
        "consent_version": "v1",
    }
    created = client.post("/v1/accounts", json=body, headers=auth("service"))
    assert created.status_code == 201, created.text
    account_id = created.json()["account_id"]
    withdrawn = client.post(
        f"/v1/accounts/{account_id}/withdrawal", json={"reason": "other"}, headers=auth("service")
    )
    assert withdrawn.status_code in (200, 202), withdrawn.text
    wait_until(
        lambda: accounts.load_for_audit(uuid.UUID(account_id)).status is AccountStatus.PURGED,
        "the account is Purged",
    )

    scraped = client.get("/metrics")
    assert scraped.status_code == 200
    samples = sample_names(scraped.text)
    wanted = set().union(*(promql_metric_names(e) for e in ops_expressions()))
    wanted -= recorded_names() | {"time"}
    assert sorted(wanted - samples.keys()) == []
    # And every exact label the rules and panels select exists: the erasure states, and the
    # histogram bucket at the erasure deadline that the burn-rate alert divides by.
    for name, label, value in selected_labels(ops_expressions()):
        if name in recorded_names():
            continue
        assert any(labels.get(label) == value for labels, _ in samples[name]), (name, label, value)

    # The values say what happened: one purge and one suppression observed, every thread ready.
    assert samples["lifecycle_withdrawal_to_purged_seconds_count"][0][1] >= 1
    assert samples["lifecycle_withdrawal_to_suppression_seconds_count"][0][1] >= 1
    ready = {labels["worker"]: value for labels, value in samples["lifecycle_worker_ready"]}
    assert set(ready) == {"relay", "scout", "chat", "mail", "lifecycle-erasure", "lifecycle-export"}
    assert {labels["group"] for labels, _ in samples["lifecycle_consumer_lag"]} == {
        "scout",
        "chat",
        "mail",
        "lifecycle-erasure",
        "lifecycle-export",
    }
    assert all(value == 0 for _, value in samples["lifecycle_dead_letters_waiting"])
    assert samples["lifecycle_relay_last_publish_timestamp_seconds"][0][1] > 1.7e9


def test_a_worker_probe_serves_its_process_metrics(running: tuple[TestClient, Workers]) -> None:
    _, workers = running
    probe = Probe("127.0.0.1", 0)
    try:
        probe.watch(*workers.consumers.values())
        with urllib.request.urlopen(f"http://127.0.0.1:{probe.port}/metrics", timeout=10) as got:
            assert got.status == 200
            samples = sample_names(got.read().decode())
    finally:
        probe.close()
    assert "lifecycle_withdrawal_to_purged_seconds_bucket" in samples
    assert "lifecycle_group_commit_batch_size_count" in samples
    groups = {labels["worker"] for labels, _ in samples["lifecycle_worker_ready"]}
    assert groups == set(workers.consumers)
