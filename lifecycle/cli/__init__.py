"""`lifecycle` command line: thin callers of bootstrap, one subcommand per process kind.

`common` holds the Typer app and what every command shares; `service` the service's process
kinds; `audit` the auditor's tools; `keys` the key hierarchy's
operations. Importing them registers their commands.
"""

from __future__ import annotations

import sys

from lifecycle.cli import audit, keys, service
from lifecycle.cli.common import cli
from lifecycle.cli.service import worker_app

__all__ = ["audit", "cli", "keys", "main", "service", "worker_app"]


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
