"""All configuration, from `LIFECYCLE_*` environment variables, in one place."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lifecycle.crypto import decode_master_key
from lifecycle.errors import MasterKeyError
from lifecycle.kafka.admin import HOUR_MS, TopicSettings
from lifecycle.kafka.security import KafkaSecurity, KafkaSecurityError, Mechanism
from lifecycle.kafka.security import Protocol as KafkaProtocol
from lifecycle.keyring import KeyPolicy, KeyringError, read_private
from lifecycle.storage import persistence_env
from schemas.contract import TopicNames

# `service`: the members' front end (every /v1 route); `scout`: the scout service, which may
# record scouts and nothing else; `ops`: /admin; `auditor`: /audit.
Role = Literal["service", "scout", "ops", "auditor"]
ROLES: tuple[Role, ...] = ("service", "scout", "ops", "auditor")
EMBEDDED_DATA_DIR = Path("data")


class Settings(BaseSettings):
    """Defaults are the embedded first run: SQLite under ./data, Kafka off."""

    # Errors never repeat a value: a database URL may hold a password.
    model_config = SettingsConfigDict(
        env_prefix="LIFECYCLE_", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = f"sqlite:///{EMBEDDED_DATA_DIR / 'lifecycle.sqlite3'}"
    # PostgreSQL schema holding the service's tables (tests use one per test).
    database_schema: str = "public"
    kafka_bootstrap: str | None = None
    # How long a process waits for the database to hand it a connection (whole seconds, as
    # the library reads it), and for a Kafka broker to answer at all, before it fails (at
    # start: with one line naming which).
    database_connect_timeout_s: int = Field(default=5, ge=1)
    kafka_bootstrap_timeout_s: float = Field(default=5.0, gt=0)
    # Connections the application's pool opens at once and keeps (it grows by up to 20 more
    # under load, then shrinks back).
    database_pool_size: int = Field(default=10, ge=1)
    # How this process authenticates to the brokers (lifecycle.kafka.security): TLS with a CA
    # (and a client certificate), SASL with SCRAM or PLAIN, each process its own principal.
    kafka_security_protocol: KafkaProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: Mechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_ssl_check_hostname: bool = True
    # The Kafka user each party runs as, for `lifecycle acls` (default: its own name).
    kafka_principals: dict[str, str] = Field(default_factory=dict)
    # This process's stable name among its consumer group's members (an operator sets it from
    # the pod or host name, unique per process of a group): the Kafka consumers of `consume`
    # and `erasure` join as static members (group.instance.id), so a process killed and
    # restarted takes its partitions back at once instead of waiting out its old session.
    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,200}$")
    # The topics `lifecycle topics` creates (lifecycle.kafka.admin.TopicSettings): partitions,
    # replicas (3 on a production cluster), min.insync.replicas (unset: 2 with 3 or more
    # replicas, else 1) and the time bounds that bound how long a value outlives `Purged`.
    kafka_partitions: int = Field(default=3, ge=1)
    kafka_replication_factor: int = Field(default=1, ge=1)
    kafka_min_insync_replicas: int | None = Field(default=None, ge=1)
    kafka_lifecycle_retention_hours: float = Field(default=7 * 24, gt=0)
    kafka_lifecycle_segment_hours: float = Field(default=24, gt=0)
    kafka_profile_segment_hours: float = Field(default=1, gt=0)
    kafka_profile_max_compaction_lag_hours: float = Field(default=24, gt=0)
    kafka_profile_delete_retention_hours: float = Field(default=24, gt=0)
    kafka_confirmations_retention_hours: float = Field(default=14 * 24, gt=0)
    kafka_dead_letter_retention_hours: float = Field(default=2 * 24, gt=0)
    kafka_dead_letter_segment_hours: float = Field(default=1, gt=0)
    # Prepended to every topic name (e.g. "staging."); tests use one per test.
    topic_prefix: str = ""
    # Maps sha256(token) hex digests to roles, so configuration holds no usable secret.
    api_tokens: dict[str, Role] = Field(default_factory=dict)
    # sha256 hex of the bearer token /metrics then needs (unset: /metrics is open).
    metrics_token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # The legacy single secret (URL-safe base64 of 32 bytes): served as version 1 of every key
    # purpose (lifecycle.keyring). A secret type: never in a repr, a log or an error.
    master_key: SecretStr | None = None
    # The keyring directory (one 0600 file per key version). Unset: ./data/keys embedded.
    keyring_dir: Path | None = None
    # A KEK version is superseded at the latest this long after it was created (the rotation
    # schedule), and destroyed this long after it was retired (the backup and WAL-archive
    # retention): together, the bound an erasure receipt states.
    key_rotation_days: float = Field(default=90.0, ge=0)
    key_retention_days: float = Field(default=35.0, ge=0)
    erasure_deadline_hours: float = 72.0
    # A data export's download window once ready (then its key is destroyed), and how long
    # its parts may take before ops see it overdue.
    data_export_expiry_days: float = Field(default=7.0, gt=0)
    data_export_deadline_days: float = Field(default=14.0, gt=0)
    # A rolling upgrade from the shared confirmation topic: also read it, believing the
    # service a confirmation names in its payload. Weaker (anyone who may write that topic
    # can confirm for any service): on only while old services still confirm there.
    erasure_legacy_confirmations: bool = False
    # How long the first answer to a request with an Idempotency-Key is kept (and replayed).
    idempotency_ttl_hours: float = Field(default=24.0, gt=0)
    # Roles whose audit reads may ask for personal values decrypted (each such read is
    # recorded); empty: nobody, every audit read is redacted. Example: '["auditor"]'.
    audit_decrypt_roles: list[Role] = Field(default_factory=list)
    # How long a consumer keeps a record's de-duplication mark (`processed_events`): longer
    # than any input topic keeps a record, so every record that can come again is recognised.
    consumer_mark_retention_days: float = Field(default=30.0, gt=0)
    # The mail service's SMTP relay; unset, mail is logged by Message-ID and discarded.
    smtp_host: str | None = None
    smtp_port: int = 25
    # A worker process (relay, consume, erasure, project) serves /healthz and /readyz on this
    # port when set (lifecycle.probe); `serve` answers them on its API port anyway.
    probe_port: int | None = Field(default=None, ge=1, le=65535)
    probe_host: str = "127.0.0.1"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"
    service_name: str = "lifecycle"

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> Settings:
        if (self.kafka_min_insync_replicas or 1) > self.kafka_replication_factor:
            raise ValueError("kafka_min_insync_replicas cannot exceed kafka_replication_factor")
        return self

    @field_validator("database_url")
    @classmethod
    def _database_url_is_supported(cls, value: str) -> str:
        persistence_env(value)
        return value

    @field_validator("master_key")
    @classmethod
    def _master_key_decodes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_master_key(value.get_secret_value())
        return value

    @field_validator("api_tokens")
    @classmethod
    def _tokens_are_digests(cls, value: dict[str, Role]) -> dict[str, Role]:
        for digest in value:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError("api_tokens keys must be sha256 hex digests of the tokens")
        return value

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Settings:
        try:
            self.kafka_security  # noqa: B018 - built to be checked, at start-up
        except KafkaSecurityError as error:
            raise ValueError(str(error)) from None
        return self

    @property
    def kafka_security(self) -> KafkaSecurity:
        """This process's Kafka credentials, for every client it builds."""
        password = self.kafka_sasl_password
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            username=self.kafka_sasl_username,
            password=password.get_secret_value() if password is not None else None,
            ssl_cafile=self.kafka_ssl_cafile,
            ssl_certfile=self.kafka_ssl_certfile,
            ssl_keyfile=self.kafka_ssl_keyfile,
            ssl_check_hostname=self.kafka_ssl_check_hostname,
        )

    @property
    def topics(self) -> TopicNames:
        return TopicNames(prefix=self.topic_prefix)

    @property
    def topic_settings(self) -> TopicSettings:
        def ms(hours: float) -> int:
            return round(hours * HOUR_MS)

        return TopicSettings(
            partitions=self.kafka_partitions,
            replication_factor=self.kafka_replication_factor,
            min_insync_replicas_override=self.kafka_min_insync_replicas,
            lifecycle_retention_ms=ms(self.kafka_lifecycle_retention_hours),
            lifecycle_segment_ms=ms(self.kafka_lifecycle_segment_hours),
            profile_segment_ms=ms(self.kafka_profile_segment_hours),
            profile_max_compaction_lag_ms=ms(self.kafka_profile_max_compaction_lag_hours),
            profile_delete_retention_ms=ms(self.kafka_profile_delete_retention_hours),
            confirmations_retention_ms=ms(self.kafka_confirmations_retention_hours),
            dead_letter_retention_ms=ms(self.kafka_dead_letter_retention_hours),
            dead_letter_segment_ms=ms(self.kafka_dead_letter_segment_hours),
        )

    @property
    def is_embedded(self) -> bool:
        return self.database_url.startswith("sqlite:")

    @property
    def key_policy(self) -> KeyPolicy:
        return KeyPolicy(
            rotation=timedelta(days=self.key_rotation_days),
            retention=timedelta(days=self.key_retention_days),
        )

    def application_env(self) -> dict[str, str]:
        """The eventsourcing environment for the Accounts application."""
        master_key, keyring_dir = self.resolved_keys()
        return {
            **persistence_env(
                self.database_url,
                self.database_schema,
                self.database_connect_timeout_s,
                self.database_pool_size,
            ),
            "MASTER_KEY": master_key or "",
            "KEYRING_DIR": str(keyring_dir or ""),
            "IDEMPOTENCY_TTL_S": str(self.idempotency_ttl_hours * 3600),
        }

    def resolved_master_key(self) -> str:
        """The configured (or embedded legacy) master key; MasterKeyError when there is none."""
        master_key, _ = self.resolved_keys()
        if master_key is None:
            raise MasterKeyError(detail="no LIFECYCLE_MASTER_KEY: keys live in the keyring")
        return master_key

    def resolved_keys(self) -> tuple[str | None, Path | None]:
        """The master key (if any) and the keyring directory (if any).

        Embedded with nothing configured: the keyring `keys/` beside the SQLite database, and
        `master.key` there as version 1 when an older release created one (checked: a plain
        file of this user's, mode 0600)."""
        master_key = self.master_key.get_secret_value() if self.master_key else None
        if self.keyring_dir is not None or master_key is not None:
            return master_key, self.keyring_dir
        if not self.is_embedded:
            raise MasterKeyError(
                detail="LIFECYCLE_KEYRING_DIR (or LIFECYCLE_MASTER_KEY) is required outside "
                "the embedded default"
            )
        data = Path(self.database_url.removeprefix("sqlite:///")).parent
        legacy = data / "master.key"
        try:
            found = read_private(legacy) if legacy.exists() else None
        except KeyringError as error:
            raise MasterKeyError(detail=str(error)) from None
        if found is not None:
            decode_master_key(found)
        return found, data / "keys"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def generate_tokens() -> dict[Role, str]:
    """One fresh token per role, for a server started with none configured."""
    return {role: secrets.token_urlsafe(24) for role in ROLES}
