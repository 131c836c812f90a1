"""Is a new version of a published payload schema safe for the topic's existing consumers?

The rule: a new version of a payload on a topic must accept every payload the previous version
accepted (backward compatible), so a consumer upgraded to it keeps reading producers that are
not upgraded yet; consumers are upgraded before producers. Checked over the JSON Schema subset
our models export (pydantic's draft 2020-12 output), conservatively: where inclusion cannot be
decided (two different regular expressions), a change is reported as breaking.

Per keyword, the new schema must be no stricter than the old:
- `type`: the same types or more; `enum`/`const`: the same values or more;
- `required`: no name that the old did not require;
- `properties`: every old property still allowed, each compatible; a new property may only be
  added where the old schema refused unknown properties (`additionalProperties: false`) or it
  is optional and accepts anything the old allowed there;
- `additionalProperties`: not turned off where it was on;
- `minimum`/`exclusiveMinimum`/`minLength`/`minItems` not raised, the maxima not lowered;
- `pattern`/`format`: unchanged or dropped;
- `items`, `anyOf`/`oneOf` (each old branch covered by a new one), `$ref` (resolved in its own
  document), recursively.
Titles, descriptions, examples and defaults do not matter to a consumer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

Schema = Mapping[str, Any]

IGNORED = frozenset(
    {"title", "description", "examples", "default", "$id", "$schema", "$defs", "x-cloudevents-type"}
)
MINIMA = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
MAXIMA = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
KNOWN = frozenset(
    {
        *IGNORED,
        *MINIMA,
        *MAXIMA,
        "type",
        "enum",
        "const",
        "required",
        "properties",
        "additionalProperties",
        "pattern",
        "format",
        "items",
        "anyOf",
        "oneOf",
        "$ref",
        "uniqueItems",
    }
)


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """Every way `new` refuses a payload `old` accepted (empty: compatible)."""
    return list(_compare(old, new, old, new, "$"))


def _resolve(schema: Schema, document: Schema) -> Schema:
    while "$ref" in schema:
        ref = str(schema["$ref"])
        if not ref.startswith("#/"):
            return schema
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _types(schema: Schema) -> set[str] | None:
    found = schema.get("type")
    if found is None:
        return None
    return {found} if isinstance(found, str) else set(found)


def _branches(schema: Schema) -> list[Schema] | None:
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return list(schema[key])
    return None


def _compare(old: Schema, new: Schema, old_doc: Schema, new_doc: Schema, at: str) -> Iterator[str]:
    old, new = _resolve(old, old_doc), _resolve(new, new_doc)
    for key in set(new) - KNOWN:
        yield f"{at}: keyword {key!r} is not understood by the check (treated as breaking)"
    new_branches, old_branches = _branches(new), _branches(old)
    if new_branches is not None:
        for index, branch in enumerate(old_branches or [old]):
            if all(
                list(_compare(branch, candidate, old_doc, new_doc, at))
                for candidate in new_branches
            ):
                yield f"{at}: alternative {index} of the old schema is no longer accepted"
        return
    if old_branches is not None:
        for index, branch in enumerate(old_branches):
            yield from _compare(branch, new, old_doc, new_doc, f"{at}|{index}")
        return
    yield from _compare_plain(old, new, old_doc, new_doc, at)


def _compare_plain(
    old: Schema, new: Schema, old_doc: Schema, new_doc: Schema, at: str
) -> Iterator[str]:
    old_types, new_types = _types(old), _types(new)
    if new_types is not None and (old_types is None or not old_types <= new_types):
        yield f"{at}: type {sorted(old_types or ['any'])} narrowed to {sorted(new_types)}"
    if "enum" in new and ("enum" not in old or not set(old["enum"]) <= set(new["enum"])):
        lost = sorted(set(old.get("enum", [])) - set(new["enum"])) or ["any value"]
        yield f"{at}: enum no longer accepts {lost}"
    if "const" in new and old.get("const", object()) != new["const"]:
        yield f"{at}: const {new['const']!r} where the old accepted more"
    yield from _compare_bounds(old, new, at)
    added_required = set(new.get("required", [])) - set(old.get("required", []))
    for name in sorted(added_required):
        yield f"{at}: {name!r} is now required"
    yield from _compare_properties(old, new, old_doc, new_doc, at)
    if "items" in new:
        if "items" not in old:
            yield f"{at}: items now constrained"
        else:
            yield from _compare(old["items"], new["items"], old_doc, new_doc, f"{at}[]")


def _compare_bounds(old: Schema, new: Schema, at: str) -> Iterator[str]:
    for key in ("pattern", "format"):
        if key in new and old.get(key) != new[key]:
            yield f"{at}: {key} {old.get(key)!r} changed to {new[key]!r}"
    for key in MINIMA:
        if key in new and (key not in old or new[key] > old[key]):
            yield f"{at}: {key} raised to {new[key]!r}"
    for key in MAXIMA:
        if key in new and (key not in old or new[key] < old[key]):
            yield f"{at}: {key} lowered to {new[key]!r}"
    if new.get("uniqueItems") and not old.get("uniqueItems"):
        yield f"{at}: items must now be unique"


def _compare_properties(
    old: Schema, new: Schema, old_doc: Schema, new_doc: Schema, at: str
) -> Iterator[str]:
    old_props: Schema = old.get("properties", {})
    new_props: Schema = new.get("properties", {})
    old_open = old.get("additionalProperties", True) is not False
    new_open = new.get("additionalProperties", True) is not False
    if old_open and not new_open:
        yield f"{at}: unknown properties are no longer allowed"
    for name, schema in old_props.items():
        if name in new_props:
            yield from _compare(schema, new_props[name], old_doc, new_doc, f"{at}.{name}")
        elif not new_open:
            yield f"{at}: property {name!r} removed"
    if old_open:
        for name in new_props.keys() - old_props.keys():
            # The old schema let any value through under this name.
            if _restricts(_resolve(new_props[name], new_doc)):
                yield f"{at}: property {name!r} constrained where any value was allowed"


def _restricts(schema: Schema) -> bool:
    return any(key not in IGNORED for key in schema)
