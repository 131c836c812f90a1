"""/readyz says not ready, and /metrics says why, while an in-process worker waits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from lifecycle.api import create_app
from lifecycle.application import Accounts
from lifecycle.bootstrap import migrate_lifecycle
from lifecycle.crypto import new_master_key
from lifecycle.settings import Settings


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'lifecycle.sqlite3'}",
        kafka_bootstrap=None,
        master_key=new_master_key(),
    )
    migrate_lifecycle(settings)
    accounts = Accounts(env=settings.application_env())
    try:
        with TestClient(create_app(settings, accounts)) as client:
            yield client
    finally:
        accounts.close()


def workers(relay: str | None = None, **consumers: str | None) -> SimpleNamespace:
    """What `lifecycle serve` puts in `app.state.workers`, as far as readiness reads it."""
    return SimpleNamespace(
        relay=SimpleNamespace(waiting_for=relay),
        consumers={name: SimpleNamespace(waiting_for=dep) for name, dep in consumers.items()},
    )


def test_not_ready_while_a_worker_waits_and_the_metric_says_which(client: TestClient) -> None:
    app = client.app
    app.state.workers = workers(relay="database", scout=None, mail="database")  # type: ignore[attr-defined]
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"] == "waiting for the database"
    metrics = client.get("/metrics").text
    assert 'lifecycle_waiting_for_dependency{dependency="database",worker="relay"} 1.0' in metrics
    assert 'lifecycle_waiting_for_dependency{dependency="database",worker="mail"} 1.0' in metrics
    assert 'worker="scout"' not in metrics

    app.state.workers = workers(relay=None, scout=None, mail=None)  # type: ignore[attr-defined]
    assert client.get("/readyz").status_code == 200
    assert "lifecycle_waiting_for_dependency{" not in client.get("/metrics").text


def test_ready_without_workers(client: TestClient) -> None:
    assert client.get("/readyz").json() == {"status": "ready"}
