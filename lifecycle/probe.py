"""Liveness and readiness of a worker process, for its supervisor (Kafka on: each worker is a
process of its own, with no HTTP API of its own to ask).

`lifecycle relay|consume|erasure|project`, with `LIFECYCLE_PROBE_PORT` set, serve `GET /healthz`
(200 while the process runs) and `GET /readyz`: 503 while the worker starts, or while it waits out a
dependency that is down (the body names which), 200 once it works. The answers are the API's
(`lifecycle serve`): the same paths, the same 503 problem document. Standard library only: one
thread, a few lines of JSON (and prometheus_client for `/metrics`), nothing to install besides.

`GET /metrics` there is this process's Prometheus exposition (`lifecycle.pipeline_metrics`): its
histograms (withdrawal to purged in the erasure process, to suppression in the mail service) and
its workers' readiness and lag. Counts and durations only, like the API's `/metrics`.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from lifecycle.pipeline_metrics import REGISTRY, ForwardingCollector, WorkersCollector


class Worker(Protocol):
    """A relay, consumer or projector: what it waits for ("database", "broker"), or None."""

    @property
    def waiting_for(self) -> str | None: ...


# Problem types are URNs: stable identifiers that never depend on where the service runs.
# The API's problem documents use the same prefix (lifecycle.api.problems imports it).
PROBLEM_TYPE_PREFIX = "urn:lifecycle:problem:"


class Probe:
    """Serves the two paths on a thread of its own until `close()`."""

    def __init__(self, host: str, port: int) -> None:
        self._watched: list[Worker] = []
        self._started = False
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.registry.register(ForwardingCollector(REGISTRY))
        self.registry.register(WorkersCollector(self.watched))
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="probe", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def watch(self, *workers: Worker) -> None:
        """The workers are built and run: ready whenever none of them waits for a dependency."""
        with self._lock:
            self._watched.extend(workers)
            self._started = True

    def watched(self) -> list[Worker]:
        with self._lock:
            return list(self._watched)

    def readiness(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            started, watched = self._started, list(self._watched)
        if not started:
            return 503, _not_ready("the worker is starting")
        # Each worker asked once: its state may change between two reads.
        waiting = sorted({dependency for w in watched if (dependency := w.waiting_for)})
        if waiting:
            return 503, _not_ready(f"waiting for the {', '.join(waiting)}")
        return 200, {"status": "ready"}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _not_ready(detail: str) -> dict[str, Any]:
    return _problem(503, "not_ready", detail)


def _problem(status: int, code: str, detail: str) -> dict[str, Any]:
    return {
        "type": f"{PROBLEM_TYPE_PREFIX}{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }


def _handler_for(probe: Probe) -> type[BaseHTTPRequestHandler]:
    class ProbeRequestHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._answer(200, {"status": "ok"})
            elif self.path == "/readyz":
                self._answer(*probe.readiness())
            elif self.path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(probe.registry))
            else:
                self._answer(404, _problem(404, "not_found", "no such path"))

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            kind = "application/json" if status == 200 else "application/problem+json"
            self._send(status, kind, json.dumps(body).encode())

        def _send(self, status: int, kind: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Probes every few seconds would flood the worker's log; it says nothing."""

    return ProbeRequestHandler
