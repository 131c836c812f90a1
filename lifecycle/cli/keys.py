"""`lifecycle keys ...`: the key hierarchy's operations (lifecycle.rotation, lifecycle.keyring)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from lifecycle.cli.common import cli, fail, load_settings, open_accounts, progress_to_stderr
from lifecycle.keyring import KeyringError
from lifecycle.services.keys import Keys

keys = typer.Typer(help="Key-encryption keys: status, rotation, destruction.", no_args_is_help=True)
cli.add_typer(keys, name="keys")


@keys.command("status")
def keys_status() -> None:
    """Every key version (kek, claim, signing): created, retired, destroyed, destroyed-by, and
    how many data keys each KEK version wraps now."""
    settings = load_settings()
    accounts = open_accounts(settings)
    try:
        typer.echo(json.dumps(Keys(accounts, settings).status(), indent=2))
    finally:
        accounts.close()


@keys.command("rotate")
def keys_rotate(
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Keys per transaction.")] = 500,
    signing: Annotated[
        bool, typer.Option("--signing", help="Rotate the receipt signing key instead.")
    ] = False,
) -> None:
    """Create a KEK version and re-wrap every live data key under it, online, in batches; run
    it again after an interruption and it resumes. Older versions are retired when done.
    With --signing: a new receipt signing version (older public keys stay published)."""
    settings = load_settings()
    accounts = open_accounts(settings)
    progress = progress_to_stderr("rotate (data keys)")
    try:
        keys_ = Keys(accounts, settings, batch_size=batch_size, progress=progress)
        result = {"signing_version": keys_.new_signing_version()} if signing else keys_.rotate()
    except KeyringError as error:
        fail(str(error))
    finally:
        accounts.close()
    typer.echo(json.dumps(result, indent=2))


@keys.command("destroy")
def keys_destroy() -> None:
    """Destroy every retired KEK version whose retention (LIFECYCLE_KEY_RETENTION_DAYS) has
    passed: from then on no copy of a key it wrapped (WAL archive, backup, dump) opens."""
    settings = load_settings()
    accounts = open_accounts(settings)
    try:
        destroyed = Keys(accounts, settings).destroy_due()
    except KeyringError as error:
        fail(str(error))
    finally:
        accounts.close()
    typer.echo(json.dumps({"destroyed": destroyed.versions}))
    if destroyed.master_key_still_configured:
        typer.echo(MASTER_KEY_STILL_CONFIGURED, err=True)


MASTER_KEY_STILL_CONFIGURED = (
    "lifecycle: KEK version 1 was derived from LIFECYCLE_MASTER_KEY: remove that key from the "
    "configuration and from every place it is stored; the service refuses to start while it "
    "is still configured"
)
