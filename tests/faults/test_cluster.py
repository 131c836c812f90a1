"""The pipeline on a three-node replicated Kafka cluster (issue 22), under a steady load.

Topics are created with replication 3 and min.insync.replicas 2. The node leading most of the
lifecycle topic's partitions is killed with SIGKILL and started again later; then every node in
turn is stopped cleanly and started again (a rolling restart), each waiting until every
partition is fully replicated before the next. Afterwards: every acknowledged write published
exactly once, in order, per account; every withdrawal purged without a manual action; no dead
letter; no confirmation mail twice; no process restarted. Run with `-s` for the longest stall
of the pipeline during each fault (relay: the notification log waiting to be published;
purges: acknowledged withdrawals waiting, with no purge completing).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from uuid import UUID

import pytest
from cluster import NODES, KafkaCluster
from pipeline import COMMANDS, Load, Pipeline
from servers import ThrowawayPostgres
from support import SmtpSink, read_topic, wait_until

from lifecycle.kafka.admin import TopicSettings
from schemas.contract import TopicNames

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

WARM_UP_S = 2.0
# How long the crashed leader stays down (the others lead its partitions meanwhile).
DOWN_S = 4.0
REPLICATED = TopicSettings(replication_factor=3)


def pause(seconds: float) -> None:
    """The length of an outage (what the test does to the cluster, not a synchronisation)."""
    threading.Event().wait(seconds)


class StallMeter:
    """Samples the pipeline's progress on a thread; per phase, the longest time the relay had
    something to publish without publishing, and withdrawals waited without a purge."""

    def __init__(self, pipeline: Pipeline, load: Load) -> None:
        self.pipeline, self.load = pipeline, load
        self.phase = "warm-up"
        self.longest: dict[str, dict[str, float]] = defaultdict(
            lambda: {"relay": 0.0, "purge": 0.0}
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-meter", daemon=True)

    def __enter__(self) -> StallMeter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        now = time.monotonic()
        since = {"relay": now, "purge": now}
        last: dict[str, object] = {"relay": None, "purge": None}
        while not self._stop.wait(0.1):
            try:
                head = self.pipeline.head()
                relayed = self.pipeline.relayed()
                withdrawn = list(self.load.withdrawn)
                purged = len(self.pipeline.purged_among(withdrawn))
            except Exception:
                continue  # the database is not what this measures
            now = time.monotonic()
            for what, value, idle in (
                ("relay", relayed, relayed >= head),
                ("purge", purged, purged >= len(set(withdrawn))),
            ):
                if idle or value != last[what]:
                    since[what], last[what] = now, value
                stall = now - since[what]
                longest = self.longest[self.phase]
                longest[what] = max(longest[what], stall)


def published_versions(pipeline: Pipeline) -> dict[str, list[int]]:
    """Per account, the versions on the lifecycle topic in partition order (ce_id headers)."""
    found: dict[str, list[int]] = defaultdict(list)
    for record in read_topic(pipeline.kafka.bootstrap, pipeline.topics.lifecycle):
        ce_id = dict(record.headers)["ce_id"].decode()
        account, _, version = ce_id.rpartition(":")
        found[account].append(int(version))
    return found


def stored_versions(pipeline: Pipeline, account_ids: list[UUID]) -> dict[str, int]:
    db = pipeline.accounts.database
    with db.transaction(commit=False) as cursor:
        rows = cursor.execute(
            f"SELECT originator_id, max(originator_version) FROM {db.events_table} "
            "WHERE originator_id = ANY(%s) GROUP BY originator_id",
            (account_ids,),
        ).fetchall()
    return {str(row[0]): int(row[1]) for row in rows}


# Four node starts (10-20 s each on a loaded 2-core machine), the pipeline's six processes and
# the cluster's own start and stop (module-scoped): over the suite's 300 s per test.
@pytest.mark.timeout(600)
def test_a_leader_killed_then_a_rolling_restart(
    kafka_cluster: KafkaCluster,
    throwaway_postgres: ThrowawayPostgres,
    fault_smtp: SmtpSink,
    tmp_path: Path,
) -> None:
    topics = TopicNames(prefix=f"cluster{uuid.uuid4().hex[:6]}.")
    with Pipeline.running(
        throwaway_postgres,
        kafka_cluster,
        fault_smtp,
        tmp_path,
        topics=topics,
        topic_settings=REPLICATED,
    ) as pipeline:
        assert {p["replicas"].__len__() for p in kafka_cluster.partitions([topics.lifecycle])} == {
            3
        }
        wait_until(
            lambda: all(pipeline.readiness(name)[0] == 200 for name in COMMANDS),
            "every process's probe says ready before the faults",
        )
        with Load(pipeline.accounts, per_second=6.0) as load, StallMeter(pipeline, load) as meter:
            pause(WARM_UP_S)
            leader = kafka_cluster.leader_of(topics.lifecycle)
            meter.phase = f"SIGKILL node {leader} (lifecycle leader), {DOWN_S:.0f}s down"
            kafka_cluster.kill(leader)
            pause(DOWN_S)
            kafka_cluster.start(leader)
            wait_until(kafka_cluster.fully_replicated, "the crashed node back in sync", 90)
            pipeline.wait_caught_up(list(load.withdrawn))
            meter.phase = "rolling restart"
            for node in NODES:
                kafka_cluster.stop(node)
                kafka_cluster.start(node)
                wait_until(kafka_cluster.fully_replicated, f"node {node} back in sync", 90)
            pipeline.wait_caught_up(list(load.withdrawn))
            meter.phase = "after"
        seconds = pipeline.wait_caught_up(load.withdrawn)
        for phase, longest in meter.longest.items():
            print(
                f"\nfault={phase!r} longest_stall_relay_s={longest['relay']:.2f} "
                f"longest_stall_purge_s={longest['purge']:.2f}"
            )
        print(
            f"\ncluster: registered={len(load.registered)} withdrawn={len(load.withdrawn)} "
            f"refused={load.refused} final_catch_up_s={seconds:.2f}"
        )
        pipeline.check(load)
        # Every acknowledged write published exactly once, in order, per account.
        published = published_versions(pipeline)
        stored = stored_versions(pipeline, load.registered)
        for account_id in load.registered:
            key = str(account_id)
            assert published[key] == list(range(1, stored[key] + 1)), key
