"""`lifecycle audit ...`: the auditor's tools over the event log, callers of lifecycle.audit."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lifecycle.cli.common import (
    cli,
    fail,
    load_settings,
    open_accounts,
    progress_to_stderr,
)
from lifecycle.errors import LifecycleError
from lifecycle.settings import Settings
from schemas.contract import ERASING_SERVICES

if TYPE_CHECKING:
    from lifecycle.application import Accounts


audit = typer.Typer(help="Auditor tools over the event log.", no_args_is_help=True)
cli.add_typer(audit, name="audit")


@audit.command()
def reshred(
    receipts: Annotated[
        list[Path] | None,
        typer.Option(
            "--receipts",
            help="Signed erasure receipts kept outside the database: a file (JSON, a JSON "
            "array or JSON Lines) or a directory of them; repeatable.",
        ),
    ] = None,
) -> None:
    """After a backup restore: every account known purged (by a receipt this service signed,
    or by the destroyed-keys list; never by a topic record) is brought back to Purged,
    whatever state the backup caught it in, and loses its key."""
    from lifecycle.audit.receipt import ReceiptSigner
    from lifecycle.audit.reshred import evidence
    from lifecycle.bootstrap import build_erasure, receipts_of

    settings = load_settings()
    accounts = open_accounts(settings)
    try:
        found = evidence(accounts, receipts or [], ReceiptSigner.of(accounts))
        result = accounts.reshred(found.known)
        # A receipt the restore lost is signed again, for the purge as now recorded.
        signed = receipts_of(build_erasure(accounts, settings))
        issued = sum(signed.get_or_issue(account_id)[1] for account_id in sorted(found.known))
    except LifecycleError as error:
        fail(error.detail)
    finally:
        accounts.close()
    typer.echo(
        f"purges recorded again: {result['purges_recorded_again']}, "
        f"keys destroyed again: {result['keys_destroyed']}, receipts issued again: {issued}, "
        f"receipts refused: {found.refused}"
    )
    if found.refused:
        raise typer.Exit(1)


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
    service_schema: Annotated[
        list[str] | None,
        typer.Option(
            help="SERVICE=SCHEMA where a reference service keeps its tables (repeatable); "
            "by default each at the schema named after it, when it exists."
        ),
    ] = None,
) -> None:
    """Prove erasure: walk the registry of resting places, search each, check each."""
    import json
    from uuid import UUID

    from lifecycle.audit.proof import Stores
    from lifecycle.audit.proof import erasure_proof as prove
    from lifecycle.bootstrap import erasure_status_query

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
    schemas = dict.fromkeys(ERASING_SERVICES, "")
    for item in service_schema or []:
        name, _, schema = item.partition("=")
        if name not in schemas or not schema:
            fail(f"--service-schema takes SERVICE=SCHEMA, SERVICE one of {', '.join(schemas)}")
        schemas[name] = schema
    accounts = open_accounts(settings)
    erasure = erasure_status_query(accounts, settings)
    databases = {"lifecycle": accounts.database, **_service_stores(settings, accounts, schemas)}
    stores = Stores(databases, settings.topics, settings.kafka_bootstrap, settings.kafka_security)
    try:
        report = prove(accounts, erasure, subject, digests, stores)
    except LifecycleError as error:
        fail(error.detail)
    finally:
        for name, database in databases.items():
            if name != "lifecycle":
                database.close()
    typer.echo(json.dumps(report, default=str, indent=2))
    raise typer.Exit(code=0 if report["erased"] else 1)


def _service_stores(
    settings: Settings, accounts: Accounts, schemas: dict[str, str]
) -> dict[str, Any]:
    """The reference services' stores that exist (none is created by looking)."""
    from pathlib import Path

    from lifecycle.bootstrap import service_database

    found = {}
    for name, schema in schemas.items():
        if settings.is_embedded:
            lifecycle_file = Path(settings.database_url.removeprefix("sqlite:///"))
            exists = (lifecycle_file.parent / f"{name}.sqlite3").exists()
        else:
            with accounts.database.transaction(commit=False) as cursor:
                exists = bool(
                    cursor.execute(
                        "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
                        (schema or name,),
                    ).fetchone()
                )
        if exists:
            found[name] = service_database(settings, name, schema or None)
    return found


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
            progress=progress_to_stderr("export (notifications)"),
        )
    finally:
        accounts.close()
    typer.echo(f"events exported: {written}", err=True)


@audit.command("replay")
def audit_replay() -> None:
    """Rebuild every aggregate from the log and check every rule; exit 1 on any violation."""

    from lifecycle.audit.replay import replay

    accounts = open_accounts(load_settings())
    try:
        report = replay(accounts, progress=progress_to_stderr("replay (events)"))
    finally:
        accounts.close()
    typer.echo(json.dumps(report.as_dict(), indent=2))
    raise typer.Exit(code=0 if report.ok else 1)


@audit.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain over the stored events; name the first that does not match."""

    from lifecycle.audit.verify import verify
    from projections.hashchain import HashChain

    accounts = open_accounts(load_settings())
    try:
        chain = HashChain(accounts.database)
        chain.create()
        progress = progress_to_stderr("verify (events)")
        total = accounts.recorder.max_notification_id() or 0
        result = verify(chain, accounts.recorder, progress=lambda done: progress(done, total))
    finally:
        accounts.close()
    typer.echo(json.dumps(result.as_dict(), indent=2))
    if not result.ok:
        typer.echo(f"lifecycle: hash chain broken: {result.first[0].describe()}", err=True)
    raise typer.Exit(code=0 if result.ok else 1)
