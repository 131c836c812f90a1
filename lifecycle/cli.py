"""`lifecycle` command line: thin callers of bootstrap, one subcommand per process kind."""

from __future__ import annotations

import signal
import sys
import threading
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from lifecycle.errors import LifecycleError
from lifecycle.logs import configure_logging
from lifecycle.settings import Settings
from schemas.contract import ERASING_SERVICES

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
    return settings


def open_accounts(settings: Settings) -> Accounts:
    from lifecycle.bootstrap import build_accounts

    try:
        return build_accounts(settings)
    except LifecycleError as error:
        fail(error.detail)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
) -> None:
    """Run the HTTP API (members' routes, admin, audit)."""
    import uvicorn

    from lifecycle.api.app import create_app, with_generated_tokens
    from lifecycle.bootstrap import build_erasure
    from lifecycle.workers import start_workers

    settings = with_generated_tokens(load_settings())
    accounts = open_accounts(settings)
    try:
        erasure = build_erasure(accounts, settings)  # its tables now, not on a first request
    except LifecycleError as error:
        accounts.close()
        fail(error.detail)
    # Kafka off: relay, consumers and erasure run here in threads; on: each is its own process.
    workers = start_workers(settings, accounts, erasure=erasure)
    try:
        app = create_app(settings, accounts, erasure)
        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
    finally:
        workers.stop()
        accounts.close()


def run_until_signalled(work: Callable[[threading.Event], None]) -> None:
    """Run a long-lived worker until SIGTERM or SIGINT; start-up failures are one line."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        work(stop)
    except LifecycleError as error:
        fail(error.detail)


@cli.command()
def topics() -> None:
    """Create the Kafka topics with their partitions and configs (idempotent)."""
    from lifecycle.kafka.admin import ensure_topics

    settings = load_settings()
    if not settings.kafka_bootstrap:
        fail("`topics` needs LIFECYCLE_KAFKA_BOOTSTRAP")
    try:
        result = ensure_topics(settings.kafka_bootstrap, settings.topics)
    except Exception as error:
        fail(f"Kafka unusable ({type(error).__name__}) at {settings.kafka_bootstrap}")
    typer.echo(f"created: {len(result.created)}, existing: {len(result.existing)}")


@cli.command()
def relay() -> None:
    """Publish the notification log to Kafka, in order, one active relay at a time."""
    from lifecycle.workers import run_relay

    settings = load_settings()
    run_until_signalled(lambda stop: run_relay(settings, stop))


@cli.command()
def consume(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(ERASING_SERVICES)}.")],
) -> None:
    """Run one downstream reference service's erasure consumer."""
    from lifecycle.workers import run_consumer

    settings = load_settings()
    run_until_signalled(lambda stop: run_consumer(service, settings, stop))


@cli.command()
def erasure() -> None:
    """Turn erasure confirmations into Purged once every erasing service confirmed."""
    from lifecycle.workers import run_erasure

    settings = load_settings()
    run_until_signalled(lambda stop: run_erasure(settings, stop))


audit = typer.Typer(help="Auditor tools over the event log.", no_args_is_help=True)
cli.add_typer(audit, name="audit")


@audit.command()
def reshred(
    from_kafka: Annotated[
        bool, typer.Option(help="Also take purged ids from the lifecycle topic (if configured).")
    ] = True,
) -> None:
    """After a backup restore: every account known purged is brought back to Purged (whatever
    state the backup caught it in) and loses its key."""
    from lifecycle.application import KnownErasure
    from lifecycle.audit.reshred import known_erasures_on_topic
    from lifecycle.bootstrap import build_erasure, receipts_of

    settings = load_settings()
    accounts = open_accounts(settings)
    ledger: dict[Any, KnownErasure] = {}
    try:
        if from_kafka and settings.kafka_bootstrap:
            ledger = known_erasures_on_topic(settings.kafka_bootstrap, settings.topics.lifecycle)
        result = accounts.reshred(ledger)
        # A receipt the restore lost is signed again, for the purge as now recorded.
        receipts = receipts_of(build_erasure(accounts, settings))
        issued = sum(receipts.get_or_issue(account_id)[1] for account_id in sorted(ledger))
    except LifecycleError as error:
        fail(error.detail)
    finally:
        accounts.close()
    typer.echo(
        f"purges recorded again: {result['purges_recorded_again']}, "
        f"keys destroyed again: {result['keys_destroyed']}, receipts issued again: {issued}"
    )


