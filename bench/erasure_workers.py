"""One process of the erasure pipeline, as the CLI would run it, on benchmark topics.

    python -m bench.erasure_workers relay|erasure|scout|chat|mail SCHEMA TOPIC_PREFIX

Settings come from the environment (LIFECYCLE_DATABASE_URL, LIFECYCLE_KAFKA_BOOTSTRAP,
LIFECYCLE_MASTER_KEY); the process runs `lifecycle.workers.run_relay`, `run_erasure` or
`run_consumer` until SIGTERM. Each reference service keeps its store in `SCHEMA_<name>`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from lifecycle.logs import configure_logging
from lifecycle.settings import Settings
from schemas.contract import TopicNames

KINDS = ("relay", "erasure", "scout", "chat", "mail")


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
    if kind == "relay":
        run_relay(settings, stop, topics=topics)
    elif kind == "erasure":
        run_erasure(settings, stop, topics=topics)
    else:
        run_consumer(kind, settings, stop, topics=topics, schema=f"{schema}_{kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
