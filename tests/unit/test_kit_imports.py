"""The consumer kit another team adopts loads none of the service's core (issue 10).

Checked in a fresh interpreter: in this one the test session has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

KIT = ("consumers.kit", "consumers.store", "consumers.scout", "consumers.chat", "consumers.mail")

CORE = (
    "lifecycle.errors",
    "lifecycle.domain",
    "lifecycle.application",
    "lifecycle.crypto",
    "lifecycle.group_commit",
    "lifecycle.erasure",
    "lifecycle.settings",
    "lifecycle.bootstrap",
    "lifecycle.relay",
    "lifecycle.api",
    "lifecycle.workers",
    "lifecycle.audit",
    "projections",
)

PROGRAM = f"""
import importlib, json, sys
for name in {KIT!r}:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def test_the_kit_loads_no_core_module() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(done.stdout)
    dragged_in = sorted(
        name for name in loaded for core in CORE if name == core or name.startswith(f"{core}.")
    )
    assert dragged_in == []
