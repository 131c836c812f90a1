"""What every `lifecycle` command shares: the Typer app, settings, one-line failures, signals."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import typer
from pydantic import ValidationError

from lifecycle import tracing
from lifecycle.errors import LifecycleError
from lifecycle.logs import configure_logging
from lifecycle.probe import Probe
from lifecycle.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from lifecycle.application import Accounts

cli = typer.Typer(
    help="Owns each member account's life, from registration to erasure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str) -> NoReturn:
    """Bad configuration or an unreachable dependency: one clear line, no traceback."""
    typer.echo(f"lifecycle: {message}", err=True)
    raise typer.Exit(code=2)


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"LIFECYCLE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in error.errors()
        )
        fail(f"invalid configuration: {problems}")
    except LifecycleError as error:
        fail(f"invalid configuration: {error.detail}")
    configure_logging(settings.log_format, settings.log_level)
    try:
        tracing.configure_from_environment()  # only the standard OTEL_* variables; off unless set
    except ValueError as error:
        fail(f"invalid configuration: {error}")
    return settings


def open_accounts(settings: Settings) -> Accounts:
    from lifecycle.bootstrap import build_accounts

    try:
        return build_accounts(settings)
    except LifecycleError as error:
        fail(error.detail)


def run_until_signalled(work: Callable[[threading.Event], None]) -> None:
    """Run a long-lived worker until SIGTERM or SIGINT; start-up failures are one line."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        work(stop)
    except LifecycleError as error:
        fail(error.detail)


@contextmanager
def worker_probe(settings: Settings) -> Iterator[Probe | None]:
    """The worker's /healthz and /readyz when LIFECYCLE_PROBE_PORT is set (`lifecycle.probe`)."""
    if settings.probe_port is None:
        yield None
        return
    try:
        probe = Probe(settings.probe_host, settings.probe_port)
    except OSError as error:
        fail(f"probe port {settings.probe_port} unusable ({error.strerror or 'in use'})")
    try:
        yield probe
    finally:
        probe.close()


def progress_to_stderr(what: str, interval_s: float = 2.0) -> Callable[[int, int], None]:
    """A `(done, total)` callback printing one progress line to stderr every `interval_s`."""
    import time

    started = last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done < total and now - last < interval_s:
            return
        last = now
        rate = done / max(now - started, 1e-9)
        eta = f"{(total - done) / rate:.0f}s" if rate and done < total else "-"
        typer.echo(f"{what}: {done}/{total} ({rate:,.0f}/s, ETA {eta})", err=True)

    return report
