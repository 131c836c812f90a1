"""Issue 19 on a real broker with SASL/SCRAM and ACLs (`scripts/services up --secure`).

The service runs its whole pipeline under its own credentials (relay and erasure process as
`lifecycle`, each downstream service as itself), with `lifecycle acls`' plan applied by the
admin. Nobody without credentials, nor anyone with another party's, can produce a
confirmation that is accepted, a withdrawal that downstream services act on, or a `Purged`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr
from support import Running, wait_until

from lifecycle.account_terms import AccountStatus
from lifecycle.application import Accounts
from lifecycle.bootstrap import (
    kafka_consumer,
    kafka_erasure_consumer,
    migrate_lifecycle,
    migrate_service,
)
from lifecycle.crypto import new_master_key
from lifecycle.erasure.records import ErasureRefusals
from lifecycle.kafka.acls import acl_plan, apply_acls
from lifecycle.kafka.admin import ensure_topics
from lifecycle.kafka.producer import KafkaPublisher, PublishError
from lifecycle.kafka.security import KafkaSecurity, client_config
from lifecycle.relay import Relay
from lifecycle.sealed_box import failed_part, new_key_pair
from lifecycle.settings import Settings
from schemas.contract import (
    ErasureConfirmedV1,
    ProfileV1,
    PurgedV1,
    Record,
    TopicNames,
    WithdrawalRequestedV1,
    encode_erasure_confirmed,
    encode_record,
    encode_tombstone,
    lifecycle_event_id,
    profile_event_id,
)
from schemas.data_export import (
    ExportRequestedV1,
    encode_export_part,
    encode_export_requested,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


SERVICES_ENV = Path(__file__).resolve().parents[2] / ".services" / "env"


def _services_env() -> dict[str, str]:
    """What `scripts/services up --secure` wrote, unless the environment says otherwise."""
    found: dict[str, str] = {}
    if SERVICES_ENV.exists():
        for line in SERVICES_ENV.read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            found[name.strip()] = value.strip()
    found.update({k: v for k, v in os.environ.items() if k.startswith("LIFECYCLE_SECURE_")})
    return found


@pytest.fixture(scope="module")
def secure() -> tuple[str, dict[str, str]]:
    """The secure broker's address and its users' passwords (from `scripts/services`)."""
    env = _services_env()
    bootstrap = env.get("LIFECYCLE_SECURE_KAFKA_BOOTSTRAP", "")
    credentials = env.get("LIFECYCLE_SECURE_KAFKA_CREDENTIALS", "")
    if not bootstrap or not Path(credentials).exists():
        pytest.fail("no SASL/ACL broker: run `scripts/services up --secure` first")
    users = dict(
        line.split("=", 1) for line in Path(credentials).read_text().splitlines() if "=" in line
    )
    return bootstrap, users


def as_user(users: dict[str, str], name: str) -> KafkaSecurity:
    return KafkaSecurity(
        protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256" if name != "scout" else "SCRAM-SHA-512",
        username=name,
        password=users[name],
    )


@pytest.fixture(scope="module")
def secured_topics(secure: tuple[str, dict[str, str]]) -> TopicNames:
    """This module's topics, created by the admin with the ACL plan applied."""
    bootstrap, users = secure
    names = TopicNames(prefix=f"t{uuid.uuid4().hex[:10]}.")
    admin = as_user(users, "admin")
    ensure_topics(bootstrap, names, security=admin)
    plan = acl_plan(names)
    apply_acls(bootstrap, plan, admin)
    # Created on the controller, effective once the broker's metadata has them.
    wait_until(lambda: len(acls_in_effect(bootstrap, admin, names.prefix)) >= len(plan), "ACLs")
    return names


