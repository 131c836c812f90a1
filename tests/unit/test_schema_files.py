"""The committed JSON Schema files match the pydantic models they are generated from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.contract import MODELS, SCHEMA_MODELS
from schemas.export import (
    EXPORT_COMMAND,
    SCHEMAS_DIR,
    check_schemas,
    export_schemas,
    main,
    render_schemas,
)


def test_committed_schema_files_are_up_to_date() -> None:
    problems = check_schemas(SCHEMAS_DIR)
    if problems:
        pytest.fail(
            "schema files differ from the models in schemas/contract.py:\n  "
            + "\n  ".join(problems)
            + f"\nRegenerate them with `{EXPORT_COMMAND}` and commit schemas/v1/."
        )


def test_one_file_per_model_with_its_id_and_type() -> None:
    rendered = render_schemas()
    assert sorted(rendered) == sorted(model.schema_path() for model in SCHEMA_MODELS)
    for model in SCHEMA_MODELS:
        if model not in MODELS:  # a document (the data export) is no CloudEvent
            assert "x-cloudevents-type" not in json.loads(rendered[model.schema_path()])
            continue
        schema = json.loads(rendered[model.schema_path()])
        assert schema["$id"] == model.dataschema()
        assert schema["x-cloudevents-type"] == model.ce_type()
        assert schema["additionalProperties"] is False
        assert "account_id" in schema["required"]


def test_export_is_deterministic_and_removes_stale_files(tmp_path: Path) -> None:
    stale = tmp_path / "v1" / "account.renamed.v1.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")
    first = {path: path.read_bytes() for path in export_schemas(tmp_path)}
    again = {path: path.read_bytes() for path in export_schemas(tmp_path)}
    assert first == again
    assert not stale.exists()
    assert all(content.endswith(b"}\n") for content in first.values())
    on_disk = {path.name for version in tmp_path.iterdir() for path in version.iterdir()}
    assert {path.name for path in first} == on_disk


def test_check_reports_what_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export_schemas(tmp_path)
    (tmp_path / "v1" / "account.purged.v1.json").write_text("{}\n")
    (tmp_path / "v1" / "account.registered.v1.json").unlink()
    (tmp_path / "v1" / "account.extra.v1.json").write_text("{}\n")
    assert check_schemas(tmp_path) == [
        "outdated v1/account.purged.v1.json",
        "missing v1/account.registered.v1.json",
        "stale v1/account.extra.v1.json (no model produces it)",
    ]
    assert main([str(tmp_path), "--check"]) == 1
    assert "run python -m schemas.export" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 0
    assert main([str(tmp_path), "--check"]) == 0
