"""The three-node Kafka cluster of `scripts/services cluster`, driven from the fault tier.

Started by the `kafka_cluster` fixture for the module that asks for it and stopped after it; its
nodes are crashed (`kill`), stopped cleanly (`stop`) and started again (`start`, which returns
once three brokers are registered and unfenced) through the script, so the tests exercise the
same commands an engineer runs by hand.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kafka.admin import KafkaAdminClient

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "scripts" / "services"
NODES = (1, 2, 3)


class KafkaCluster:
    def __init__(self) -> None:
        self._run("up", timeout_s=300)
        line = self._run("env").strip()
        self.bootstrap = line.partition("=")[2]
        ports = [int(address.rpartition(":")[2]) for address in self.bootstrap.split(",")]
        self.node_of_port = dict(zip(ports, NODES, strict=True))

    def _run(self, *args: str, timeout_s: float = 180) -> str:
        result = subprocess.run(
            [str(SERVICES), "cluster", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=os.environ.copy(),
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"scripts/services cluster {' '.join(args)}: {result.stderr}")
        return result.stdout

    def kill(self, node: int) -> None:
        self._run("kill", str(node))

    def stop(self, node: int) -> None:
        self._run("stop", str(node))

    def start(self, node: int) -> None:
        self._run("start", str(node))

    def close(self) -> None:
        self._run("down")

    def _admin(self) -> Any:
        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap, client_id="faults-cluster", request_timeout_ms=10_000
        )

    def partitions(self, topics: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Each partition's topic, index, leader, replicas and in-sync replicas."""
        admin = self._admin()
        try:
            described = admin.describe_topics(None if topics is None else list(topics))
        finally:
            admin.close()
        return [
            {
                "topic": topic["name"],
                "partition": partition["partition_index"],
                "leader": partition["leader_id"],
                "replicas": sorted(partition["replica_nodes"]),
                "isr": sorted(partition["isr_nodes"]),
            }
            for topic in described
            for partition in topic["partitions"]
        ]

    def leader_of(self, topic: str) -> int:
        """The node leading most of the topic's partitions (partition 0's on a tie)."""
        leaders = [
            p["leader"] for p in sorted(self.partitions([topic]), key=lambda p: p["partition"])
        ]
        return max(leaders, key=leaders.count)

    def fully_replicated(self) -> bool:
        """Every partition of every topic has all its replicas in sync and a leader."""
        try:
            return all(p["isr"] == p["replicas"] and p["leader"] >= 0 for p in self.partitions())
        except Exception:
            return False  # a node is still starting
