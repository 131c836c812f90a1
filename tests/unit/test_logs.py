"""Logging keeps working when the stderr it was configured with is gone."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from lifecycle.logs import configure_logging, get_logger


def test_logs_follow_stderr_after_the_stream_seen_at_configuration_is_closed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("json")
    get_logger("test").info("before", account_id="a1")
    first.close()  # as an in-process CLI run or a test runner does with its stream
    monkeypatch.undo()
    try:
        get_logger("test").info("after", account_id="a2")
        assert '"event": "after"' in capsys.readouterr().err
    finally:
        structlog.reset_defaults()
