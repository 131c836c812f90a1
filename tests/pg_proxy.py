"""A fault-injecting TCP proxy in front of PostgreSQL, on loopback.

Armed with `cut_after_commit()`, the next connection that sends a COMMIT has it delivered to
the server; the proxy waits for the server's answer (CommandComplete "COMMIT": the transaction
is durable), throws that answer away and closes both sides. The client sees its connection lost
with the outcome unknown, exactly the case a retry must not guess about. `cut_before_commit()`
closes both sides instead of delivering the COMMIT (the write is rolled back). Each arming cuts
one connection; `cuts` counts them. Plain text only (the test clusters run without TLS).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType

from support import free_port

COMMIT = b"COMMIT\x00"  # the statement in a Query/Parse message, and the CommandComplete tag


class CommitCuttingProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
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
        cutting = False  # a COMMIT went through; its answer is to be swallowed
        try:
            while not self._closed.is_set():
                for key, _ in selector.select(timeout=0.5):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client and COMMIT in data and self.armed:
                        if self._take() == "before":
                            return  # never delivered: the server rolls back
                        cutting = True
                    elif source is server and cutting and COMMIT in data:
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
