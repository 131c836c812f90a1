"""Version 2 of the erasure confirmation beside version 1: the previous release's services'
confirmations still purge; a `failed` outcome shows as errored for ops, who ask again, and the
service's later `erased` completes the erasure."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from support import Running, auth, running_consumers, wait_until

from consumers.kit import Hooks
from lifecycle.account_terms import AccountStatus
from lifecycle.api import create_app
from lifecycle.application import Accounts
from lifecycle.bootstrap import build_erasure, erasure_consumer
from lifecycle.kafka.inprocess import InProcessPublisher
from lifecycle.kafka.source import InProcessSource
from lifecycle.settings import Settings
from projections.registry import open_read_models
from projections.runner import Projector
from schemas.contract import (
    ErasureConfirmedV2,
    Record,
    TopicNames,
    encode_erasure_confirmed,
)

OPS = auth("ops")
TOPICS = TopicNames()


def v1_record(account_id: UUID, service: str, rows: int) -> Record:
    """A confirmation exactly as the first release's services encode it (literal headers and
    body, not today's encoder)."""
    now = datetime.now(UTC).isoformat()
    body = (
        f'{{"account_id":"{account_id}","service":"{service}","rows_removed":{rows},'
        f'"confirmed_at":"{now}"}}'
    )
    headers = [
        ("ce_id", f"{account_id}:{service}:erasure-confirmed:{uuid.uuid4().hex}".encode()),
        ("ce_source", f"/{service}/erasure".encode()),
        ("ce_type", b"jp.jobchange.account.erasure-confirmed.v1"),
        ("ce_specversion", b"1.0"),
        ("ce_time", now.encode()),
        ("ce_subject", str(account_id).encode()),
        (
            "ce_dataschema",
            b"https://schemas.jobchange.jp/lifecycle/v1/account.erasure-confirmed.v1.json",
        ),
        ("content-type", b"application/json"),
    ]
    return Record(str(account_id).encode(), headers, body.encode())


def v2_record(account_id: UUID, service: str, **outcome: object) -> Record:
    return encode_erasure_confirmed(
        ErasureConfirmedV2.model_validate(
            {
                "account_id": str(account_id),
                "service": service,
                "rows_removed": outcome.pop("rows_removed", 0),
                "confirmed_at": datetime.now(UTC).isoformat(),
                **outcome,
            }
        ),
        ce_id=f"{account_id}:{service}:erasure-confirmed:{uuid.uuid4().hex}",
    )


def withdrawn(accounts: Accounts) -> UUID:
    account_id = accounts.register(
        email=f"v2-{uuid.uuid4().hex[:10]}@example.jp",
        display_name="Contract Two",
        consent_version="2026-04",
    )
    accounts.request_withdrawal(account_id, reason="hard_to_use")
    return account_id


def project(accounts: Accounts) -> None:
    for model in open_read_models(accounts.database):
        Projector(accounts, model).catch_up()


