"""Every place a member's personal value can rest, each with its erasure path and its check.

One registry, so a new resting place cannot be added without saying how it is erased and how
that is proved: `lifecycle audit erasure-proof` walks it (`lifecycle.audit.proof`), and both
the proof and a test fail when a table of the service's schemas, or a topic under the
configured prefix, exists that it does not name.

Erasure paths: `crypto_shredded` (sealed under the account's key, destroyed at `Purged`),
`deleted` (a named handler deletes the rows), `compacted` / `retention` (Kafka erases it
within the stated bound), `none_held` (holds ids, codes, counts and times only), and for
copies outside the running system (`backup`, `memory`) the path that covers them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from lifecycle.kafka.admin import HOUR_MS, TopicSettings
from lifecycle.kafka.security import KafkaSecurity, client_config
from lifecycle.storage import Database
from projections.base import SHADOW_SUFFIX
from schemas.contract import (
    CONSUMER_GROUPS,
    ERASING_SERVICES,
    ERASURE_CONFIRMED_TOPIC_PATTERN,
    EXPORTING_SERVICES,
    TopicNames,
)
from schemas.data_export import EXPORT_PART_TOPIC_PATTERN, EXPORT_REQUESTED_TOPIC

Kind = Literal["table", "topic", "log", "backup", "memory"]
Erasure = Literal["crypto_shredded", "deleted", "compacted", "retention", "none_held"]
# What the proof does for the place: search its content for the former values; and more:
# `key_destroyed` (the account's key is gone), `rows_gone` (no row names the account),
# `profile_compacted` (no profile value for the account left on the topic), `dead_letters`
# (no dead letter of the account carries a value), `not_searched` (outside the service's
# reach: the test or the operation named in `by` covers it).
Check = Literal["search", "key_destroyed", "rows_gone", "profile_compacted", "dead_letters"]
LIFECYCLE = "lifecycle"


@dataclass(frozen=True)
class RestingPlace:
    kind: Kind
    owner: str  # "lifecycle" or the service whose store or stream it is
    name: str  # a table's name; a topic's name without the prefix; a stream or path
    holds: str  # the member's values that can rest there ("" when none)
    erasure: Erasure
    by: str  # what erases them, or why none rest there
    check: tuple[Check, ...] = ("search",)
    bound: str = ""  # when the erasure is Kafka's, how long a copy can outlive `Purged`

    @property
    def searched(self) -> bool:
        return self.kind in ("table", "topic")


def _hours(ms: int) -> str:
    return f"{ms / HOUR_MS:g} h"


_KAFKA = TopicSettings()
PROFILE_BOUND_MS = _KAFKA.profile_segment_ms + _KAFKA.profile_max_compaction_lag_ms
DEAD_LETTER_BOUND_MS = _KAFKA.dead_letter_retention_ms + _KAFKA.dead_letter_segment_ms
NO_VALUE = "ids, codes, counts and times only"


def _none(kind: Kind, owner: str, name: str, why: str = NO_VALUE) -> RestingPlace:
    return RestingPlace(kind, owner, name, "", "none_held", why)


def _tables_without_values(owner: str, names: Iterable[str], why: str) -> list[RestingPlace]:
    return [_none("table", owner, name, why) for name in names]


READ_MODEL_TABLES = (
    "account_directory",
    "account_directory_tracking",
    "erasure_requests",
    "erasure_status_tracking",
    "withdrawal_reasons_weekly",
    "withdrawal_reasons_tracking",
    "gift_claims_monthly",
    "gift_claims_tracking",
    "scouts_per_company",
    "scouts_per_company_tracking",
    "scouted_members",
    "hash_chain",
    "hash_chain_tracking",
)
CONSUMER_TABLES = ("processed_events", "outbox")  # the kit's: ce_ids, confirmations (ids)

REGISTRY: tuple[RestingPlace, ...] = (
    # The lifecycle service's schema
    RestingPlace(
        "table",
        LIFECYCLE,
        "accounts_events",
        "e-mail, name, phone, job title, work history, withdrawal comment",
        "crypto_shredded",
        "sealed under the account's key; `Purged` destroys the key (destroy_key_on_purge)",
        ("search", "key_destroyed"),
    ),
    RestingPlace(
        "table",
        LIFECYCLE,
        "stored_events",
        "as accounts_events (the embedded SQLite store)",
        "crypto_shredded",
        "sealed under the account's key; `Purged` destroys the key",
        ("search", "key_destroyed"),
    ),
    RestingPlace(
        "table",
        LIFECYCLE,
        "account_keys",
        "the key that opens the account's sealed fields",
        "deleted",
        "the destroy_key_on_purge trigger, in the transaction recording `Purged`",
        ("search", "key_destroyed"),
    ),
    _none("table", LIFECYCLE, "destroyed_keys", "account ids and destruction times"),
    RestingPlace(
        "table",
        LIFECYCLE,
        "idempotency_keys",
        "",
        "deleted",
        "first answers to requests with an Idempotency-Key: ids, statuses and codes (problems "
        "echo no value), the payload only as an HMAC; an account's rows are deleted at its "
        "purge (Accounts.purge), every row once expired (LIFECYCLE_IDEMPOTENCY_TTL_HOURS)",
        ("search", "rows_gone"),
    ),
    # The data exports (lifecycle.data_export)
    RestingPlace(
        "table",
        LIFECYCLE,
        "data_export_keys",
        "the private key that opens an export's sealed parts (wrapped by the keyring)",
        "deleted",
        "at the export's expiry or cancellation (DataExports), and by the end_data_exports "
        "trigger in the transaction recording `WithdrawalRequested` or `Purged`",
        ("search", "rows_gone"),
    ),
    RestingPlace(
        "table",
        LIFECYCLE,
        "data_export_chunks",
        "every part of a member's export (account, scouts, chats, mail), sealed to its key",
        "deleted",
        "with the export's key (DataExports._end), and by the end_data_exports trigger at "
        "`WithdrawalRequested` or `Purged`; unreadable once the key is gone",
        ("search", "rows_gone"),
    ),
    _none("table", LIFECYCLE, "data_exports", "export ids, status and times"),
    *(
        _none("table", LIFECYCLE, f"data_export_{name}", "the export intake's kit: " + NO_VALUE)
        for name in CONSUMER_TABLES
    ),
    _none(
        "memory",
        LIFECYCLE,
        "a download in progress",
        "one opened chunk at a time (DataExports.download streams; the document is never "
        "assembled or stored, nor cached)",
    ),
    *_tables_without_values(LIFECYCLE, READ_MODEL_TABLES, "read models: " + NO_VALUE),
    *_tables_without_values(
        LIFECYCLE,
        (
            "relay_position",
            "erasure_confirmations",
            "erasure_retries",
            "erasure_refusals",
            "erasure_receipts",
            "erasure_processed_events",
            "erasure_outbox",
            "dead_letter_actions",
            "personal_data_reads",
            "key_locks",
            "schema_migrations",
        ),
        NO_VALUE,
    ),
    # Each erasing service's schema
    RestingPlace(
        "table",
        "scout",
        "scouts",
        "which companies scouted the member",
        "deleted",
        "consumers.member_data.MemberDataHandler.erase on WithdrawalRequested, again on Purged",
        ("search", "rows_gone"),
    ),
    RestingPlace(
        "table",
        "chat",
        "chat_threads",
        "the member's threads with companies",
        "deleted",
        "consumers.member_data.MemberDataHandler.erase on WithdrawalRequested, again on Purged",
        ("search", "rows_gone"),
    ),
    RestingPlace(
        "table",
        "chat",
        "chat_messages",
        "text the member and companies wrote (sealed under the account's key in sealed_keys)",
        "deleted",
        "consumers.member_data.MemberDataHandler.erase on WithdrawalRequested, again on Purged",
        ("search", "rows_gone"),
    ),
    RestingPlace(
        "table",
        "chat",
        "sealed_keys",
        "the key that opens the account's sealed messages (wrapped by the service's keyring)",
        "deleted",
        "consumers.member_data.MemberDataHandler.erase, with the messages",
        ("search", "rows_gone"),
    ),
    RestingPlace(
        "table",
        "mail",
        "contacts",
        "e-mail and name (sealed under the account's key in sealed_keys), notification choices",
        "deleted",
        "consumers.mail.MailHandler.erase after the confirmation mail, or on the profile tombstone",
        ("search", "rows_gone"),
    ),
    RestingPlace(
        "table",
        "mail",
        "sealed_keys",
        "the key that opens the account's sealed contact (wrapped by the service's keyring)",
        "deleted",
        "consumers.mail.MailHandler.erase, with the contact row",
        ("search", "rows_gone"),
    ),
    RestingPlace(
        "table",
        "mail",
        "mail_outbox",
        "queued notices to the member",
        "deleted",
        "consumers.mail.MailHandler.erase on WithdrawalRequested (and again on Purged)",
        ("search", "rows_gone"),
    ),
    RestingPlace(
        "table",
        "mail",
        "mail_notices",
        "notices sent, dropped or suppressed (subject and body sealed in sealed_keys), dates",
        "deleted",
        "consumers.member_data.MemberDataHandler.erase on WithdrawalRequested, again on Purged",
        ("search", "rows_gone"),
    ),
    _none("table", "mail", "suppressions", "account ids, the confirmation's Message-ID"),
    *(
        _none("table", service, "key_locks", "SQLite lock rows")
        for service in ("scout", "chat", "mail")
    ),
    *(
        _none("table", service, "schema_migrations", "migration versions and names")
        for service in ("scout", "chat", "mail")
    ),
    _none("table", "scout", "withdrawn_accounts", "account ids"),
    _none("table", "chat", "withdrawn_accounts", "account ids"),
    *(
        _none("table", service, name, "the consumer kit's: " + NO_VALUE)
        for service in ("scout", "chat", "mail")
        for name in CONSUMER_TABLES
    ),
    # Topics (named without the prefix)
    RestingPlace(
        "topic",
        LIFECYCLE,
        "account.profile.v1",
        "e-mail, name, notification choices",
        "compacted",
        "the relay's tombstone at `Purged`; compaction removes the values behind it",
        ("search", "profile_compacted"),
        f"segment.ms + max.compaction.lag.ms = {_hours(PROFILE_BOUND_MS)} after `Purged`",
    ),
    _none("topic", LIFECYCLE, "account.lifecycle.v1", "the contract: " + NO_VALUE),
    _none(
        "topic",
        LIFECYCLE,
        "account.erasure-confirmed.v1",
        "the contract (the shared topic of earlier releases): " + NO_VALUE,
    ),
    *(
        _none(
            "topic",
            service,
            ERASURE_CONFIRMED_TOPIC_PATTERN.format(service=service),
            "the contract: " + NO_VALUE,
        )
        for service in ERASING_SERVICES
    ),
    _none(
        "topic",
        LIFECYCLE,
        EXPORT_REQUESTED_TOPIC,
        "data-export requests: ids, times and the export's public key",
    ),
    *(
        RestingPlace(
            "topic",
            service,
            EXPORT_PART_TOPIC_PATTERN.format(service=service),
            "the service's section of a member's data export, sealed to the export's key",
            "crypto_shredded",
            "sealed to the export's X25519 public key; its private key is destroyed when the "
            "export expires, is cancelled by a withdrawal, or the account is purged",
            ("search",),
            "unreadable once the export's key is gone; deleted by the topic's retention",
        )
        for service in EXPORTING_SERVICES
    ),
    *(
        RestingPlace(
            "topic",
            group,
            f"{group}.dlq.v1",
            "",
            "none_held",
            "a dead letter refers to its source record (key: account id; headers: source "
            "offset, error, ce_id/ce_type/ce_subject) and carries no copy; re-drive reads "
            "the source, whose compaction or retention erases the only copy",
            ("search", "dead_letters"),
            f"older dead letters with a value: retention + segment = "
            f"{_hours(DEAD_LETTER_BOUND_MS)}",
        )
        for group in CONSUMER_GROUPS
    ),
    # Outside the stores
    RestingPlace(
        "log",
        LIFECYCLE,
        "stdout/stderr JSON logs of every process (serve, relay, consume, erasure)",
        "",
        "none_held",
        "never logged: ids, codes, counts only (tests search captured logs for the values)",
        (),
    ),
    RestingPlace(
        "backup",
        LIFECYCLE,
        "backups of the lifecycle schema (pg_dump)",
        "sealed fields and the account keys of members active when it was taken",
        "crypto_shredded",
        "restored only followed by `lifecycle audit reshred --receipts ARCHIVE`, which purges "
        "again and destroys the key of every account a receipt the service signed, or the "
        "destroyed-keys list, knows purged (never a topic record)",
        (),
        "the receipts archive outside the database bounds what reshred learns",
    ),
    RestingPlace(
        "backup",
        "mail",
        "backups of the services' schemas",
        "rows as the services held them when it was taken (contacts, messages)",
        "deleted",
        "an operator step: after restoring a service's schema, reset its consumer group to the "
        "backup's time, so it handles again the WithdrawalRequested/Purged records since",
        (),
        "the lifecycle topic's retention (7 d) bounds the records it can handle again",
    ),
    RestingPlace(
        "memory",
        LIFECYCLE,
        "the in-process log (Kafka off)",
        "profile records, as on the profile topic",
        "deleted",
        "held in memory only: gone when `lifecycle serve` stops (no compaction meanwhile)",
        (),
    ),
)


def places(kind: Kind, owner: str | None = None) -> list[RestingPlace]:
    return [p for p in REGISTRY if p.kind == kind and (owner is None or p.owner == owner)]


def topic_places(topics: TopicNames) -> dict[str, RestingPlace]:
    """The registered topics by their full name under `topics`' prefix."""
    return {topics.prefix + place.name: place for place in places("topic")}


def unregistered_tables(owner: str, present: Iterable[str]) -> list[str]:
    """Tables of `owner`'s schema the registry does not name (a read model's rebuild shadow
    counts as the table it rebuilds)."""
    known = {place.name for place in places("table", owner)}
    return sorted(t for t in present if t.removesuffix(SHADOW_SUFFIX) not in known)


def unregistered_topics(topics: TopicNames, present: Iterable[str]) -> list[str]:
    """Topics under `topics`' prefix the registry does not name (with no prefix: every
    topic but the broker's own `__*`)."""
    known = set(topic_places(topics))
    return sorted(
        name
        for name in present
        if name.startswith(topics.prefix) and not name.startswith("__") and name not in known
    )


def list_tables(database: Database) -> set[str]:
    """The tables of the database's schema (PostgreSQL) or file (SQLite)."""
    return database.table_names()


def list_topics(bootstrap: str, security: KafkaSecurity | None = None) -> set[str]:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(**client_config(bootstrap, security), client_id="lifecycle-audit")
    try:
        return set(admin.list_topics())
    finally:
        admin.close()
