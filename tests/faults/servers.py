"""Throwaway PostgreSQL and Kafka servers of the fault tier, which may be stopped and cut freely.

The same recipe as `scripts/services` (initdb into a temporary directory, a single-node KRaft
broker formatted from the jars in `.services/kafka-libs`), on free ports below 32768, never the
shared servers: other tests run against those meanwhile. Each server runs until `close()`.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from support import free_port

ROOT = Path(__file__).resolve().parents[2]
KAFKA_TEMPLATE = ROOT / "scripts" / "kafka" / "server.properties.template"
# How long a cut waits for each terminated backend to be gone.
TERMINATE_WAIT_MS = 5000
KAFKA_LOG4J = ROOT / "scripts" / "kafka" / "log4j2.properties"


def kafka_libs() -> Path:
    """The broker's jars: the clone's own `.services/kafka-libs` (a link to the main checkout's
    in a worktree), as `scripts/services up` leaves them."""
    found = ROOT / ".services" / "kafka-libs"
    if not any(found.glob("kafka_*.jar")):
        raise FileNotFoundError(f"no Kafka jars in {found}: run `scripts/services up` once")
    return found


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(condition: object, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout_s}s")
        time.sleep(0.1)


def kafka_cluster_id() -> str:
    """What `StorageTool random-uuid` prints (a UUID in URL-safe base64, unpadded, not starting
    with '-'), without starting a JVM for it."""
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not found.startswith("-"):
            return found


def _pgbin() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if all(os.access(f"{candidate}/{tool}", os.X_OK) for tool in ("initdb", "pg_ctl")):
            return Path(candidate)
    raise FileNotFoundError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")


class ThrowawayPostgres:
    """A cluster in a temporary directory; `stop()`, `start()` and `cut()` at will."""

    def __init__(self) -> None:
        self.bin = _pgbin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lifecycle-faults-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.url = f"postgresql://lifecycle:lifecycle@127.0.0.1:{self.port}/lifecycle"
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            user = "postgres"
            subprocess.run(["id", "-u", user], check=True, capture_output=True)
            shutil.chown(self.dir, user)
            os.chmod(self.dir, 0o755)
            self._as_user = ["runuser", "-u", user, "--"]
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                "unix_socket_directories = ''\nmax_connections = 200\nfsync = off\n"
            )
        self.start()
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE ROLE lifecycle LOGIN SUPERUSER PASSWORD 'lifecycle'")
            conn.execute("CREATE DATABASE lifecycle OWNER lifecycle")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as_user, str(self.bin / tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def new_database(self) -> str:
        """The URL of a database of its own on this cluster (a pipeline's, say), so that the
        modules sharing the cluster never see each other's tables."""
        name = f"db_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER lifecycle")
        return self.url.rpartition("/")[0] + f"/{name}"

    def cut(self, application_name: str | None = None) -> int:
        """`pg_terminate_backend` on every client backend but this one's, in every database
        but the maintenance one, each waited for until it is gone (a cut, not one still under
        way while the clients go on); how many."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(
                f"SELECT count(pg_terminate_backend(pid, {TERMINATE_WAIT_MS})) "
                "FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
                "AND datname <> 'postgres'"
                + (" AND application_name = %s" if application_name else ""),
                (application_name,) if application_name else (),
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayKafka:
    """A single-node KRaft broker (broker and controller) formatted into a temporary directory."""

    def __init__(self) -> None:
        self.libs = kafka_libs()
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="lifecycle-faults-kafka-"))
        for sub in ("data", "logs", "tmp"):
            (self.dir / sub).mkdir()
        self.props = self.dir / "server.properties"
        self.props.write_text(
            KAFKA_TEMPLATE.read_text()
            .replace("@BROKER_PORT@", str(self.port))
            .replace("@CONTROLLER_PORT@", str(self.controller_port))
            .replace("@DATA_DIR@", str(self.dir / "data"))
        )
        self._java = [
            "java",
            "-XX:TieredStopAtLevel=1",  # no C2: the format and the broker live too short for it
            "-Djava.awt.headless=true",
            f"-DZstdTempFolder={self.dir / 'tmp'}",
            f"-Dorg.xerial.snappy.tempdir={self.dir / 'tmp'}",
            "-cp",
            f"{self.libs}/*",
        ]
        subprocess.run(
            [*self._java, "kafka.tools.StorageTool", "format", "-t", kafka_cluster_id(), "-c",
             str(self.props), "--standalone", "--ignore-formatted"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        out = open(self.dir / "kafka.out", "ab")  # noqa: SIM115 - the broker keeps it
        self._process = subprocess.Popen(
            [
                *self._java[:1],
                "-Xmx384M", "-Xms128M", "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
                f"-Dkafka.logs.dir={self.dir / 'logs'}",
                *self._java[1:],
                "kafka.Kafka",
                str(self.props),
            ],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
        out.close()
        wait_for(self.ready, "the throwaway Kafka broker", 120)

    def ready(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"the throwaway broker exited; see {self.dir / 'kafka.out'}")
        if not port_open(self.port):
            return False
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "kafka_ready.py"), self.bootstrap, "20"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        return result.returncode == 0

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
