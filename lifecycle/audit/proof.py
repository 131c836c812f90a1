"""Erasure proof: a report, free of personal values, that a purged member is gone everywhere.

The caller brings the member's former values only as SHA-256 digests; every string the
service still stores (a whole-database dump, every Kafka topic from offset 0) is cut into
words and short word runs, hashed, and compared. A match names the place, never the value.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from lifecycle.application import Accounts
from lifecycle.erasure import ErasureProcess
from lifecycle.kafka.admin import read_from_start

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


def database_dump(accounts: Accounts, postgres_dsn: str | None) -> Iterator[str]:
    """Every row of every table: pg_dump for PostgreSQL, iterdump for SQLite."""
    if accounts.database.dialect == "postgres":
        assert postgres_dsn is not None
        # The DSN is the service's own setting, passed as one argv item (no shell).
        process = subprocess.run(  # noqa: S603
            ["pg_dump", "--data-only", "--no-owner", postgres_dsn],  # noqa: S607
            capture_output=True,
            check=True,
            text=True,
            errors="replace",
        )
        yield from process.stdout.splitlines()
        return
    path = accounts.env.get("SQLITE_DBNAME", "")
    connection = sqlite3.connect(path)
    try:
        yield from connection.iterdump()
    finally:
        connection.close()


def topic_dump(bootstrap: str, topics: Iterable[str]) -> Iterator[str]:
    """Keys, headers and values of every record still on the given topics, from offset 0."""
    for record in read_from_start(bootstrap, topics):
        yield _record_text(record)


def _record_text(record: Any) -> str:
    parts = [(record.key or b"").decode(errors="replace")]
    parts += [f"{name} {value.decode(errors='replace')}" for name, value in record.headers or ()]
    value = (record.value or b"").decode(errors="replace")
    try:
        # JSON escapes non-ASCII; search the decoded strings as well.
        parts.append(json.dumps(json.loads(value), ensure_ascii=False))
    except ValueError:
        parts.append(value)
    return "\n".join(parts)


def erasure_proof(
    accounts: Accounts,
    erasure: ErasureProcess,
    account_id: UUID,
    digests: set[str],
    places: dict[str, Iterable[str]],
) -> dict[str, Any]:
    """The report: lifecycle facts, confirmations, key state, and where (if anywhere) a value is."""
    status = erasure.status(account_id)
    results = [search(place, texts, digests) for place, texts in places.items()]
    found = set().union(*(result.matches for result in results)) if results else set()
    return {
        "account_id": str(account_id),
        "withdrawal_requested_at": status["requested_at"],
        "purged_at": status["purged_at"],
        "services": status["services"],
        "key_destroyed": accounts.vault.is_destroyed(account_id),
        "values_searched": len(digests),
        "places": [
            {
                "place": result.place,
                "items_searched": result.searched_items,
                "values_found": len(result.matches),
            }
            for result in results
        ],
        "values_found_anywhere": len(found),
        "erased": bool(status["purged_at"]) and not found,
    }
