"""Erasure proof: a report, free of personal values, that a purged member is gone everywhere.

It walks the registry of resting places (`lifecycle.audit.registry`): each table of the
lifecycle and service schemas and each topic is searched and given its own checks (key
destroyed, the account's rows gone, the profile compacted, no dead letter with a value);
places outside the service's reach (logs, backups) are listed with what covers them; a table
or topic the registry does not name fails the proof. The caller brings the former values
only as SHA-256 digests; every stored string is cut into words and short word runs, hashed
and compared. A match names the place, never the value.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from lifecycle.application import Accounts
from lifecycle.audit.registry import (
    LIFECYCLE,
    PROFILE_BOUND_MS,
    REGISTRY,
    RestingPlace,
    list_tables,
    list_topics,
    places,
    topic_places,
    unregistered_tables,
    unregistered_topics,
)
from lifecycle.erasure.queries import ErasureStatusQuery
from lifecycle.kafka.admin import read_from_start
from lifecycle.kafka.security import KafkaSecurity
from lifecycle.storage import Database
from schemas.contract import TopicNames

# Runs of up to this many words are hashed, so "Hanako Yamada" is found as one value.
MAX_WORDS = 4
WORD_SPLIT = re.compile(r"""[\s"',;:{}\[\]()<>=|\\\t]+""")


def value_digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def candidate_digests(text: str) -> Iterator[str]:
    """Digests of every word and run of up to MAX_WORDS words, as written and case-folded."""
    words = [word for word in WORD_SPLIT.split(text) if word]
    for start in range(len(words)):
        for width in range(1, MAX_WORDS + 1):
            if start + width > len(words):
                break
            phrase = " ".join(words[start : start + width])
            yield value_digest(phrase)
            yield value_digest(phrase.casefold())


@dataclass
class SearchResult:
    place: str
    searched_items: int = 0
    matches: set[str] = field(default_factory=set)


def search(place: str, texts: Iterable[str], digests: set[str]) -> SearchResult:
    result = SearchResult(place)
    for text in texts:
        result.searched_items += 1
        for digest in candidate_digests(text):
            if digest in digests:
                result.matches.add(digest)
    return result


@dataclass
class Stores:
    """What the proof reads: each owner's database (`lifecycle`, and the services whose
    schemas it can reach) and, when configured, the broker and the topics' prefix."""

    databases: Mapping[str, Database]
    topics: TopicNames
    bootstrap: str | None = None
    security: KafkaSecurity | None = None


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode(errors="replace")
    text = str(value)
    if text[:1] in "{[":
        try:  # JSON escapes non-ASCII; search the decoded strings as well.
            return text + "\n" + json.dumps(json.loads(text), ensure_ascii=False)
        except ValueError:
            return text
    return text


def table_rows(database: Database, table: str) -> Iterator[str]:
    """Every row of one table, its columns as text."""
    with database.transaction(commit=False) as cursor:
        rows = cursor.execute(f"SELECT * FROM {database.table(table)}").fetchall()
    for row in rows:
        yield "\n".join(_text(value) for value in row if value is not None)


def rows_naming(database: Database, table: str, account_id: UUID) -> int:
    with database.transaction(commit=False) as cursor:
        row = cursor.execute(
            f"SELECT count(*) FROM {database.table(table)} WHERE account_id = %s",
            (str(account_id),),
        ).fetchone()
    return int(row[0]) if row else 0


def _record_text(record: Any) -> str:
    parts = [(record.key or b"").decode(errors="replace")]
    parts += [f"{name} {value.decode(errors='replace')}" for name, value in record.headers or ()]
    parts.append(_text(record.value or b""))
    return "\n".join(parts)


def _entry(place: RestingPlace, name: str) -> dict[str, Any]:
    return {
        "kind": place.kind,
        "owner": place.owner,
        "place": name,
        "holds": place.holds,
        "erasure": place.erasure,
        "by": place.by,
        "bound": place.bound,
    }


