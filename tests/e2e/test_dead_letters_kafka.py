"""Dead letters hold no copy, so `Purged` leaves none: on the real broker, with every worker
running, a poison profile record carrying a member's e-mail is dead-lettered by the mail
service as a reference (headers, no value); after the member's `Purged` the e-mail is in no
topic, table or log in any encoding, while another, live member's dead letter is re-driven
from its source record through the admin API."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from support import TOKENS, auth, dump_database, read_topic, wait_until, worker_threads
from test_erasure_kafka import (  # the e2e fixtures and helpers of this tier
    accounts,
    compacting_topics,
    distinctive_member,
    profile_values_left,
    relayed_everything,
    roll_profile_segment,
    searched_forms,
    settings,
    stores,
    topic_bytes,
)

from lifecycle.account_terms import AccountStatus
from lifecycle.api import create_app
from lifecycle.application import Accounts
from lifecycle.kafka.producer import KafkaPublisher
from lifecycle.settings import Settings, token_digest
from lifecycle.storage import Database
from schemas.contract import (
    ProfileV1,
    Record,
    ScoutReceivedV1,
    TopicNames,
    encode_record,
    lifecycle_event_id,
    profile_event_id,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
FIXTURES = (accounts, compacting_topics, settings, stores)  # used by name below


def poison_profile(account_id: UUID, email: str) -> Record:
    """Right headers (a ProfileV1 CloudEvent for the account), wrong shape: the payload's
    notifications are a string, so the mail service cannot read it."""
    good = ProfileV1(
        account_id=account_id, email=email, display_name="Poison", notifications={"notices": True}
    )
    record = encode_record(
        good,
        ce_id=profile_event_id(account_id, 99),
        subject=str(account_id),
        time=datetime.now(UTC),
    )
    payload = json.loads(record.value or b"{}")
    payload["notifications"] = "all of them"
    return Record(record.key, record.headers, json.dumps(payload).encode())


def poison_scout(account_id: UUID) -> Record:
    """A lifecycle record of a live member, right headers, wrong shape (no personal value)."""
    good = ScoutReceivedV1(
        account_id=account_id,
        scout_id="s-poison",
        company_id="c-poison",
        job_id="j",
        received_at=datetime.now(UTC),
    )
    record = encode_record(
        good,
        ce_id=lifecycle_event_id(account_id, 99),
        subject=str(account_id),
        time=datetime.now(UTC),
    )
    payload = json.loads(record.value or b"{}")
    del payload["job_id"]
    return Record(record.key, record.headers, json.dumps(payload).encode())


def publish(bootstrap: str, topic: str, record: Record) -> None:
    publisher = KafkaPublisher(bootstrap, client_id="test-poison")
    try:
        publisher.publish(topic, record.key, record.headers, record.value)
        publisher.flush()
    finally:
        publisher.close()


def dead_letters_of(bootstrap: str, topic: str, account_id: UUID) -> list[Any]:
    key = str(account_id).encode()
    return [record for record in read_topic(bootstrap, topic) if record.key == key]


def test_a_purged_members_dead_letter_leaves_no_copy_and_a_live_one_is_redriven(
    accounts: Accounts,
    settings: Settings,
    compacting_topics: TopicNames,
    stores: dict[str, Database],
    postgres_url: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    topics = compacting_topics
    bootstrap = settings.kafka_bootstrap
    assert bootstrap is not None
    tag = uuid.uuid4().hex[:8]
    member = distinctive_member(tag)
    email = member["email"]
    member_id = accounts.register(**member)
    bystander_id = accounts.register(**distinctive_member(f"{tag}b"))

    with worker_threads(settings, topics, "relay", "erasure"):
        publish(bootstrap, topics.profile, poison_profile(member_id, email))
        publish(bootstrap, topics.lifecycle, poison_scout(bystander_id))
        wait_until(
            lambda: len(dead_letters_of(bootstrap, topics.dlq("mail"), member_id)) == 1,
            "the mail service dead-lettered the poison profile record",
        )
        [letter] = dead_letters_of(bootstrap, topics.dlq("mail"), member_id)
        headers = dict(letter.headers)
        assert letter.value is None  # a reference, not a copy
        assert headers["dlq_source_topic"] == topics.profile.encode()
        assert headers["dlq_error_code"] == b"contract_violation"
        assert headers["ce_id"] == profile_event_id(member_id, 99).encode()
        assert headers["ce_type"] == ProfileV1.ce_type().encode()
        assert headers["ce_subject"] == str(member_id).encode()
        source = {(r.partition, r.offset): r for r in read_topic(bootstrap, topics.profile)}
        original = source[int(headers["dlq_source_partition"]), int(headers["dlq_source_offset"])]
        assert email.encode() in original.value  # the only copy is the source record
        for form in searched_forms(email):
            assert form not in b"".join(value for _, value in letter.headers)

        accounts.request_withdrawal(member_id, reason="other")
        wait_until(
            lambda: accounts.load_for_audit(member_id).status is AccountStatus.PURGED,
            "the account is Purged",
        )
        wait_until(lambda: relayed_everything(accounts, settings), "the relay caught up")
        wait_until(
            lambda: len(dead_letters_of(bootstrap, topics.dlq("scout"), bystander_id)) == 1,
            "the scout service dead-lettered the live member's poison record",
        )
        redriven = redrive_through_the_api(settings, accounts, topics, bystander_id, member_id)
        wait_until(
            lambda: len(dead_letters_of(bootstrap, topics.dlq("scout"), bystander_id)) == 2,
            "the re-driven record reached the scout service again",
        )
    assert redriven["bystander"].status_code == 200, redriven["bystander"].text
    assert redriven["bystander"].json()["republished_to"] == topics.lifecycle
    assert redriven["member"].status_code == 410
    assert redriven["member"].json()["code"] == "dead_letter_source_gone"

    # Compaction removes the poison value behind the purge's tombstone, as for any profile.
    publisher = KafkaPublisher(bootstrap)
    try:
        wait_until(
            lambda: (
                roll_profile_segment(publisher, topics, member_id)
                and profile_values_left(bootstrap, topics, member_id) == 0
            ),
            "compaction removed the poison profile record behind the tombstone",
        )
    finally:
        publisher.close()

    dump = dump_database(postgres_url, str(settings.database_schema))
    logs = capfd.readouterr()
    everywhere = {
        "database": dump,
        "topics, dead letters included": topic_bytes(bootstrap, topics),
        "logs": (logs.out + logs.err).encode(),
    }
    for place, content in everywhere.items():
        for form in searched_forms(email):
            assert form not in content, f"the e-mail is still in the {place}"


def redrive_through_the_api(
    settings: Settings,
    accounts: Accounts,
    topics: TopicNames,
    bystander_id: UUID,
    member_id: UUID,
) -> dict[str, Any]:
    """Re-drive the live member's scout dead letter, and try the purged member's mail one."""
    with_api = settings.model_copy(
        update={
            "topic_prefix": topics.prefix,
            "api_tokens": {token_digest(TOKENS["ops"]): "ops"},
        }
    )
    answers = {}
    with TestClient(create_app(with_api, accounts)) as client:
        for who, group, account_id in (
            ("bystander", "scout", bystander_id),
            ("member", "mail", member_id),
        ):
            listed = client.get(f"/admin/v1/dead-letters/{group}", headers=auth("ops")).json()
            [letter] = [d for d in listed if d["key"] == str(account_id)]
            assert letter["value_bytes"] == 0
            answers[who] = client.post(
                f"/admin/v1/dead-letters/{group}/{letter['partition']}/{letter['offset']}/redrive",
                headers=auth("ops"),
            )
    return answers
