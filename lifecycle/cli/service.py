"""The service's process kinds: `serve`, `migrate`, `topics`, `relay`, `consume`, `erasure`,
`data-exports`, `project`, and the contract's schema files."""

from __future__ import annotations

import json
import os
import signal
import threading
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lifecycle.cli.common import (
    cli,
    fail,
    load_settings,
    open_accounts,
    run_until_signalled,
    worker_probe,
)
from lifecycle.errors import LifecycleError
from lifecycle.settings import Settings
from schemas.contract import ERASING_SERVICES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from fastapi import FastAPI

    from lifecycle.application import Accounts


# uvicorn imports this in every worker process of `serve --workers N` (N > 1).
WORKER_APP = "lifecycle.cli:worker_app"


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Server processes. Default: one per CPU core on PostgreSQL, one embedded "
            "(SQLite). Relay, consumers and erasure still run once, in one of them.",
        ),
    ] = None,
) -> None:
    """Run the HTTP API (members' routes, admin, audit)."""
    import uvicorn

    from lifecycle.api.app import with_generated_tokens
    from lifecycle.workers import run_server_processes

    try:
        settings = with_generated_tokens(load_settings())
    except LifecycleError as error:
        fail(f"invalid configuration: {error.detail}")
    count = workers or (1 if settings.is_embedded else os.cpu_count() or 1)
    if count > 1 and ":memory:" in settings.database_url:
        fail("--workers above 1 needs a database the processes share, not an in-memory one")
    accounts = open_accounts(settings)  # fails here, in one line, if the database is unusable
    app = served_app(settings, accounts)  # and the erasure tables are made once, here
    options: dict[str, Any] = {"host": host, "port": port, "log_config": None, "access_log": False}
    if count == 1:
        uvicorn.run(app, **options)
        return
    accounts.close()
    # Each worker builds its own app from the same settings, generated tokens included.
    os.environ["LIFECYCLE_API_TOKENS"] = json.dumps(settings.api_tokens)
    run_server_processes(WORKER_APP, count, **options)


def worker_app() -> FastAPI:
    """uvicorn's app factory for `serve --workers N`: one app per worker, from Settings."""
    from lifecycle.workers import log_with_pid

    settings = load_settings()
    log_with_pid()
    return served_app(settings, open_accounts(settings))


def served_app(settings: Settings, accounts: Accounts) -> FastAPI:
    """The API as `serve` runs it: the erasure tables made now (not on a first request);
    while it serves, relay, consumers and erasure run in whichever process holds the
    workers lock (Kafka off; on, each is a process of its own). Closes `accounts` at the end."""
    from contextlib import asynccontextmanager

    from starlette.concurrency import run_in_threadpool

    from lifecycle.api.app import create_app
    from lifecycle.bootstrap import build_erasure
    from lifecycle.workers import ElectedWorkers

    try:
        erasure = build_erasure(accounts, settings)
    except LifecycleError as error:
        accounts.close()
        fail(error.detail)
    app = create_app(settings, accounts, erasure)  # the erasure process the workers run
    serving = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        elected = await run_in_threadpool(ElectedWorkers(settings, accounts, erasure).start)
        app.state.workers = elected  # readiness and metrics say when one of them waits
        try:
            async with serving(app):
                yield
        finally:
            await run_in_threadpool(elected.stop)
            await run_in_threadpool(accounts.close)

    app.router.lifespan_context = lifespan
    return app