@audit.command("verify-receipt")
def verify_receipt(
    receipt: Annotated[
        str, typer.Argument(help="A receipt file (JSON), or a receipt id or account id.")
    ],
) -> None:
    """Check an erasure receipt: its signature, and that the hash chain still holds the purge."""
    import json
    from pathlib import Path
    from uuid import UUID

    from lifecycle.audit.receipt import verify_receipt as check
    from lifecycle.bootstrap import build_erasure, receipts_of
    from schemas.contract import erasure_receipt_id

    settings = load_settings()
    document: dict[str, Any] | None = None
    wanted: UUID | None = None
    path = Path(receipt)
    if path.is_file():
        try:
            document = dict(json.loads(path.read_text()))
        except (ValueError, TypeError):
            fail(f"{receipt} is not a JSON receipt")
    else:
        try:
            wanted = UUID(receipt)
        except ValueError:
            fail("give a receipt file, a receipt id or an account id")
    accounts = open_accounts(settings)
    try:
        receipts = receipts_of(build_erasure(accounts, settings))
        if wanted is not None:
            document = receipts.get(wanted) or receipts.get(erasure_receipt_id(wanted))
            if document is None:
                fail(f"no erasure receipt {wanted}")
        assert document is not None
        report = check(document, receipts)
    finally:
        accounts.close()
    typer.echo(json.dumps(report, indent=2))
    if not report["ok"]:
        typer.echo(f"lifecycle: receipt does not verify: {report['problems'][0]}", err=True)
    raise typer.Exit(code=0 if report["ok"] else 1)


@audit.command("erasure-proof")
def erasure_proof(
    account_id: Annotated[str, typer.Argument(help="The purged account's id.")],
    digest: Annotated[
        list[str] | None,
        typer.Option(help="SHA-256 hex of one former value (repeatable); never the value."),
    ] = None,
    digests_file: Annotated[
        typer.FileText | None, typer.Option(help="A file of SHA-256 hex digests, one a line.")
    ] = None,
) -> None:
    """Prove erasure: confirmations, key destroyed, and a search for the former values."""
    import json
    from uuid import UUID

    from lifecycle.audit.proof import database_dump, topic_dump
    from lifecycle.audit.proof import erasure_proof as prove
    from lifecycle.bootstrap import build_erasure

    settings = load_settings()
    digests = {d.strip().lower() for d in (digest or []) if d.strip()}
    if digests_file is not None:
        digests |= {line.strip().lower() for line in digests_file if line.strip()}
    if not digests or any(len(d) != 64 for d in digests):
        fail("give the former values as SHA-256 hex digests (--digest or --digests-file)")
    try:
        subject = UUID(account_id)
    except ValueError:
        fail("account id must be a UUID")
    accounts = open_accounts(settings)
    erasure = build_erasure(accounts, settings)
    places: dict[str, Any] = {
        "database": database_dump(accounts, None if settings.is_embedded else settings.database_url)
    }
    if settings.kafka_bootstrap:
        places["kafka"] = topic_dump(settings.kafka_bootstrap, settings.topics.all())
    try:
        report = prove(accounts, erasure, subject, digests, places)
    except LifecycleError as error:
        fail(error.detail)
    typer.echo(json.dumps(report, default=str, indent=2))
    raise typer.Exit(code=0 if report["erased"] else 1)


def _progress_to_stderr(what: str, interval_s: float = 2.0) -> Callable[[int, int], None]:
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


