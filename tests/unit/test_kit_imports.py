"""The consumer kit another team adopts loads none of the service's core (issue 10).

What the kit must not load is what import-linter's layers contract puts above it (pyproject.toml,
the one source): checked in a fresh interpreter, since this one has imported everything already,
and at run time, which also catches an import made by name (`importlib`), which lint-imports
cannot see.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

from support import ROOT, import_layers


def above_the_kit() -> list[str]:
    layers = import_layers()
    kit = next(index for index, layer in enumerate(layers) if "consumers" in layer)
    return [name for layer in layers[:kit] for name in layer]


# Every module of the kit's package (by path: `consumers` here is also a test tier's folder).
KIT = sorted(f"consumers.{found.name}" for found in pkgutil.iter_modules([str(ROOT / "consumers")]))

PROGRAM = f"""
import importlib, json, sys
for name in {KIT!r}:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def test_the_layers_put_the_core_and_the_read_models_above_the_kit() -> None:
    above = above_the_kit()
    for core in ("lifecycle.domain", "lifecycle.application", "lifecycle.errors", "projections"):
        assert core in above


def test_the_kit_loads_no_module_above_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(done.stdout)
    forbidden = above_the_kit()
    dragged_in = sorted(
        name for name in loaded for core in forbidden if name == core or name.startswith(f"{core}.")
    )
    assert dragged_in == []
