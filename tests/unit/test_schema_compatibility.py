"""Every published JSON Schema against the previous published version on its topic; the check
itself, fed changes that would break a consumer."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from schemas.compatibility import breaking_changes
from schemas.contract import TOPIC_PAYLOADS, ErasureConfirmedV1, ErasureConfirmedV2

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def published(model: type) -> dict[str, Any]:
    """The file as published (schemas/vN/...), not the model's current output."""
    loaded: dict[str, Any] = json.loads((SCHEMAS / model.schema_path()).read_text())  # type: ignore[attr-defined]
    return loaded


PAIRS = [
    (topic, older, newer)
    for topic, lines in TOPIC_PAYLOADS.items()
    for versions in lines
    for older, newer in itertools.pairwise(versions)
]


def test_the_erasure_confirmation_has_a_second_version_to_check() -> None:
    assert (ErasureConfirmedV1, ErasureConfirmedV2) in [(o, n) for _, o, n in PAIRS]


@pytest.mark.parametrize(
    ("topic", "older", "newer"), PAIRS, ids=lambda v: getattr(v, "__name__", str(v))
)
def test_each_published_version_reads_what_the_one_before_accepted(
    topic: str, older: type, newer: type
) -> None:
    assert breaking_changes(published(older), published(newer)) == [], topic


def test_every_version_1_confirmation_is_a_valid_version_2_one() -> None:
    body = {
        "account_id": "0b6f0a5e-1f0a-4d5e-9c1a-2b3c4d5e6f70",
        "service": "mail",
        "rows_removed": 3,
        "confirmed_at": "2026-12-01T10:00:00+00:00",
    }
    ErasureConfirmedV1.model_validate(body)
    assert ErasureConfirmedV2.model_validate(body).outcome == "erased"


def v1() -> dict[str, Any]:
    return published(ErasureConfirmedV1)


def changed(path: str, value: Any = None, *, drop: bool = False) -> dict[str, Any]:
    """The v2 schema as published, with one change at `path` (dot-separated)."""
    schema = copy.deepcopy(published(ErasureConfirmedV2))
    *parents, last = path.split(".")
    node = schema
    for part in parents:
        node = node[part]
    if drop:
        del node[last]
    else:
        node[last] = value
    return schema


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda: changed("required", [*v1()["required"], "outcome"]), "'outcome' is now required"),
        (lambda: changed("properties.service", drop=True), "property 'service' removed"),
        (lambda: changed("properties.rows_removed.minimum", 1), "minimum raised"),
        (lambda: changed("properties.rows_removed.type", "string"), "type"),
        (lambda: changed("properties.service.pattern", "^[a-z]+$"), "pattern"),
        (lambda: changed("properties.account_id.format", "email"), "format"),
        (lambda: changed("properties.service.maxLength", 10), "maxLength lowered"),
    ],
)
def test_the_check_fails_on_a_change_that_breaks_a_consumer(change: Any, says: str) -> None:
    problems = breaking_changes(v1(), change())
    assert any(says in problem for problem in problems), problems


def test_the_check_sees_an_enum_narrowed_and_passes_one_widened() -> None:
    older = published(ErasureConfirmedV2)
    narrowed = copy.deepcopy(older)
    narrowed["properties"]["outcome"]["enum"] = ["erased"]
    widened = copy.deepcopy(older)
    widened["properties"]["outcome"]["enum"] = ["erased", "failed", "partial"]
    assert any("enum" in p for p in breaking_changes(older, narrowed))
    assert breaking_changes(older, widened) == []


def test_the_check_refuses_closing_an_open_object_and_constraining_a_free_name() -> None:
    open_ = {"type": "object", "properties": {"a": {"type": "string"}}}
    closed = {**open_, "additionalProperties": False}
    constrained = {**open_, "properties": {**open_["properties"], "b": {"type": "integer"}}}
    assert breaking_changes(open_, closed) == ["$: unknown properties are no longer allowed"]
    assert breaking_changes(open_, constrained) == [
        "$: property 'b' constrained where any value was allowed"
    ]
