"""The erasure pipeline as real processes on the throwaway servers, a steady load, and checks.

`Pipeline` starts `lifecycle relay`, `lifecycle consume scout|chat|mail`, `lifecycle erasure`
and `lifecycle project` with the environment pointing at the fault tier's own servers, and
keeps their pids: a test asserts at the end that none was restarted but the ones it restarted.
`Load` registers members and withdraws them at a steady pace through the application, and
keeps what was acknowledged (the call returned) apart from what failed (not acknowledged).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol
from uuid import UUID

from servers import ThrowawayPostgres
from support import SmtpSink, free_port, read_topics, wait_until

from lifecycle.application import Accounts
from lifecycle.bootstrap import migrate_lifecycle, migrate_service
from lifecycle.crypto import new_master_key
from lifecycle.errors import ConcurrentUpdateError
from lifecycle.kafka.admin import TopicSettings, ensure_topics
from lifecycle.settings import Settings
from schemas.contract import ERASING_SERVICES, TopicNames

# name: the `lifecycle` subcommand that runs it.
COMMANDS: dict[str, list[str]] = {
    "relay": ["relay"],
    "scout": ["consume", "scout"],
    "chat": ["consume", "chat"],
    "mail": ["consume", "mail"],
    "erasure": ["erasure"],
    "project": ["project", "erasure_status", "account_directory"],
}
PROJECTED = ("erasure_status", "account_directory")
CONFIRMATION_SUBJECT = "Your withdrawal is complete"


class Brokers(Protocol):
    """A single throwaway broker or the three-node cluster: what the pipeline needs of it."""

    @property
    def bootstrap(self) -> str: ...


class Pipeline:
    """The processes, the application the load writes through, and what to check afterwards."""

    def __init__(
        self,
        postgres: ThrowawayPostgres,
        kafka: Brokers,
        smtp: SmtpSink,
        logs: Path,
        topics: TopicNames | None = None,
    ) -> None:
        self.postgres = postgres
        self.kafka = kafka
        self.smtp = smtp
        self.logs = logs
        self.topics = topics or TopicNames()
        # A database of the pipeline's own: other modules use the same cluster.
        self.database_url = postgres.new_database()
        self.settings = Settings(
            database_url=self.database_url,
            kafka_bootstrap=kafka.bootstrap,
            master_key=new_master_key(),
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            log_format="json",
            topic_prefix=self.topics.prefix,
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")},
            "LIFECYCLE_DATABASE_URL": self.database_url,
            "LIFECYCLE_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "LIFECYCLE_MASTER_KEY": self.settings.resolved_master_key(),
            "LIFECYCLE_SMTP_HOST": "127.0.0.1",
            "LIFECYCLE_SMTP_PORT": str(smtp.port),
            "LIFECYCLE_LOG_FORMAT": "json",
            "LIFECYCLE_TOPIC_PREFIX": self.topics.prefix,
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # Each process serves /readyz on a port of its own (LIFECYCLE_PROBE_PORT).
        self.probe_ports = {name: free_port() for name in COMMANDS}
        self.started: dict[str, int] = {}  # name -> pid, as started (or restarted by a test)
        self.log_paths: dict[str, Path] = {}  # name -> the log of its latest start
        self._runs = itertools.count()
        migrate_lifecycle(self.settings)  # `lifecycle migrate`, then each service's
        for name in ERASING_SERVICES:
            migrate_service(self.settings, name)
        self.accounts = Accounts(env=self.settings.application_env())

    @classmethod
    @contextmanager
    def running(
        cls,
        postgres: ThrowawayPostgres,
        kafka: Brokers,
        smtp: SmtpSink,
        logs: Path,
        *,
        topics: TopicNames | None = None,
        topic_settings: TopicSettings | None = None,
    ) -> Iterator[Pipeline]:
        ensure_topics(kafka.bootstrap, topics or TopicNames(), topic_settings)
        pipeline = cls(postgres, kafka, smtp, logs, topics)
        try:
            for name in COMMANDS:
                pipeline.start(name)
            # A process signalled or cut while it still starts up (several seconds on a
            # loaded machine) exits instead of waiting: faults strike once all are up.
            pipeline.wait_ready()
            yield pipeline
        finally:
            # Every process is stopped, even after one failed to stop cleanly (a run must not
            # leave consumers behind); then the first failure is raised.
            failures: list[AssertionError] = []
            for name in list(pipeline.processes):
                try:
                    pipeline.terminate(name)
                except AssertionError as failure:
                    failures.append(failure)
            pipeline.accounts.close()
            if failures:
                raise failures[0]

    # Processes

    def start(self, name: str) -> Path:
        """Start the process `name`; its log file."""
        path = self.logs / f"{name}.{next(self._runs)}.log"
        log: IO[bytes] = open(path, "wb")  # noqa: SIM115
        with log:
            process = subprocess.Popen(
                [sys.executable, "-m", "lifecycle", *COMMANDS[name]],
                env={
                    **self.env,
                    "LIFECYCLE_PROBE_PORT": str(self.probe_ports[name]),
                    # Stable across restarts, as an operator sets it from the pod's name.
                    "LIFECYCLE_INSTANCE_ID": f"{name}-0",
                },
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes[name] = process
        self.started[name] = process.pid
        self.log_paths[name] = path
        return path

    @staticmethod
    def wait_logged(path: Path, event: str, timeout_s: float = 60.0) -> float:
        """Seconds until the log at `path` has a line naming `event`."""
        began = time.monotonic()
        pause = threading.Event()
        while f'"{event}"' not in path.read_text(errors="replace"):
            assert time.monotonic() - began < timeout_s, f"no {event} in {path.name}"
            pause.wait(0.05)
        return time.monotonic() - began

    def terminate(self, name: str, timeout_s: float = 30.0) -> float:
        """SIGTERM, then wait for the exit; how long the process took to drain and leave."""
        process = self.processes.pop(name)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"{name} did not stop within {timeout_s}s of SIGTERM") from None
        assert code == 0, f"{name} exited with {code}"
        return time.monotonic() - began

    def kill(self, name: str) -> None:
        """SIGKILL: no drain, no offset commit, no goodbye to the group."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def unrestarted(self) -> dict[str, str]:
        """Processes that are not running as started: name -> what happened (empty: none)."""
        found = {}
        for name, pid in self.started.items():
            process = self.processes.get(name)
            if process is None or process.pid != pid:
                found[name] = "replaced"
            elif process.poll() is not None:
                found[name] = f"exited with {process.returncode}"
        return found

    def readiness(self, name: str) -> tuple[int, str]:
        """The process's /readyz: status and detail (0 while it does not answer yet)."""
        url = f"http://127.0.0.1:{self.probe_ports[name]}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, ""
        except urllib.error.HTTPError as error:
            return error.code, str(json.load(error).get("detail", ""))
        except OSError:
            return 0, "no answer"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until every process runs and its probe says ready. A process whose probe port
        another process took between `free_port()` and its bind (five test runs share the
        machine; the other one may even answer the probe) is started again on another port:
        a race of the tests' port picking, not of the service."""

        def ready() -> bool:
            for name, process in list(self.processes.items()):
                if process.poll() is not None:
                    log = self.log_paths[name].read_text(errors="replace")
                    assert "Address already in use" in log, f"{name} exited: {log[-500:]}"
                    self.probe_ports[name] = free_port()
                    self.start(name)
            return all(self.readiness(name)[0] == 200 for name in self.processes)

        wait_until(ready, "every process's probe says ready", timeout_s=timeout_s)

    def log_lines(self, event: str) -> list[str]:
        """Lines of every process's log that name `event`."""
        return [
            line
            for path in sorted(self.logs.glob("*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if f'"{event}"' in line
        ]

    # State

    def head(self) -> int:
        return self.accounts.recorder.max_notification_id() or 0

    def _scalar(self, statement: str, params: tuple[Any, ...] = ()) -> Any:
        with self.accounts.database.transaction(commit=False) as cursor:
            row = cursor.execute(statement, params).fetchone()
        return None if row is None else row[0]

    def relayed(self) -> int:
        """The relay's position: notifications up to it are acknowledged by Kafka."""
        return int(
            self._scalar(f"SELECT coalesce(min(position), 0) FROM {self._table('relay_position')}")
        )

    def purged_among(self, ids: list[UUID]) -> set[UUID]:
        if not ids:
            return set()
        db = self.accounts.database
        with db.transaction(commit=False) as cursor:
            rows = cursor.execute(
                f"SELECT originator_id FROM {db.events_table} "
                "WHERE topic LIKE %s AND originator_id = ANY(%s)",
                ("%Account.Purged", ids),
            ).fetchall()
        return {db.to_uuid(row[0]) for row in rows}

    def behind(self, withdrawn: list[UUID]) -> str | None:
        """What is not caught up yet (relay, projections, purges), or None when all is."""
        try:
            head = self.head()
            relayed = self.relayed()
            lagging = [
                name
                for name in PROJECTED
                if self._scalar(
                    "SELECT coalesce(max(notification_id), 0) "
                    f"FROM {self._table(f'{name}_tracking')}"
                )
                < head
            ]
            purged = len(self.purged_among(withdrawn))
        except Exception as error:
            return f"database: {type(error).__name__}"  # not back yet
        if relayed < head:
            return f"relay at {relayed} of {head}"
        if lagging:
            return f"projections behind: {lagging}"
        if purged < len(set(withdrawn)):
            return f"purged {purged} of {len(set(withdrawn))}"
        return None

    def _table(self, name: str) -> str:
        return self.accounts.database.table(name)

    def wait_caught_up(self, withdrawn: list[UUID], timeout_s: float = 90.0) -> float:
        """Seconds until nothing is `behind`; fails after `timeout_s`."""
        began = time.monotonic()
        pause = threading.Event()
        while (behind := self.behind(withdrawn)) is not None:
            elapsed = time.monotonic() - began
            assert elapsed < timeout_s, (
                f"not caught up within {timeout_s}s: {behind}; "
                f"processes not as started: {self.unrestarted()}"
            )
            pause.wait(0.1)
        return time.monotonic() - began

    def dead_letters(self) -> int:
        return len(read_topics(self.kafka.bootstrap, self.topics.dead_letters))

    def confirmation_mails(self) -> Counter[str]:
        with self.smtp.lock:
            return Counter(
                recipient
                for received in self.smtp.received
                if CONFIRMATION_SUBJECT in str(received.message["Subject"])
                for recipient in received.recipients
            )

    def check(self, load: Load, *, restarted: tuple[str, ...] = ()) -> None:
        """Afterwards: every acknowledged write stored, every acknowledged withdrawal purged
        (by `wait_caught_up`), no dead letter, no double effect, no process restarted."""
        for account_id in load.registered:
            self.accounts.load_for_audit(account_id)  # raises when it is not stored
        assert self.purged_among(load.withdrawn) == set(load.withdrawn)
        assert self.dead_letters() == 0
        assert self.log_lines("consumer.dead_lettered") == []
        mails = self.confirmation_mails()
        assert [r for r, n in mails.items() if n > 1] == [], "a confirmation mail sent twice"
        for account_id in load.withdrawn:
            assert mails[load.emails[account_id]] == 1, "a purged member got no confirmation"
        assert {
            name: what for name, what in self.unrestarted().items() if name not in restarted
        } == {}


@dataclass
class Load:
    """Registrations and withdrawals at a steady pace, on a thread, through the application."""

    accounts: Accounts
    per_second: float = 8.0
    registered: list[UUID] = field(default_factory=list)
    withdrawn: list[UUID] = field(default_factory=list)
    emails: dict[UUID, str] = field(default_factory=dict)
    refused: int = 0
    # Registrations refused as a conflict: with unique e-mails only an in-doubt commit
    # guessed wrong (the write's own events taken for another writer's) could cause one.
    registrations_conflicted: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="fault-load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            assert not self._thread.is_alive(), "the load did not stop"

    def _run(self) -> None:
        pending: list[UUID] = []  # registered, not yet withdrawn
        interval = 1.0 / self.per_second
        for step in itertools.count():
            if self._stop.wait(interval):
                return
            registering = step % 2 == 0 or not pending
            try:
                if registering:
                    self._register(pending)
                else:
                    self.accounts.request_withdrawal(pending[0], reason="hired_elsewhere")
                    self.withdrawn.append(pending.pop(0))
            except ConcurrentUpdateError:
                self.refused += 1
                self.registrations_conflicted += registering
            except Exception:
                self.refused += 1  # not acknowledged: the caller would see an error

    def _register(self, pending: list[UUID]) -> None:
        tag = uuid.uuid4().hex[:10]
        email = f"member.{tag}@example.jp"
        account_id = self.accounts.register(
            email=email,
            display_name=f"Member {tag}",
            consent_version="2026-04",
            phone="090-0000-0000",
            job_title="Engineer",
        )
        self.registered.append(account_id)
        self.emails[account_id] = email
        pending.append(account_id)
