"""structlog, configured once: JSON lines for services, readable console in a terminal.

Log events carry ids, codes and counts only; never an e-mail, a name, a phone number
or text a member wrote.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from lifecycle import tracing


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time, not the one seen at configuration
    (a test runner or an in-process CLI call swaps it and closes the old one)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(log_format: str = "auto", level: str = "INFO") -> None:
    use_console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        # The current span's trace_id and span_id, while tracing is on (one flag check when off).
        tracing.add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=True)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # One write per line (message and newline together): processes sharing a stderr pipe
        # (`serve --workers N`) never interleave inside a line.
        logger_factory=structlog.WriteLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        # Not cached: a logger bound once would ignore any later configuration (and tests'
        # structlog.testing.capture_logs); resolving it per call costs microseconds.
        cache_logger_on_first_use=False,
    )
    # Route the standard library's records (uvicorn, kafka) through the same renderer.
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    # Libraries' own records pass from WARNING up only: their info lines are not ours to vet
    # for personal data (an SMTP server library logs each recipient's address at INFO).
    # uvicorn's server lines (start, stop) are known and kept at the chosen level.
    root.setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    for known in ("uvicorn", "uvicorn.error"):
        logging.getLogger(known).setLevel(level.upper())
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
