"""`lifecycle` command line: thin callers of bootstrap and of the services, one subcommand
per process kind or use case.

`common` holds the Typer app and what every command shares; `service` the service's process
kinds; `audit` the auditor's tools and `keys` the key hierarchy's operations, both adapters over
`lifecycle.services`. Importing them registers their commands.
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
