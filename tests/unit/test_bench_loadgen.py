"""The HTTP case's load generator: wrk or a clear stop, never a silent fallback."""

from __future__ import annotations

import sys
from pathlib import Path
from uuid import uuid4

import pytest

# `bench` is not an installed package: it runs as `python -m bench` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import case_http, loadgen


def test_without_wrk_the_http_case_stops_and_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loadgen.shutil, "which", lambda _: None)

    with pytest.raises(RuntimeError, match=r"wrk is not installed.*apt-get install -y wrk"):
        loadgen.require_wrk()


def test_the_bulk_script_scouts_distinct_members_with_new_scout_ids() -> None:
    ids = [uuid4() for _ in range(3)]

    script = loadgen.bulk_scouts_script("token", ids, 2, "run1")

    assert "Bearer token" in script
    assert all(f'"{account_id}"' in script for account_id in ids)
    assert "local per = 2" in script
    assert "@" not in script.replace("@example.com", "")


def test_bulk_targets_and_a_port_below_the_ephemeral_range() -> None:
    assert case_http.BULK_TARGET.value == 8000.0  # issue 25
    assert case_http.BULK_RATIO_TARGET.value == 0.3
    assert 1 <= case_http.free_port() < 32768
