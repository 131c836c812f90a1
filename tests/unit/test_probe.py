"""A worker process's /healthz and /readyz (lifecycle.probe), over real HTTP on loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from support import free_port

from lifecycle.probe import Probe


@dataclass
class FakeWorker:
    waiting_for: str | None = None


@pytest.fixture
def probe() -> Iterator[Probe]:
    served = Probe("127.0.0.1", free_port())
    yield served
    served.close()


def get(probe: Probe, path: str) -> tuple[int, str, dict[str, Any]]:
    url = f"http://127.0.0.1:{probe.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], json.load(error)


def test_alive_at_once_ready_only_once_the_worker_runs(probe: Probe) -> None:
    assert get(probe, "/healthz")[:1] == (200,)
    status, kind, body = get(probe, "/readyz")
    assert (status, kind) == (503, "application/problem+json")
    assert body["code"] == "not_ready"
    assert body["detail"] == "the worker is starting"

    probe.watch(FakeWorker())
    assert get(probe, "/readyz") == (200, "application/json", {"status": "ready"})


def test_not_ready_while_any_worker_waits_naming_each_dependency_once(probe: Probe) -> None:
    relay, consumer, projector = FakeWorker(), FakeWorker(), FakeWorker()
    probe.watch(relay, consumer, projector)
    consumer.waiting_for = projector.waiting_for = "database"
    relay.waiting_for = "broker"

    status, _, body = get(probe, "/readyz")
    assert (status, body["status"]) == (503, 503)
    assert body["detail"] == "waiting for the broker, database"

    relay.waiting_for = consumer.waiting_for = projector.waiting_for = None
    assert get(probe, "/readyz")[0] == 200


def test_an_unknown_path_is_a_404_problem(probe: Probe) -> None:
    status, kind, body = get(probe, "/nowhere")
    assert (status, kind, body["code"]) == (404, "application/problem+json", "not_found")


def test_closing_frees_the_port() -> None:
    port = free_port()
    Probe("127.0.0.1", port).close()
    Probe("127.0.0.1", port).close()  # would raise OSError (address in use) if still bound


def test_metrics_name_each_watched_worker_and_say_whether_it_is_ready() -> None:
    from types import SimpleNamespace

    from prometheus_client.parser import text_string_to_metric_families

    consumer = SimpleNamespace(name="mail", waiting_for="smtp", total_lag=lambda: 7)
    relay = SimpleNamespace(name="kafka", waiting_for=None, publisher=object(), position=3)
    projector = SimpleNamespace(waiting_for=None, model=SimpleNamespace(name="erasure_status"))
    lane = SimpleNamespace(name="mail-suppression", waiting_for="database")
    probe = Probe("127.0.0.1", 0)
    try:
        probe.watch(consumer, relay, projector, lane)
        url = f"http://127.0.0.1:{probe.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    finally:
        probe.close()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("lifecycle_worker_ready", (("worker", "mail"),))] == 0
    assert samples[("lifecycle_worker_ready", (("worker", "relay"),))] == 1
    assert samples[("lifecycle_worker_ready", (("worker", "project:erasure_status"),))] == 1
    assert samples[("lifecycle_worker_ready", (("worker", "mail-suppression"),))] == 0
    assert samples[("lifecycle_consumer_lag", (("group", "mail"),))] == 7
    assert ("lifecycle_withdrawal_to_purged_seconds_count", ()) in samples


def test_a_lane_waiting_out_a_dependency_makes_its_process_not_ready(probe: Probe) -> None:
    from types import SimpleNamespace
    from typing import cast

    from lifecycle.bootstrap import ConsumerRun

    consumer, lane = FakeWorker(), SimpleNamespace(name="mail-suppression", waiting_for=None)
    run = ConsumerRun(cast(Any, consumer), lanes=[cast(Any, lane)])
    probe.watch(*run.workers())  # as `lifecycle consume mail` watches its run
    assert get(probe, "/readyz")[0] == 200
    lane.waiting_for = "database"  # the consumer itself still works
    status, _, body = get(probe, "/readyz")
    assert (status, body["detail"]) == (503, "waiting for the database")
