"""The Kafka ACL plan: who may write and read which topic of the contract, as data.

With the broker's standard authorizer denying whatever no ACL allows, this plan is what makes
an erasure movable only by the right parties:

- only the lifecycle service writes the lifecycle and profile topics (the relay, and ops'
  retry and re-drive through the admin API), so no one else can publish a withdrawal that
  downstream services act on, or a `Purged`;
- each erasing service writes its own confirmation topic and nothing else the erasure process
  reads, so a confirmation's topic names its author;
- only the lifecycle service writes data-export requests, and each service writes its own
  export-part topic (schemas.data_export), so a part's topic names its author too;
- each dead-letter topic is written by its own group's principal only;
- every consumer reads its inputs under its group's ACL.

`lifecycle acls` prints the plan, `lifecycle acls --apply` creates it (run it as a principal
allowed to alter ACLs: the cluster's admin). Principals are `User:<name>`, named by
`Settings.kafka_principals`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lifecycle.kafka.security import KafkaSecurity, client_config
from schemas.contract import (
    ERASING_SERVICES,
    ERASURE_GROUP,
    EXPORTING_SERVICES,
    SUPPRESSION_GROUP,
    TopicNames,
)
from schemas.data_export import EXPORT_GROUP

SERVICE = "lifecycle"
# Who runs as whom by default: the lifecycle service and each erasing service by its name.
DEFAULT_PRINCIPALS: dict[str, str] = {SERVICE: SERVICE, **{s: s for s in ERASING_SERVICES}}


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW rule: `principal` may `operation` on the literal `resource` of `kind`."""

    principal: str
    kind: str  # "topic" or "group"
    resource: str
    operation: str  # "read", "write" or "describe"

    def __str__(self) -> str:
        return f"allow {self.principal} {self.operation} {self.kind}:{self.resource}"


def acl_plan(topics: TopicNames, principals: Mapping[str, str] | None = None) -> list[Grant]:
    """Every rule the contract needs, for the topics' prefix (sorted, without repeats)."""
    names = {**DEFAULT_PRINCIPALS, **(principals or {})}
    me = f"User:{names[SERVICE]}"
    grants: set[Grant] = set()

    def allow(principal: str, kind: str, resource: str, *operations: str) -> None:
        grants.update(Grant(principal, kind, resource, op) for op in operations)

    # The lifecycle service: writes the lifecycle and profile topics (and reads them back for
    # re-drive and audits), reads every confirmation topic in its group, writes its own dead
    # letters, and reads every group's dead letters and offsets for the admin API.
    for topic in (topics.lifecycle, topics.profile):
        allow(me, "topic", topic, "write", "read")
    for topic in topics.inputs_of(ERASURE_GROUP):
        allow(me, "topic", topic, "read")
    allow(me, "group", topics.group_id(ERASURE_GROUP), "read")
    allow(me, "topic", topics.dlq(ERASURE_GROUP), "write")
    # Data exports: writes the requests, takes every service's parts in its export group.
    allow(me, "topic", topics.export_requested, "write")
    for topic in topics.inputs_of(EXPORT_GROUP):
        allow(me, "topic", topic, "read")
    allow(me, "group", topics.group_id(EXPORT_GROUP), "read")
    allow(me, "topic", topics.dlq(EXPORT_GROUP), "write")
    for group in topics.consumer_groups:
        allow(me, "topic", topics.dlq(group), "read")
        allow(me, "group", topics.group_id(group), "describe")
    # Each erasing service: reads its inputs in its own group, writes its confirmations and
    # its dead letters, nothing else.
    for service in ERASING_SERVICES:
        principal = f"User:{names[service]}"
        for topic in topics.inputs_of(service):
            allow(principal, "topic", topic, "read")
        allow(principal, "group", topics.group_id(service), "read")
        allow(principal, "topic", topics.erasure_confirmed(service), "write")
        allow(principal, "topic", topics.dlq(service), "write")
    # The mail service's suppression lane: the lifecycle topic (read above) in a group of its own.
    allow(f"User:{names['mail']}", "group", topics.group_id(SUPPRESSION_GROUP), "read")
    allow(me, "group", topics.group_id(SUPPRESSION_GROUP), "describe")
    # Each exporting service (its inputs above include the request topic): its own parts only.
    for service in EXPORTING_SERVICES:
        allow(f"User:{names[service]}", "topic", topics.export_part(service), "write")
    return sorted(grants)


def apply_acls(bootstrap: str, grants: Iterable[Grant], security: KafkaSecurity | None) -> int:
    """Create the rules on the broker (existing ones are kept); returns how many were sent."""
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        KafkaAdminClient,
        ResourcePattern,
        ResourceType,
    )

    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
    acls: list[Any] = [
        ACL(
            principal=grant.principal,
            host="*",
            operation=ACLOperation[grant.operation.upper()],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(kinds[grant.kind], grant.resource),
        )
        for grant in grants
    ]
    admin = KafkaAdminClient(**client_config(bootstrap, security), client_id="lifecycle-acls")
    try:
        result = admin.create_acls(acls)
    finally:
        admin.close()
    failed = result.get("failed", [])
    if failed:
        raise RuntimeError(f"{len(failed)} ACLs were refused: {failed[0][1]!r}")
    return len(acls)
