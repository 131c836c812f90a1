"""/admin/v1/dead-letters on the real broker: a dead letter is a reference to its source
record; the list never shows a value, re-drive reads the original back from its source offset,
and answers 410 once that record or its account is erased."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from support import auth, profile, read_topic, scout_received

from consumers.faults import dead_letter_record
from consumers.handler import PoisonRecord
from lifecycle.application import Accounts
from lifecycle.kafka.producer import KafkaPublisher
from lifecycle.kafka.source import Incoming
from schemas.contract import Record, TopicNames

pytestmark = pytest.mark.kafka

OPS = auth("ops")
SECRET_EMAIL_DOMAIN = "zephyrine-dlq.example"


def member(accounts: Accounts) -> UUID:
    return accounts.register(
        email=f"m-{uuid.uuid4().hex[:8]}@{SECRET_EMAIL_DOMAIN}",
        display_name="Zephyrine Okonkwo",
        consent_version="2026-04",
    )


def publish(bootstrap: str, topic: str, record: Record) -> Any:
    """Publish one record; the record as the broker holds it (with partition and offset)."""
    before = {(r.partition, r.offset) for r in read_topic(bootstrap, topic)}
    publisher = KafkaPublisher(bootstrap, client_id="test-dlq")
    try:
        publisher.publish(topic, record.key, record.headers, record.value)
        publisher.flush()
    finally:
        publisher.close()
    [stored] = [r for r in read_topic(bootstrap, topic) if (r.partition, r.offset) not in before]
    return stored


def dead_letter_of(
    bootstrap: str, names: TopicNames, group: str, source: Any, *, offset: int | None = None
) -> None:
    """What the kit writes when `group` cannot handle `source` (offset: pretend another)."""
    incoming = Incoming(
        source.topic,
        source.partition,
        source.offset if offset is None else offset,
        source.key,
        list(source.headers),
        source.value,
    )
    letter = dead_letter_record(incoming, PoisonRecord("scout_unknown_company"), "bad", 1, group)
    publish(bootstrap, names.dlq(group), letter)


def test_dead_letters_listed_without_values_redriven_from_the_source_and_discarded(
    kafka_client: TestClient, kafka_bootstrap: str, names: TopicNames, accounts: Accounts
) -> None:
    account_id = member(accounts)
    sources = [
        publish(kafka_bootstrap, *scout_received(names, account_id, version, f"s-{version}"))
        for version in (2, 3)
    ]
    for source in sources:
        dead_letter_of(kafka_bootstrap, names, "scout", source)

    listed = kafka_client.get("/admin/v1/dead-letters/scout", headers=OPS).json()
    assert [d["ce_id"] for d in listed] == [f"{account_id}:2", f"{account_id}:3"]
    first, second = listed
    assert first["error_code"] == "bad" and first["error_type"] == "PoisonRecord"
    assert first["source_topic"] == names.lifecycle
    assert (first["source_partition"], first["source_offset"]) == (
        sources[0].partition,
        sources[0].offset,
    )
    assert first["ce_subject"] == first["key"] == str(account_id)
    assert first["value_bytes"] == 0  # a reference, never a copy
    base = "/admin/v1/dead-letters/scout"

    redriven = kafka_client.post(
        f"{base}/{first['partition']}/{first['offset']}/redrive", headers=OPS
    )
    again = kafka_client.post(f"{base}/{first['partition']}/{first['offset']}/redrive", headers=OPS)
    discarded = kafka_client.post(
        f"{base}/{second['partition']}/{second['offset']}/discard", headers=OPS
    )
    missing = kafka_client.post(f"{base}/{first['partition']}/999/discard", headers=OPS)

    assert redriven.status_code == 200, redriven.text
    assert redriven.json()["republished_to"] == names.lifecycle
    assert again.status_code == 409
    assert discarded.status_code == 200 and discarded.json()["action"] == "discarded"
    assert missing.status_code == 404
    assert kafka_client.get(base, headers=OPS).json() == []
    on_topic = read_topic(kafka_bootstrap, names.lifecycle)
    assert len(on_topic) == 3
    [republished] = [r for r in on_topic if (r.partition, r.offset) not in _places(sources)]
    original = sources[0]
    assert (republished.key, republished.value) == (original.key, original.value)
    assert republished.headers == original.headers  # the original's, no dlq_* header


def _places(records: list[Any]) -> set[tuple[int, int]]:
    return {(r.partition, r.offset) for r in records}


def test_redrive_of_an_erased_source_record_answers_410_and_discard_still_works(
    kafka_client: TestClient, kafka_bootstrap: str, names: TopicNames, accounts: Accounts
) -> None:
    account_id = member(accounts)
    source = publish(kafka_bootstrap, *scout_received(names, account_id, 2))
    # Refers to an offset the partition does not hold (as after retention or compaction).
    dead_letter_of(kafka_bootstrap, names, "scout", source, offset=source.offset + 50)
    [letter] = kafka_client.get("/admin/v1/dead-letters/scout", headers=OPS).json()
    base = f"/admin/v1/dead-letters/scout/{letter['partition']}/{letter['offset']}"

    gone = kafka_client.post(f"{base}/redrive", headers=OPS)

    assert gone.status_code == 410, gone.text
    assert gone.json()["code"] == "dead_letter_source_gone"
    assert gone.json()["reason"] == "source_record_erased"
    assert len(kafka_client.get("/admin/v1/dead-letters/scout", headers=OPS).json()) == 1
    assert kafka_client.post(f"{base}/discard", headers=OPS).status_code == 200
    assert len(read_topic(kafka_bootstrap, names.lifecycle)) == 1  # nothing published


def test_redrive_for_an_erased_account_answers_410(
    kafka_client: TestClient, kafka_bootstrap: str, names: TopicNames, accounts: Accounts
) -> None:
    purged, withdrawing = member(accounts), member(accounts)
    for account_id in (purged, withdrawing):
        accounts.request_withdrawal(account_id, reason="other")
    assert accounts.purge(purged)
    email = f"x@{SECRET_EMAIL_DOMAIN}"
    lifecycle_source = publish(kafka_bootstrap, *scout_received(names, purged, 2))
    profile_source = publish(kafka_bootstrap, *profile(names, withdrawing, 1, email, "Z"))
    dead_letter_of(kafka_bootstrap, names, "scout", lifecycle_source)
    dead_letter_of(kafka_bootstrap, names, "mail", profile_source)

    answers = {}
    for group in ("scout", "mail"):
        [letter] = kafka_client.get(f"/admin/v1/dead-letters/{group}", headers=OPS).json()
        answers[group] = kafka_client.post(
            f"/admin/v1/dead-letters/{group}/{letter['partition']}/{letter['offset']}/redrive",
            headers=OPS,
        )

    assert {group: answer.status_code for group, answer in answers.items()} == {
        "scout": 410,
        "mail": 410,
    }
    assert answers["scout"].json()["reason"] == "account_purged"
    assert answers["mail"].json()["reason"] == "account_withdrawing"
    assert SECRET_EMAIL_DOMAIN not in answers["mail"].text
    assert len(read_topic(kafka_bootstrap, names.profile)) == 1  # not published again


def test_a_profile_record_is_redriven_only_while_it_is_the_accounts_latest(
    kafka_client: TestClient, kafka_bootstrap: str, names: TopicNames, accounts: Accounts
) -> None:
    account_id = member(accounts)
    older = publish(kafka_bootstrap, *profile(names, account_id, 1, "old@example.jp", "Z"))
    newer = publish(kafka_bootstrap, *profile(names, account_id, 2, "new@example.jp", "Z"))
    for source in (older, newer):
        dead_letter_of(kafka_bootstrap, names, "mail", source)
    listed = kafka_client.get("/admin/v1/dead-letters/mail", headers=OPS).json()
    by_offset = {letter["source_offset"]: letter for letter in listed}

    def redrive(source: Any) -> Any:
        letter = by_offset[source.offset]
        return kafka_client.post(
            f"/admin/v1/dead-letters/mail/{letter['partition']}/{letter['offset']}/redrive",
            headers=OPS,
        )

    superseded, latest = redrive(older), redrive(newer)

    assert superseded.status_code == 410
    assert superseded.json()["reason"] == "source_record_superseded"
    assert latest.status_code == 200, latest.text
    on_topic = read_topic(kafka_bootstrap, names.profile)
    assert [r.value for r in on_topic if r.offset > newer.offset] == [newer.value]


def test_redrive_refuses_a_forged_source_header_and_an_unverifiable_letter(
    kafka_client: TestClient, kafka_bootstrap: str, names: TopicNames, accounts: Accounts
) -> None:
    """Issue 19: re-drive took its source topic from the dead letter's own headers, and skipped
    the `ce_id` check when the letter named none. Now the source must be one of the group's
    inputs, the letter must name the record's `ce_id`, and the account is the record's."""
    account_id = member(accounts)
    # A contact record, an input of mail only: the scout group's letter may not name it.
    contact = publish(kafka_bootstrap, *profile(names, account_id, 1, "z@example.jp", "Z"))
    dead_letter_of(kafka_bootstrap, names, "scout", contact)
    # A letter without a ce_id: nothing ties it to the record at its source offset.
    scout = publish(kafka_bootstrap, *scout_received(names, account_id, 2))
    stripped = Incoming(
        scout.topic,
        scout.partition,
        scout.offset,
        scout.key,
        [(k, v) for k, v in scout.headers if k != "ce_id"],
        scout.value,
    )
    letter = dead_letter_record(stripped, PoisonRecord("x"), "bad", 1, "chat")
    publish(kafka_bootstrap, names.dlq("chat"), letter)

    answers = []
    for group in ("scout", "chat"):
        [listed] = kafka_client.get(f"/admin/v1/dead-letters/{group}", headers=OPS).json()
        answers.append(
            kafka_client.post(
                f"/admin/v1/dead-letters/{group}/{listed['partition']}/{listed['offset']}/redrive",
                headers=OPS,
            )
        )

    assert [a.status_code for a in answers] == [409, 409]
    assert [a.json()["reason"] for a in answers] == ["dead_letter_source_refused"] * 2
    assert len(read_topic(kafka_bootstrap, names.profile)) == 1  # nothing published again
    assert len(read_topic(kafka_bootstrap, names.lifecycle)) == 1
    metrics = kafka_client.get("/metrics").text  # refused, and counted
    assert 'lifecycle_commands_total{command="redrive",outcome="rejected"} 2.0' in metrics


def test_metrics_count_the_dead_letters_neither_redriven_nor_discarded(
    kafka_client: TestClient,
    kafka_bootstrap: str,
    names: TopicNames,
    accounts: Accounts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prometheus_client.parser import text_string_to_metric_families
    from support import wait_until

    from lifecycle.api import pipeline_collector

    monkeypatch.setattr(pipeline_collector, "DEAD_LETTER_REFRESH_S", 0.0)  # count at each scrape

    def waiting() -> dict[str, float]:
        text = kafka_client.get("/metrics").text
        return {
            sample.labels["group"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "lifecycle_dead_letters_waiting"
        }

    account_id = member(accounts)
    source = publish(kafka_bootstrap, *scout_received(names, account_id, 2, "s-2"))
    dead_letter_of(kafka_bootstrap, names, "scout", source)
    dead_letter_of(kafka_bootstrap, names, "scout", source, offset=source.offset + 1)
    wait_until(lambda: waiting().get("scout") == 2, "two dead letters counted")
    assert waiting()["mail"] == 0

    first = kafka_client.get("/admin/v1/dead-letters/scout", headers=OPS).json()[0]
    discarded = kafka_client.post(
        f"/admin/v1/dead-letters/scout/{first['partition']}/{first['offset']}/discard", headers=OPS
    )
    assert discarded.status_code == 200, discarded.text
    wait_until(lambda: waiting().get("scout") == 1, "the discarded one no longer counted")
