"""A fault-injecting TCP proxy in front of PostgreSQL, on loopback.

Armed with `cut_after_commit()`, the next connection that sends a write has it delivered to
the server; the proxy waits for the server's ReadyForQuery after it (the transaction is
durable: an explicit COMMIT was answered, or the implicit transaction of a lone statement
committed at its Sync), throws that answer away and closes both sides. The client sees its
connection lost with the outcome unknown, exactly the case a retry must not guess about.
`cut_before_commit()` closes both sides instead of delivering the write (nothing is stored).
Each arming cuts one connection; `cuts` counts them. Plain text only (the test clusters run
without TLS).

A write is a COMMIT (simple or extended query) or the execution of a statement whose text
holds one of `write_markers` (by default the event store's insert functions, called without
BEGIN/COMMIT by `PostgresKeyRecorder.insert_once`). A prepared statement's text is sent once,
in its Parse message; later executions name it in a Bind, so the proxy reads the client's
messages and remembers each statement's text by name.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterable
from types import TracebackType

from support import free_port

COMMIT = b"COMMIT"
WRITE_MARKERS = (b"_insert_event",)  # lifecycle_insert_events_*, lifecycle_insert_event_arrays_*
# Untyped requests a client may send before its startup message; each answered by one byte.
SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104


class _Frontend:
    """The client's side of the protocol, message by message: which bytes carry a write."""

    def __init__(self, markers: tuple[bytes, ...]) -> None:
        self.markers = markers
        self.buffer = b""
        self.started = False  # the startup message went by; every message is typed from here
        self.unanswered = 0  # SSL/GSS requests whose one-byte answer is still to come
        self.statements: dict[bytes, bytes] = {}  # prepared statement name -> its text

    def is_write(self, text: bytes) -> bool:
        return text.strip().rstrip(b";").upper() == COMMIT or any(m in text for m in self.markers)

    def feed(self, data: bytes) -> bool:
        """Takes the client's next bytes; whether they send a write for execution."""
        self.buffer += data
        write = False
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    return write
                length = int.from_bytes(self.buffer[:4], "big")
                if len(self.buffer) < length:
                    return write
                code = int.from_bytes(self.buffer[4:8], "big")
                self.buffer = self.buffer[length:]
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    self.unanswered += 1
                else:
                    self.started = True
                continue
            if len(self.buffer) < 5:
                return write
            length = int.from_bytes(self.buffer[1:5], "big")
            if len(self.buffer) < 1 + length:
                return write
            kind, body = self.buffer[:1], self.buffer[5 : 1 + length]
            self.buffer = self.buffer[1 + length :]
            if kind == b"Q":  # simple query
                write |= self.is_write(body.rstrip(b"\0"))
            elif kind == b"P":  # Parse: statement name, text, ...
                name, _, rest = body.partition(b"\0")
                self.statements[name] = rest.partition(b"\0")[0]
            elif kind == b"B":  # Bind: portal name, statement name, ...
                statement = body.partition(b"\0")[2].partition(b"\0")[0]
                write |= self.is_write(self.statements.get(statement, b""))


class _Backend:
    """The server's side of the protocol, message by message: where a ReadyForQuery is."""

    def __init__(self, frontend: _Frontend) -> None:
        self.frontend = frontend
        self.buffer = b""

    def feed(self, data: bytes) -> bool:
        """Takes the server's next bytes; whether they hold a ReadyForQuery."""
        self.buffer += data
        ready = False
        while self.buffer:
            if self.frontend.unanswered:
                self.buffer = self.buffer[1:]  # "N": no TLS, no GSS encryption
                self.frontend.unanswered -= 1
                continue
            if len(self.buffer) < 5:
                break
            length = int.from_bytes(self.buffer[1:5], "big")
            if len(self.buffer) < 1 + length:
                break
            ready |= self.buffer[:1] == b"Z"
            self.buffer = self.buffer[1 + length :]
        return ready


class CommitCuttingProxy:
    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        write_markers: Iterable[bytes] = WRITE_MARKERS,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.write_markers = tuple(write_markers)
        self.port = free_port()
        self.cuts = 0
        self._mode: str | None = None  # "after" or "before" while armed
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="pg-proxy", daemon=True)
        self._thread.start()

    def url(self, database_url: str) -> str:
        """`database_url` with this proxy's address instead of the server's."""
        host, port = self.upstream
        return database_url.replace(f"{host}:{port}", f"127.0.0.1:{self.port}")

    def cut_after_commit(self) -> None:
        with self._lock:
            self._mode = "after"

    def cut_before_commit(self) -> None:
        with self._lock:
            self._mode = "before"

    @property
    def armed(self) -> bool:
        with self._lock:
            return self._mode is not None

    def _take(self) -> str | None:
        """The armed mode, disarming it: one cut per arming."""
        with self._lock:
            mode, self._mode = self._mode, None
            if mode is not None:
                self.cuts += 1
            return mode

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)
        frontend = _Frontend(self.write_markers)
        backend = _Backend(frontend)
        cutting = False  # a write went through; the server's answer to it is to be swallowed
        try:
            while not self._closed.is_set():
                for key, _ in selector.select(timeout=0.5):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client:
                        # Parsed before it is forwarded: an answer cannot overtake its request.
                        if frontend.feed(data) and self.armed:
                            if self._take() == "before":
                                return  # never delivered: nothing is stored
                            cutting = True
                    elif backend.feed(data) and cutting:
                        return  # committed; the client never hears it
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            for end in (client, server):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self._closed.set()
        # close() alone does not wake a thread blocked in accept() on Linux; shutdown() does.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> CommitCuttingProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