def acls_in_effect(bootstrap: str, admin: KafkaSecurity, prefix: str) -> list[object]:
    """The broker's ACLs on resources of this prefix (what its authorizer decides with)."""
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePatternFilter,
        ResourceType,
    )

    client = KafkaAdminClient(**client_config(bootstrap, admin), client_id="test-acls")
    try:
        found, _ = client.describe_acls(
            ACLFilter(
                principal=None,
                host="*",
                operation=ACLOperation.ANY,
                permission_type=ACLPermissionType.ANY,
                resource_pattern=ResourcePatternFilter(
                    ResourceType.ANY, None, ACLResourcePatternType.ANY
                ),
            )
        )
    finally:
        client.close()
    return [acl for acl in found if acl.resource_pattern.resource_name.startswith(prefix)]


def send(bootstrap: str, security: KafkaSecurity | None, topic: str, record: Record) -> None:
    """Publish one record as `security`'s principal; PublishError when the broker refuses."""
    publisher = KafkaPublisher(
        bootstrap,
        client_id="test-secure",
        security=security,
        flush_timeout_s=5.0,
        max_block_ms=3_000,
        bootstrap_timeout_ms=3_000,
        delivery_timeout_ms=5_000,
        request_timeout_ms=3_000,
    )
    try:
        publisher.publish(topic, record.key, record.headers, record.value)
        publisher.flush()
    finally:
        publisher.close(timeout_s=1.0)


def forged_confirmation(account_id: uuid.UUID, service: str) -> Record:
    return encode_erasure_confirmed(
        ErasureConfirmedV1(
            account_id=account_id, service=service, rows_removed=0, confirmed_at=datetime.now(UTC)
        )
    )


def forged_export_request(account_id: uuid.UUID) -> Record:
    return encode_export_requested(
        ExportRequestedV1(
            export_id=uuid.uuid4(),
            account_id=account_id,
            public_key=new_key_pair()[1],
            requested_at=datetime.now(UTC),
            expires_at=datetime.now(UTC),
        )
    )


def forged_export_part(account_id: uuid.UUID, service: str) -> Record:
    return encode_export_part(
        failed_part(
            export_id=uuid.uuid4(),
            account_id=account_id,
            service=service,
            failure_code="internal_error",
        )
    )


def forged_tombstone(account_id: uuid.UUID) -> Record:
    return encode_tombstone(
        ProfileV1,
        ce_id=profile_event_id(account_id, 9),
        subject=str(account_id),
        time=datetime.now(UTC),
    )


def forged_lifecycle(account_id: uuid.UUID) -> list[Record]:
    now = datetime.now(UTC)
    subject = str(account_id)
    return [
        encode_record(
            WithdrawalRequestedV1(
                account_id=account_id, reason="other", requested_at=now, gift_forfeited=False
            ),
            ce_id=lifecycle_event_id(account_id, 2),
            subject=subject,
            time=now,
        ),
        encode_record(
            PurgedV1(account_id=account_id, purged_at=now),
            ce_id=lifecycle_event_id(account_id, 3),
            subject=subject,
            time=now,
        ),
    ]


def test_nobody_without_the_right_principal_can_write_what_moves_an_erasure(
    secure: tuple[str, dict[str, str]], secured_topics: TopicNames
) -> None:
    bootstrap, users = secure
    victim = uuid.uuid4()
    topics = secured_topics
    attempts = [
        # No credentials at all: the SASL listener does not even answer.
        (None, topics.erasure_confirmed("scout"), forged_confirmation(victim, "scout")),
        # Valid credentials without any ACL.
        (
            as_user(users, "intruder"),
            topics.erasure_confirmed("chat"),
            forged_confirmation(victim, "chat"),
        ),
        # Another erasing service's principal, on scout's confirmation topic.
        (
            as_user(users, "chat"),
            topics.erasure_confirmed("scout"),
            forged_confirmation(victim, "scout"),
        ),
        # A downstream service cannot publish a withdrawal or a purge for others to act on.
        *(
            (as_user(users, "mail"), topics.lifecycle, record)
            for record in forged_lifecycle(victim)
        ),
        *((as_user(users, "intruder"), topics.lifecycle, r) for r in forged_lifecycle(victim)),
        # Nor change or wipe a member's mail address (a profile record or tombstone).
        (as_user(users, "mail"), topics.profile, forged_tombstone(victim)),
        (as_user(users, "intruder"), topics.profile, forged_tombstone(victim)),
        # Nor write another group's dead letters.
        (as_user(users, "scout"), topics.dlq("chat"), forged_confirmation(victim, "chat")),
        # Data exports: only the lifecycle service asks (a request names the key parts are
        # sealed to), and each service answers on its own part topic only.
        (as_user(users, "mail"), topics.export_requested, forged_export_request(victim)),
        (as_user(users, "intruder"), topics.export_requested, forged_export_request(victim)),
        (as_user(users, "chat"), topics.export_part("scout"), forged_export_part(victim, "scout")),
        (
            as_user(users, "intruder"),
            topics.export_part("mail"),
            forged_export_part(victim, "mail"),
        ),
    ]
    for security, topic, record in attempts:
        with pytest.raises(PublishError):
            send(bootstrap, security, topic, record)


