"""Where an erasure's time goes, and the mail service's suppression latency.

Per withdrawn account, on the one clock of this machine:
- relay: `WithdrawalRequested` stored -> its record's Kafka timestamp (the relay's send);
- <service>: that record -> the service's confirmation record's Kafka timestamp (polled,
  handled, committed, sent from the outbox);
- erasure: the last confirmation's Kafka timestamp -> `Purged` stored.

Suppression latency: `WithdrawalRequested` stored -> the mail service's suppression durable,
read from the `mail.suppressed` line the service logs right after that transaction commits.
Kafka timestamps are the producer's CreateTime (taken at send, before the broker's ack).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from bench.core import percentile
from schemas.contract import (
    ContractError,
    ErasureConfirmedV1,
    ErasureConfirmedV2,
    TopicNames,
    WithdrawalRequestedV1,
    decode_record,
)

# (withdrawn_at, purged_at) per account, as the event store has them.
Stamps = dict[UUID, tuple[datetime, datetime]]


def _topic_records(bootstrap: str, topic: str) -> list[Any]:
    """Every record on `topic`, read from the start without a group."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="bench-stages")
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[Any] = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def _kafka_time(record: Any) -> datetime:
    return datetime.fromtimestamp(record.timestamp / 1000, UTC)


def _payloads(bootstrap: str, topic: str) -> Iterator[tuple[Any, Any]]:
    """Each record of the topic with its decoded payload; records off the contract skipped."""
    for record in _topic_records(bootstrap, topic):
        try:
            envelope = decode_record(record.headers or [], record.value)
        except ContractError:
            continue
        yield record, envelope.data


def stages_ms(
    bootstrap: str, topics: TopicNames, stamps: Stamps, services: Iterable[str]
) -> dict[str, list[float]]:
    """Per stage (see the module docstring), the milliseconds of each erasure that has it."""
    sent: dict[UUID, datetime] = {}
    for record, data in _payloads(bootstrap, topics.lifecycle):
        if isinstance(data, WithdrawalRequestedV1) and data.account_id in stamps:
            sent.setdefault(data.account_id, _kafka_time(record))
    confirmed: dict[UUID, dict[str, datetime]] = {}
    replies = ((r, d) for t in topics.confirmations.values() for r, d in _payloads(bootstrap, t))
    for record, data in replies:
        if isinstance(data, ErasureConfirmedV1 | ErasureConfirmedV2) and data.account_id in stamps:
            confirmed.setdefault(data.account_id, {}).setdefault(data.service, _kafka_time(record))
    services = tuple(services)
    stages: dict[str, list[float]] = {name: [] for name in ("relay", *services, "erasure")}
    for account_id, (withdrawn_at, purged_at) in stamps.items():
        published = sent.get(account_id)
        if published is None:
            continue
        stages["relay"].append(_ms(published - withdrawn_at))
        confirmations = confirmed.get(account_id, {})
        for service in services:
            if service in confirmations:
                stages[service].append(_ms(confirmations[service] - published))
        if set(confirmations) >= set(services):
            stages["erasure"].append(_ms(purged_at - max(confirmations.values())))
    return stages


def suppressed_at(mail_log: bytes) -> dict[UUID, datetime]:
    """When the mail service logged each suppression durable (its JSON log lines)."""
    found: dict[UUID, datetime] = {}
    for line in mail_log.splitlines():
        if b"mail.suppressed" not in line:
            continue
        try:
            entry = json.loads(line)
            account_id = UUID(entry["account_id"])
            moment = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError):
            continue
        if entry.get("event") == "mail.suppressed":
            found.setdefault(account_id, moment)
    return found


def suppression_ms(mail_log: bytes, withdrawn: dict[UUID, datetime]) -> tuple[list[float], int]:
    """Per withdrawal, stored -> suppression durable; and how many have no suppression logged."""
    logged = suppressed_at(mail_log)
    values = [_ms(logged[a] - at) for a, at in withdrawn.items() if a in logged]
    return values, len(withdrawn) - len(values)


def describe(stages: dict[str, list[float]]) -> str:
    """`relay p50/p99 12/40 ms, scout ...`: one line for the log."""
    parts = [
        f"{name} {percentile(values, 0.5):.0f}/{percentile(values, 0.99):.0f}"
        for name, values in stages.items()
    ]
    return "stages p50/p99 ms: " + ", ".join(parts)


def _ms(delta: Any) -> float:
    return float(delta.total_seconds() * 1000)