def _walk_tables(
    stores: Stores, account_id: UUID, digests: set[str], unregistered: list[str]
) -> Iterator[tuple[dict[str, Any], set[str], bool]]:
    for owner, database in stores.databases.items():
        present = list_tables(database)
        unregistered += [f"{owner}:{t}" for t in unregistered_tables(owner, present)]
        for place in places("table", owner):
            if place.name not in present:
                continue
            entry = _entry(place, f"{owner}:{place.name}")
            found = search(entry["place"], table_rows(database, place.name), digests)
            entry.update(items_searched=found.searched_items, values_found=len(found.matches))
            ok = True
            if "rows_gone" in place.check:
                entry["rows_of_account"] = rows_naming(database, place.name, account_id)
                ok = entry["rows_of_account"] == 0
            yield entry, found.matches, ok


def _walk_topics(
    stores: Stores,
    account_id: UUID,
    digests: set[str],
    purged_at: datetime | None,
    unregistered: list[str],
) -> Iterator[tuple[dict[str, Any], set[str], bool]]:
    if stores.bootstrap is None:
        return
    present = list_topics(stores.bootstrap, stores.security)
    unregistered += unregistered_topics(stores.topics, present)
    key = str(account_id).encode()
    for name, place in topic_places(stores.topics).items():
        if name not in present:
            continue
        records = list(read_from_start(stores.bootstrap, [name], security=stores.security))
        entry = _entry(place, name)
        found = search(name, (_record_text(r) for r in records), digests)
        entry.update(items_searched=found.searched_items, values_found=len(found.matches))
        of_account = [r for r in records if r.key == key]
        with_value = sum(1 for r in of_account if r.value is not None)
        ok = True
        if "profile_compacted" in place.check:
            due = purged_at + timedelta(milliseconds=PROFILE_BOUND_MS) if purged_at else None
            entry["profile_values_left"] = with_value
            entry["last_copy_due_by"] = due.isoformat() if due else None
            ok = with_value == 0
        if "dead_letters" in place.check:
            entry["dead_letters_of_account"] = len(of_account)
            entry["dead_letters_with_a_value"] = with_value
            ok = with_value == 0
        yield entry, found.matches, ok


def erasure_proof(
    accounts: Accounts,
    erasure: ErasureStatusQuery,
    account_id: UUID,
    digests: set[str],
    stores: Stores,
) -> dict[str, Any]:
    """The report: lifecycle facts, confirmations, key state, and every registered place with
    its checks; `erased` only when purged, nothing found, every check holds and the registry
    names every table and topic there is."""
    status = erasure.status(account_id).as_dict()
    key_destroyed = accounts.vault.is_destroyed(account_id)
    purged_at = status["purged_at"]
    unregistered: list[str] = []
    walked = [
        *_walk_tables(stores, account_id, digests, unregistered),
        *_walk_topics(stores, account_id, digests, purged_at, unregistered),
    ]
    found: set[str] = set().union(*(matches for _, matches, _ in walked)) if walked else set()
    for entry, _, _ in walked:
        if entry["owner"] == LIFECYCLE and entry["erasure"] == "crypto_shredded":
            entry["key_destroyed"] = key_destroyed
    checks_hold = all(ok for _, _, ok in walked) and key_destroyed
    return {
        "account_id": str(account_id),
        "withdrawal_requested_at": status["requested_at"],
        "purged_at": status["purged_at"],
        "services": status["services"],
        "key_destroyed": key_destroyed,
        "values_searched": len(digests),
        "places": [{**entry, "checks_hold": ok} for entry, _, ok in walked],
        "not_searched_here": [
            _entry(place, place.name) for place in REGISTRY if not place.searched
        ],
        "schemas_not_reached": sorted({p.owner for p in places("table")} - set(stores.databases)),
        "unregistered": sorted(unregistered),
        "values_found_anywhere": len(found),
        "erased": bool(status["purged_at"]) and not found and checks_hold and not unregistered,
    }