def test_version_1_purges_and_a_version_2_failure_is_errored_then_retried(
    settings: Settings, accounts: Accounts
) -> None:
    old_release = withdrawn(accounts)
    on_hold = withdrawn(accounts)
    log = InProcessPublisher()
    process = build_erasure(accounts, settings)
    consumer = erasure_consumer(
        process,
        InProcessSource(log, list(TOPICS.confirmations.values())),
        log,
        TOPICS,
        poll_timeout_s=0.05,
    )

    def put(service: str, record: Record) -> None:
        topic = TOPICS.erasure_confirmed(service)  # each service's own topic
        log.publish(topic, record.key, record.headers, record.value)
        log.flush()

    def status(account_id: UUID) -> AccountStatus:
        return accounts.load_for_audit(account_id).status

    with running_consumers() as running:
        running.append(Running(consumer))
        for service, rows in (("scout", 2), ("chat", 0), ("mail", 1)):
            put(service, v1_record(old_release, service, rows))
        put("scout", v2_record(on_hold, "scout", rows_removed=3, withdrawal_version=2))
        put("chat", v2_record(on_hold, "chat", outcome="erased", withdrawal_version=2))
        put("mail", v2_record(on_hold, "mail", outcome="failed", failure_code="legal_hold"))
        wait_until(lambda: status(old_release) is AccountStatus.PURGED, "v1 confirmations purge")
        wait_until(lambda: consumer.stats.applied == 6, "every confirmation handled")
        assert status(on_hold) is AccountStatus.WITHDRAWING

        project(accounts)
        with TestClient(create_app(settings, accounts, process)) as client:
            errored = client.get("/admin/v1/erasures?state=errored", headers=OPS).json()
            assert [item["account_id"] for item in errored["items"]] == [str(on_hold)]
            mail = client.get(f"/admin/v1/erasures/{on_hold}", headers=OPS).json()["services"]
            assert mail["mail"]["state"] == "failed"
            assert mail["mail"]["error_code"] == "legal_hold"
            retried = client.post(f"/admin/v1/erasures/{on_hold}/services/mail/retry", headers=OPS)
            assert retried.status_code == 202
            state = client.get(f"/admin/v1/erasures/{on_hold}", headers=OPS).json()
            assert state["services"]["mail"]["state"] == "retry_requested"

            # The hold ends; the mail service erases and says so (a new record, new outcome).
            put("mail", v2_record(on_hold, "mail", outcome="erased", rows_removed=4))
            wait_until(lambda: status(on_hold) is AccountStatus.PURGED, "erased after a retry")
            project(accounts)
            done = client.get(f"/admin/v1/erasures/{on_hold}", headers=OPS).json()
            assert done["services"]["mail"]["state"] == "confirmed"
            assert done["purged_at"] is not None
    assert accounts.vault.find_key(on_hold) is None
    assert accounts.vault.find_key(old_release) is None


def test_the_keys_table_is_vacuumed_after_the_purging_batch_committed_its_offsets(
    settings: Settings, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL `after_erasure` (a VACUUM) no longer runs before the kit's transaction and
    offset commit, where the confirmations of the next poll waited behind it."""
    account_id = withdrawn(accounts)
    steps: list[str] = []
    vacuum = accounts.database.after_erasure

    def recorded(tables: Any = ()) -> None:
        steps.append(f"after_erasure {sorted(tables)}")
        vacuum(tables)

    monkeypatch.setattr(accounts.database, "after_erasure", recorded)
    log = InProcessPublisher()
    consumer = erasure_consumer(
        build_erasure(accounts, settings),
        InProcessSource(log, list(TOPICS.confirmations.values())),
        log,
        TOPICS,
        poll_timeout_s=0.05,
        hooks=Hooks(before_offset_commit=lambda incoming: steps.append("offset")),
    )
    for service in ("scout", "chat", "mail"):
        record = v1_record(account_id, service, 1)
        log.publish(TOPICS.erasure_confirmed(service), record.key, record.headers, record.value)
    log.flush()
    with running_consumers() as running:
        running.append(Running(consumer))
        wait_until(lambda: "after_erasure ['account_keys']" in steps, "the keys vacuumed")
    assert accounts.load_for_audit(account_id).status is AccountStatus.PURGED
    vacuumed, committed = steps.index("after_erasure ['account_keys']"), steps.index("offset")
    if accounts.database.dialect.concurrent_writers:
        assert vacuumed > committed
        assert consumer.stats.outcomes.get("purged") == 1
    else:  # SQLite's checkpoint holds the one writer's lock: right after the purge, as before
        assert vacuumed < committed


@pytest.mark.parametrize(
    ("payload", "valid"),
    [
        ({"outcome": "failed", "failure_code": "legal_hold"}, True),
        ({"outcome": "failed"}, False),  # a failure names its code
        ({"outcome": "erased", "failure_code": "legal_hold"}, False),
        ({"outcome": "failed", "failure_code": "disk full at 3am"}, False),  # fixed list only
        ({}, True),  # a version-1 body: erased
    ],
)
def test_version_2_outcome_rules(payload: dict[str, object], valid: bool) -> None:
    body = {
        "account_id": str(uuid.uuid4()),
        "service": "chat",
        "rows_removed": 0,
        "confirmed_at": "2026-12-01T10:00:00+00:00",
        **payload,
    }
    if valid:
        parsed = ErasureConfirmedV2.model_validate_json(json.dumps(body))
        assert parsed.outcome == payload.get("outcome", "erased")
    else:
        with pytest.raises(ValueError):
            ErasureConfirmedV2.model_validate_json(json.dumps(body))