@pytest.fixture
def secure_settings(
    postgres_url: str, pg_schema: str, secure: tuple[str, dict[str, str]]
) -> Iterator[dict[str, Settings]]:
    """Each party's settings: same database, own Kafka credentials."""
    bootstrap, users = secure
    common = Settings(
        database_url=postgres_url,
        database_schema=pg_schema,
        kafka_bootstrap=bootstrap,
        master_key=new_master_key(),
        log_format="json",
    )
    yield {
        name: common.model_copy(
            update={
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": as_user(users, name).sasl_mechanism,
                "kafka_sasl_username": name,
                "kafka_sasl_password": SecretStr(users[name]),
            }
        )
        for name in ("lifecycle", "scout", "chat", "mail")
    }
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for name in ("scout", "chat", "mail"):
            conn.execute(f"DROP SCHEMA IF EXISTS {pg_schema}_{name} CASCADE")


def test_the_pipeline_runs_under_its_own_credentials_and_a_misattributed_confirmation_is_refused(
    secure: tuple[str, dict[str, str]],
    secured_topics: TopicNames,
    secure_settings: dict[str, Settings],
) -> None:
    bootstrap, users = secure
    topics = secured_topics
    service = secure_settings["lifecycle"]
    assert service.kafka_sasl_password is not None
    migrate_lifecycle(service)  # `lifecycle migrate`, and each service's store
    for name in ("scout", "chat", "mail"):
        migrate_service(service, name, f"{service.database_schema}_{name}")
    accounts = Accounts(env=service.application_env())
    running: list[Running] = []
    publisher = KafkaPublisher(bootstrap, security=service.kafka_security)
    try:
        member = accounts.register(
            email="secure.member@example.jp", display_name="Secure Member", consent_version="v1"
        )
        # chat's principal may write its own topic, but naming scout there gets it nowhere.
        send(
            bootstrap,
            as_user(users, "chat"),
            topics.erasure_confirmed("chat"),
            forged_confirmation(member, "scout"),
        )
        for name in ("scout", "chat", "mail"):
            settings = secure_settings[name]
            schema = f"{settings.database_schema}_{name}"
            running.append(Running(kafka_consumer(name, settings, topics=topics, schema=schema)))
        running.append(Running(kafka_erasure_consumer(service, accounts, topics=topics)))
        accounts.request_withdrawal(member, reason="hired_elsewhere")
        relay = Relay(accounts, publisher, topics=topics)
        while relay.run_once():
            pass
        wait_until(
            lambda: accounts.load_for_audit(member).status is AccountStatus.PURGED,
            "the erasure completes under the parties' own credentials",
        )
        refused = ErasureRefusals(accounts.database).totals()
        assert refused == {("chat", "service_mismatch"): 1}
        assert all(item.error is None for item in running)
    finally:
        for item in running:
            item.stop()
        publisher.close()
        accounts.close()
