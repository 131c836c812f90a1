"""Faults waited out, never dead-lettered (issue 15), on servers of this tier's own.

Each test runs a steady load of registrations and withdrawals through the application while it
breaks one thing, then measures the time from recovery to the pipeline catching up (everything
relayed and projected, every acknowledged withdrawal purged), and asserts: every acknowledged
write stored, every withdrawal purged without a manual action, no dead letter, no confirmation
mail sent twice, and no process restarted but the ones the test itself restarts.
Run with `-s` to see the measured times.
"""

from __future__ import annotations

import threading
import time

import pytest
from pipeline import Load, Pipeline
from support import wait_until

from lifecycle.kafka.source import SESSION_TIMEOUT_MS

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

# The load runs this long before a fault, so that there is work in flight when it strikes.
WARM_UP_S = 2.0
# A static member killed and restarted takes its partitions back at once and finishes the
# erasures in flight within the group's session timeout of consuming again; a new dynamic
# member could not: the group waits out the old member's session before it reassigns. The
# bound is the mechanism's, not a guess at the machine's speed.
STATIC_REJOIN_S = SESSION_TIMEOUT_MS / 1000
# How long a stopped server stays down.
DOWN_S = 5.0


def report(fault: str, seconds: float, **more: object) -> None:
    extra = "".join(f" {key}={value}" for key, value in more.items())
    print(f"\nfault={fault} recovery_to_catch_up_s={seconds:.2f}{extra}")


def pause(seconds: float) -> None:
    """The length of an outage (what the test does to the server, not a synchronisation)."""
    threading.Event().wait(seconds)


def test_connections_cut_several_times(pipeline: Pipeline) -> None:
    pipeline.wait_caught_up([])
    with Load(pipeline.accounts) as load:
        pause(WARM_UP_S)
        cut = []
        for _ in range(5):
            cut.append(pipeline.postgres.cut())
            pause(1.0)
    seconds = pipeline.wait_caught_up(load.withdrawn)
    report("pg_terminate_backend x5", seconds, backends_cut=cut, refused=load.refused)
    assert all(cut), "a round found no connection to cut"
    # A commit whose answer a cut lost is found out, never taken for another writer's.
    assert load.registrations_conflicted == 0
    pipeline.check(load)


def test_postgres_stopped_and_started(pipeline: Pipeline) -> None:
    pipeline.wait_ready()
    with Load(pipeline.accounts) as load:
        pause(WARM_UP_S)
        pipeline.postgres.stop()
        down_at = time.monotonic()
        # The relay polls the log, so it notices at its next poll; its probe says what it
        # waits for. The server stays down at least DOWN_S, and until the relay noticed.
        wait_until(
            lambda: pipeline.readiness("relay") == (503, "waiting for the database"),
            "the relay's probe says not ready, waiting for the database",
        )
        pause(max(0.0, DOWN_S - (time.monotonic() - down_at)))
        pipeline.postgres.start()
    seconds = pipeline.wait_caught_up(load.withdrawn)
    report(f"postgres down {DOWN_S:.0f}s", seconds, refused=load.refused)
    # Only the relay is sure to notice: the load's writes block or fail while the database is
    # away, so nothing new reaches the consumers (the cut test sees them wait).
    assert pipeline.log_lines("relay.database_unreachable"), "the relay did not say it waited"
    pipeline.wait_ready()
    pipeline.check(load)


def test_kafka_broker_stopped_and_started(pipeline: Pipeline) -> None:
    with Load(pipeline.accounts) as load:
        pause(WARM_UP_S)
        pipeline.kafka.stop()
        pause(DOWN_S)
        pipeline.kafka.start()  # returns once the broker answers metadata requests
    seconds = pipeline.wait_caught_up(load.withdrawn)
    report(f"kafka down {DOWN_S:.0f}s (+ start-up)", seconds, refused=load.refused)
    pipeline.check(load)


@pytest.mark.parametrize("name", ["scout", "chat", "mail", "erasure"])
def test_sigterm_and_restart(pipeline: Pipeline, name: str) -> None:
    """The in-flight erasures complete within seconds of the new process starting to consume
    (`consumer.started`); the time from the restart command includes the interpreter's start,
    which on a loaded machine is several seconds by itself."""
    with Load(pipeline.accounts) as load:
        pause(WARM_UP_S)
        drained = pipeline.terminate(name)
        restarted = time.monotonic()
        log = pipeline.start(name)
        in_flight = list(load.withdrawn)
        started_s = pipeline.wait_logged(log, "consumer.started")
        consuming = time.monotonic()
        pipeline.wait_caught_up(in_flight)
        in_flight_s = time.monotonic() - consuming
    seconds = pipeline.wait_caught_up(load.withdrawn)
    report(
        f"SIGTERM {name}",
        seconds,
        drain_s=f"{drained:.2f}",
        process_start_s=f"{started_s:.2f}",
        in_flight_purged_after_start_s=f"{in_flight_s:.2f}",
        from_restart_s=f"{time.monotonic() - restarted:.2f}",
    )
    assert in_flight_s < STATIC_REJOIN_S, "the erasures in flight took long after the restart"
    pipeline.check(load, restarted=(name,))


@pytest.mark.parametrize("name", ["scout", "erasure"])
def test_sigkill_and_restart(pipeline: Pipeline, name: str) -> None:
    """Killed with SIGKILL (no LeaveGroup, no commit) and restarted at once: the process is a
    static member (LIFECYCLE_INSTANCE_ID), so it takes its partitions back without waiting
    out its old session (10 s), and the erasures in flight complete within that session of
    it consuming again. The interpreter's own start is reported, not bounded."""
    pipeline.wait_ready()
    with Load(pipeline.accounts) as load:
        pause(WARM_UP_S)
        pipeline.kill(name)
        restarted = time.monotonic()
        log = pipeline.start(name)
        in_flight = list(load.withdrawn)
        started_s = pipeline.wait_logged(log, "consumer.started")
        consuming = time.monotonic()
        # Only the erasures in flight: the relay and the read models follow the load meanwhile.
        wait_until(
            lambda: pipeline.purged_among(in_flight) == set(in_flight),
            f"the {len(in_flight)} erasures in flight purged within {STATIC_REJOIN_S}s",
            timeout_s=STATIC_REJOIN_S,
        )
        in_flight_s = time.monotonic() - consuming
    seconds = pipeline.wait_caught_up(load.withdrawn)
    report(
        f"SIGKILL {name}",
        seconds,
        process_start_s=f"{started_s:.2f}",
        in_flight_purged_after_start_s=f"{in_flight_s:.2f}",
        from_restart_s=f"{time.monotonic() - restarted:.2f}",
    )
    pipeline.check(load, restarted=(name,))
