"""Round trips to PostgreSQL, counted at the client from libpq's own protocol trace.

Every connection a pool hands out is traced to a file of its own (libpq writes one line per
protocol message, `F` for what the client sent, `B` for what the server answered). A round
trip is one turn of the conversation: the client sent something and then read the answer, so
each run of `F` lines followed by a `B` line is one. Counting turns (not Sync messages or
statements) is what the network and a sleeping backend charge for. A turn that only prepares
a statement (Parse, Sync: once per statement and connection) is not counted.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from psycopg import pq
from psycopg_pool import ConnectionPool


class WireTrace:
    """Traces every connection `pool` hands out while active; `turns()` counts round trips."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.pool = pool
        self._dir = tempfile.TemporaryDirectory(prefix="wire-trace-")
        # id(pgconn) -> (pgconn, fd its trace is written to, the file's path)
        self._files: dict[int, tuple[Any, int, Path]] = {}
        self._check: Callable[[Any], None] | None = None
        self._handed_out: set[int] = set()  # connections that passed the pool's check

    def _trace(self, conn: Any) -> None:
        key = id(conn.pgconn)
        if key not in self._files:
            path = Path(self._dir.name) / f"conn-{len(self._files)}.trace"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            conn.pgconn.trace(fd)
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            self._files[key] = (conn.pgconn, fd, path)

    def start(self) -> None:
        """Trace from now on: connections are traced as the pool hands them out (its check
        runs at every hand-out, before the caller sends anything)."""
        check = self._check = self.pool._check

        def tracing_check(conn: Any) -> None:
            self._trace(conn)
            if check is not None:
                check(conn)
            self._handed_out.add(id(conn.pgconn))

        self.pool._check = tracing_check

    def stop(self) -> None:
        """Stop tracing; libpq flushes each trace as it lets go of it."""
        self.pool._check = self._check
        for pgconn, fd, _ in self._files.values():
            pgconn.untrace()
            os.close(fd)

    def messages(self, *, handed_out: bool = False) -> list[list[tuple[str, str]]]:
        """Per connection (only those that passed the pool's check, if `handed_out`): the
        direction and type of each message traced (after `stop`)."""
        found = []
        for key, (_, _, path) in self._files.items():
            if handed_out and key not in self._handed_out:
                continue
            lines = [line.split("\t") for line in path.read_text().splitlines()]
            found.append([(parts[0], parts[2]) for parts in lines if len(parts) > 2])
        return found

    def turns(self, *, handed_out: bool = False) -> int:
        """Round trips, over every traced connection, or only those that passed the pool's
        check (after `stop`)."""
        total = 0
        for messages in self.messages(handed_out=handed_out):
            sent: set[str] = set()
            for direction, kind in messages:
                if direction == "F":
                    sent.add(kind)
                elif direction == "B" and sent:
                    total += not sent <= {"Parse", "Sync"}
                    sent = set()
        return total

    def failed_connections(self) -> int:
        """Connections handed out that failed their caller: an error, or no final answer."""
        return sum(
            not messages
            or messages[-1] != ("B", "ReadyForQuery")
            or ("B", "ErrorResponse") in messages
            for messages in self.messages(handed_out=True)
        )

    def close(self) -> None:
        self._dir.cleanup()


@contextmanager
def traced(pool: ConnectionPool[Any]) -> Iterator[WireTrace]:
    """A `WireTrace` over `pool` for the block's duration; count after the block."""
    trace = WireTrace(pool)
    trace.start()
    try:
        yield trace
    finally:
        trace.stop()