@audit.command("export")
def audit_export(
    since: Annotated[
        str | None,
        typer.Option("--from", help="First notification id, or ISO date/time (JST if no offset)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--to", help="Last notification id (inclusive), or ISO time (exclusive)."),
    ] = None,
    output: Annotated[
        typer.FileTextWrite | None, typer.Option("--output", "-o", help="File (default stdout).")
    ] = None,
) -> None:
    """Stream the whole event log as JSON Lines, as stored (personal fields stay sealed)."""
    from lifecycle.audit.export import export_log, parse_bound

    try:
        bounds = [None if text is None else parse_bound(text) for text in (since, until)]
    except ValueError as error:
        fail(str(error))
    accounts = open_accounts(load_settings())
    try:
        written = export_log(
            accounts,
            output or sys.stdout,
            since=bounds[0],
            until=bounds[1],
            progress=_progress_to_stderr("export (notifications)"),
        )
    finally:
        accounts.close()
    typer.echo(f"events exported: {written}", err=True)


@audit.command("replay")
def audit_replay() -> None:
    """Rebuild every aggregate from the log and check every rule; exit 1 on any violation."""
    import json

    from lifecycle.audit.replay import replay

    accounts = open_accounts(load_settings())
    try:
        report = replay(accounts, progress=_progress_to_stderr("replay (events)"))
    finally:
        accounts.close()
    typer.echo(json.dumps(report.as_dict(), indent=2))
    raise typer.Exit(code=0 if report.ok else 1)


@audit.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain over the stored events; name the first that does not match."""
    import json

    from lifecycle.audit.verify import verify
    from projections.hashchain import HashChain

    accounts = open_accounts(load_settings())
    try:
        chain = HashChain(accounts.database)
        chain.create()
        progress = _progress_to_stderr("verify (events)")
        total = accounts.recorder.max_notification_id() or 0
        result = verify(chain, accounts.recorder, progress=lambda done: progress(done, total))
    finally:
        accounts.close()
    typer.echo(json.dumps(result.as_dict(), indent=2))
    if not result.ok:
        typer.echo(f"lifecycle: hash chain broken: {result.first[0].describe()}", err=True)
    raise typer.Exit(code=0 if result.ok else 1)


@cli.command()
def project(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Projections (default: all): account_directory, erasure_status, "
            "withdrawal_reasons, gift_claims, scouts_per_company, hash_chain."
        ),
    ] = None,
    rebuild: Annotated[
        bool, typer.Option(help="Drop and replay them from position 0 (shadow tables), then exit.")
    ] = False,
    once: Annotated[bool, typer.Option(help="Catch up to the head of the log, then exit.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000)] = 500,
) -> None:
    """Run read models: catch up from the notification log, then follow it live."""
    import signal
    import threading

    from projections.registry import (
        UnknownReadModelError,
        open_read_models,
        read_model_classes,
    )
    from projections.runner import ProgressPrinter, Projector, run_all
    from projections.runner import rebuild as rebuild_model

    try:
        classes = read_model_classes(names or ())
    except UnknownReadModelError as error:
        fail(str(error))
    accounts = open_accounts(load_settings())
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    printer = ProgressPrinter(lambda line: typer.echo(line, err=True))
    try:
        if rebuild:
            for model_class in classes:
                result = rebuild_model(
                    accounts, model_class, batch_size=batch_size, progress=printer, stop=stop
                )
                typer.echo(f"rebuilt {result.name}: {result.events} events, {result.seconds:.1f}s")
            return
        models = open_read_models(accounts.database, [cls.name for cls in classes])
        if once:
            for model in models:
                Projector(accounts, model, batch_size=batch_size, progress=printer).catch_up(stop)
            return
        run_all(accounts, models, stop, batch_size=batch_size)
    except LifecycleError as error:
        fail(error.detail)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        accounts.close()


schemas_cli = typer.Typer(help="The Kafka contract's JSON Schema files.", no_args_is_help=True)
cli.add_typer(schemas_cli, name="schemas")


@schemas_cli.command("export")
def export_schemas(
    check: Annotated[bool, typer.Option(help="Only report files that are out of date.")] = False,
) -> None:
    """Write schemas/v1/*.json from the payload models (or check they are current)."""
    from schemas.export import check_schemas
    from schemas.export import export_schemas as write_schemas

    if check:
        stale = check_schemas()
        for problem in stale:
            typer.echo(problem)
        raise typer.Exit(code=1 if stale else 0)
    for path in write_schemas():
        typer.echo(str(path))


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