@cli.command()
def migrate(
    service: Annotated[
        str | None,
        typer.Option(
            help=f"Migrate this reference service's store instead ({', '.join(ERASING_SERVICES)})."
        ),
    ] = None,
    schema: Annotated[
        str | None, typer.Option(help="The service store's PostgreSQL schema (default: its name).")
    ] = None,
) -> None:
    """Apply the schema migrations the database lacks (idempotent), and say which.

    Without --service: the lifecycle database, and with Kafka off also the three reference
    services' stores (`serve` runs them in-process then)."""
    from lifecycle.bootstrap import migrate_lifecycle, migrate_service
    from lifecycle.migrator import Applied

    settings = load_settings()

    def report(applied: Applied) -> None:
        typer.echo(f"applied {applied.component} {applied.version}: {applied.name}")

    targets: list[tuple[str, Callable[[], list[Applied]]]] = []
    if service is not None:
        targets.append(
            (f"{service} store", lambda: migrate_service(settings, service, schema, report))
        )
    else:
        targets.append(("lifecycle database", lambda: migrate_lifecycle(settings, report)))
        if not settings.kafka_bootstrap:
            targets += [
                (f"{name} store", partial(migrate_service, settings, name, None, report))
                for name in ERASING_SERVICES
            ]
    for what, run in targets:
        try:
            applied = run()
        except LifecycleError as error:
            fail(error.detail)
        except Exception as error:
            fail(f"{what}: migration failed ({type(error).__name__}): {_first_line(error)}")
        done = f"{len(applied)} migration(s) applied" if applied else "nothing to apply"
        typer.echo(f"{what}: up to date ({done})")


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@cli.command()
def topics() -> None:
    """Create the Kafka topics with their partitions and configs (idempotent)."""
    from lifecycle.kafka.admin import ensure_topics

    settings = load_settings()
    if not settings.kafka_bootstrap:
        fail("`topics` needs LIFECYCLE_KAFKA_BOOTSTRAP")
    try:
        result = ensure_topics(
            settings.kafka_bootstrap,
            settings.topics,
            settings.topic_settings,
            bootstrap_timeout_ms=round(settings.kafka_bootstrap_timeout_s * 1000),
            security=settings.kafka_security,
        )
    except Exception as error:
        fail(f"Kafka unusable ({type(error).__name__}) at {settings.kafka_bootstrap}")
    typer.echo(f"created: {len(result.created)}, existing: {len(result.existing)}")


@cli.command()
def acls(
    apply: Annotated[
        bool, typer.Option(help="Create them on the broker (as a principal that may alter ACLs).")
    ] = False,
) -> None:
    """The Kafka ACL plan: who writes and reads which topic (printed; `--apply` creates it)."""
    from lifecycle.kafka.acls import acl_plan, apply_acls

    settings = load_settings()
    plan = acl_plan(settings.topics, settings.kafka_principals)
    if not apply:
        for grant in plan:
            typer.echo(str(grant))
        return
    if not settings.kafka_bootstrap:
        fail("`acls --apply` needs LIFECYCLE_KAFKA_BOOTSTRAP")
    try:
        created = apply_acls(settings.kafka_bootstrap, plan, settings.kafka_security)
    except Exception as error:
        fail(f"Kafka refused the ACLs ({type(error).__name__}) at {settings.kafka_bootstrap}")
    typer.echo(f"ACLs created or kept: {created}")


@cli.command()
def relay() -> None:
    """Publish the notification log to Kafka, in order, one active relay at a time."""
    from lifecycle.workers import run_relay

    settings = load_settings()
    with worker_probe(settings) as probe:
        run_until_signalled(lambda stop: run_relay(settings, stop, probe=probe))


@cli.command()
def consume(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(ERASING_SERVICES)}.")],
) -> None:
    """Run one downstream reference service's erasure consumer."""
    from lifecycle.workers import run_consumer

    settings = load_settings()
    with worker_probe(settings) as probe:
        run_until_signalled(lambda stop: run_consumer(service, settings, stop, probe=probe))


@cli.command()
def erasure() -> None:
    """Turn erasure confirmations into Purged once every erasing service confirmed."""
    from lifecycle.workers import run_erasure

    settings = load_settings()
    with worker_probe(settings) as probe:
        run_until_signalled(lambda stop: run_erasure(settings, stop, probe=probe))


@cli.command("data-exports")
def data_exports() -> None:
    """Take the services' sealed export parts in; destroy expired exports' keys."""
    from lifecycle.workers import run_data_exports

    settings = load_settings()
    with worker_probe(settings) as probe:
        run_until_signalled(lambda stop: run_data_exports(settings, stop, probe=probe))


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
    from lifecycle.services.read_models import ReadModels
    from projections.runner import ProgressPrinter, run_all

    settings = load_settings()
    accounts = open_accounts(settings)
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    printer = ProgressPrinter(lambda line: typer.echo(line, err=True))
    read_models = ReadModels(accounts)
    chosen = names or ()
    try:
        if rebuild:
            for done in read_models.rebuild(
                chosen, batch_size=batch_size, progress=printer, stop=stop
            ):
                typer.echo(f"rebuilt {done.name}: {done.events} events, {done.seconds:.1f}s")
            return
        if once:
            read_models.catch_up(chosen, batch_size=batch_size, progress=printer, stop=stop)
            return
        models = read_models.opened(chosen)
        with worker_probe(settings) as probe:
            run_all(accounts, models, stop, probe=probe, batch_size=batch_size)
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
