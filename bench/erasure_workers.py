"""One process of the erasure pipeline, as the CLI would run it, on benchmark topics.

    python -m bench.erasure_workers relay|erasure|scout|chat|mail SCHEMA TOPIC_PREFIX

Settings come from the environment (LIFECYCLE_DATABASE_URL, LIFECYCLE_KAFKA_BOOTSTRAP,
LIFECYCLE_MASTER_KEY); the process runs `lifecycle.workers.run_relay`, `run_erasure` or
`run_consumer` until SIGTERM. Each reference service keeps its store in `SCHEMA_<name>`.
`Pipeline` starts the five of them for the erasure case; with BENCH_ERASURE_LOG_DIR set, their
logs are kept there (`<kind>.log`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from bench.core import bench_env
from lifecycle.logs import configure_logging
from lifecycle.settings import Settings
from schemas.contract import ERASING_SERVICES, TopicNames

if TYPE_CHECKING:
    from bench.core import Context

KINDS = ("relay", "erasure", "scout", "chat", "mail")


class Pipeline:
    """relay, erasure and the three reference consumers, one subprocess each."""

    def __init__(self, ctx: Context, schema: str, prefix: str, master_key: str) -> None:
        self.env = bench_env()
        self.env.update(
            LIFECYCLE_DATABASE_URL=ctx.database_url,
            LIFECYCLE_KAFKA_BOOTSTRAP=ctx.kafka_bootstrap,
            LIFECYCLE_MASTER_KEY=master_key,
        )
        self.schema = schema
        self.prefix = prefix
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, IO[bytes]] = {}

    def start(self) -> None:
        keep = os.environ.get("BENCH_ERASURE_LOG_DIR")  # to read the workers' logs afterwards
        for kind in ("relay", "erasure", *ERASING_SERVICES):
            # Kept open for the worker's life; closed in stop().
            self.logs[kind] = (
                open(os.path.join(keep, f"{kind}.log"), "w+b")  # noqa: SIM115
                if keep
                else tempfile.TemporaryFile()  # noqa: SIM115
            )
            self.processes[kind] = subprocess.Popen(
                [sys.executable, "-m", "bench.erasure_workers", kind, self.schema, self.prefix],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=self.logs[kind],
            )
            if kind in ("relay", "erasure"):
                # Both build Accounts on the same schema: not at the same instant (the key
                # vault's CREATE OR REPLACE FUNCTION races with itself).
                time.sleep(1.0)
        self.check()

    def check(self) -> None:
        for kind, process in self.processes.items():
            if process.poll() is not None:
                self.logs[kind].seek(0)
                tail = self.logs[kind].read()[-1500:].decode(errors="replace")
                raise RuntimeError(f"erasure pipeline: {kind} exited: {tail}")

    def log_of(self, kind: str) -> bytes:
        """What the worker logged so far (read without moving the offset it writes at)."""
        fd = self.logs[kind].fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0)

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for handle in self.logs.values():
            handle.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in KINDS:
        print(f"usage: python -m bench.erasure_workers {'|'.join(KINDS)} SCHEMA PREFIX")
        return 2
    kind, schema, prefix = argv
    from lifecycle.workers import run_consumer, run_erasure, run_relay

    settings = Settings(
        database_url=os.environ["LIFECYCLE_DATABASE_URL"],
        database_schema=schema,
        kafka_bootstrap=os.environ["LIFECYCLE_KAFKA_BOOTSTRAP"],
        master_key=os.environ["LIFECYCLE_MASTER_KEY"],
        log_format="json",
        log_level=os.environ.get("BENCH_WORKER_LOG_LEVEL", "INFO"),
    )
    configure_logging(settings.log_format, settings.log_level)
    stop = threading.Event()

    def on_term(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    topics = TopicNames(prefix=prefix)
    # `lifecycle migrate` (and `--service`) before the workers: idempotent, in turns.
    from lifecycle.bootstrap import migrate_lifecycle, migrate_service

    migrate_lifecycle(settings)
    if kind not in ("relay", "erasure"):
        migrate_service(settings, kind, f"{schema}_{kind}")
    if kind == "relay":
        run_relay(settings, stop, topics=topics)
    elif kind == "erasure":
        run_erasure(settings, stop, topics=topics)
    else:
        run_consumer(kind, settings, stop, topics=topics, schema=f"{schema}_{kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
