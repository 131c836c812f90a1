"""Write the contract's JSON Schema files: `python -m schemas.export [TARGET_DIR] [--check]`.

One file per payload model and per document model (`schemas.data_export.DataExportV1`), at
`<target>/<version>/<name>.json`, rendered deterministically
(sorted keys, two-space indent, trailing newline) so a diff shows only real changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from schemas.contract import MODELS, SCHEMA_MODELS, ContractModel

SCHEMAS_DIR = Path(__file__).resolve().parent
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
EXPORT_COMMAND = "python -m schemas.export  (or: lifecycle schemas export)"


def schema_of(model: type[ContractModel]) -> dict[str, Any]:
    """A payload's schema names its CloudEvents type; a document's (the data export) does not."""
    event_type = {"x-cloudevents-type": model.ce_type()} if model in MODELS else {}
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": model.dataschema(),
        **event_type,
        **model.model_json_schema(by_alias=True),
    }


def render_schemas() -> dict[str, str]:
    """Each schema file's path under the target directory and its exact text."""
    return {
        model.schema_path(): json.dumps(schema_of(model), indent=2, sort_keys=True) + "\n"
        for model in SCHEMA_MODELS
    }


def export_schemas(target_dir: Path = SCHEMAS_DIR) -> list[Path]:
    """Write every schema file, remove stale ones beside them; returns the files written."""
    rendered = render_schemas()
    written: list[Path] = []
    for relative, text in sorted(rendered.items()):
        path = target_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    for version_dir in {(target_dir / relative).parent for relative in rendered}:
        for stale in version_dir.glob("*.json"):
            if stale.relative_to(target_dir).as_posix() not in rendered:
                stale.unlink()
    return written


def check_schemas(target_dir: Path = SCHEMAS_DIR) -> list[str]:
    """What differs between the models and the files on disk (empty: up to date)."""
    rendered = render_schemas()
    problems: list[str] = []
    for relative, text in sorted(rendered.items()):
        path = target_dir / relative
        if not path.exists():
            problems.append(f"missing {relative}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"outdated {relative}")
    for version_dir in sorted({(target_dir / relative).parent for relative in rendered}):
        for path in sorted(version_dir.glob("*.json")):
            relative = path.relative_to(target_dir).as_posix()
            if relative not in rendered:
                problems.append(f"stale {relative} (no model produces it)")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [arg for arg in args if arg != "--check"]
    target = Path(paths[0]) if paths else SCHEMAS_DIR
    if check:
        problems = check_schemas(target)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"schema files are out of date: run {EXPORT_COMMAND}", file=sys.stderr)
        return 1 if problems else 0
    for path in export_schemas(target):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
