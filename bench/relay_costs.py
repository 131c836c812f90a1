"""`python -m bench.relay_costs [--events N]`: the relay's Python CPU per event, in µs.

A log of N events (bench.workload.generate_log: registrations, sealed edits, scouts,
withdrawals) relayed from position 0 by a fresh `Accounts` (cold key cache, as a separate
relay process has) to a publisher that keeps nothing, so what is measured is the relay's own
work (reading, decoding, opening, encoding), not kafka-python's or the broker's.
`time.process_time` around whole passes, after one warm-up pass: load barely moves it.
"""

from __future__ import annotations

import argparse
import time

from bench.core import services_env
from bench.workload import schema_with_log
from lifecycle.application import Accounts
from lifecycle.logs import configure_logging
from lifecycle.relay import Relay


class NullPublisher:
    def publish(self, topic: str, key: bytes, headers: object, value: bytes | None) -> None:
        pass

    def flush(self) -> None:
        pass


def relay_pass(env: dict[str, str], name: str) -> tuple[int, float]:
    """Notifications relayed and the CPU seconds it took."""
    accounts = Accounts(env=env)
    relay = Relay(accounts, NullPublisher(), name=name, batch_size=500)
    try:
        began, relayed = time.process_time(), 0
        while processed := relay.run_once():
            relayed += processed
        return relayed, time.process_time() - began
    finally:
        relay.close()
        accounts.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_costs")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args(argv)
    configure_logging("json", "WARNING")
    database_url = services_env()["LIFECYCLE_DATABASE_URL"]
    with schema_with_log(database_url, "relaycosts", args.events) as settings:
        env = dict(settings.application_env())
        relay_pass(env, "warm-up")
        for n in range(args.passes):
            relayed, cpu = relay_pass(env, f"pass-{n}")
            print(f"relay: {relayed} events, {cpu / relayed * 1e6:.1f} µs CPU per event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
