"""Logging keeps working when the CLI configured it in-process (the suite resets it per test)."""

from __future__ import annotations

import io
import logging
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
    get_logger("test").info("after", account_id="a2")
    assert '"event": "after"' in capsys.readouterr().err


def test_log_capture_still_works_after_the_cli_configured_logging() -> None:
    configure_logging("json")
    logger = get_logger("test")
    logger.info("warm-up")  # a cached logger would now be bound for good
    with structlog.testing.capture_logs() as captured:
        logger.info("seen", account_id="a3")
    assert [entry["event"] for entry in captured] == ["seen"]


def test_libraries_info_records_are_not_written_their_warnings_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A library's info line may carry personal data the service never vetted."""
    configure_logging("json", "INFO")
    logging.getLogger("mail.log").info("recip: hanako@example.jp")
    logging.getLogger("mail.log").warning("connection lost")
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    err = capsys.readouterr().err
    assert "hanako@example.jp" not in err
    assert "connection lost" in err
    assert "Application startup complete." in err
