"""Where encoded records go: the `Publisher` protocol and the real Kafka producer.

`lifecycle.kafka.inprocess` is the other publisher (Kafka off); both take the same
`schemas.contract` records, so consumers run the same handlers either way. `flush()` is the
durability point: it returns only when every record published since the last flush is
acknowledged, and raises `PublishError` otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

from lifecycle.kafka.security import KafkaSecurity, client_config
from lifecycle.logs import get_logger

Headers = Sequence[tuple[str, bytes]]


class PublishError(Exception):
    """Records could not be handed to the broker; `cause` names the client's error class.

    Infrastructure's own exception: callers wait it out (the relay) or translate it (the API).
    """

    def __init__(self, cause: str, detail: str | None = None) -> None:
        super().__init__(detail or cause)
        self.cause = cause


class Publisher(Protocol):
    def publish(self, topic: str, key: bytes, headers: Headers, value: bytes | None) -> None: ...

    def flush(self) -> None: ...


class KafkaPublisher:
    """kafka-python's producer, idempotent with acks from all in-sync replicas.

    Idempotence with at most 5 requests in flight keeps each partition in send order across
    retries. After a failure the producer is dropped and a fresh one made on the next publish,
    so the caller can resend from its last durable position on a clean producer session.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "lifecycle-relay",
        flush_timeout_s: float = 30.0,
        security: KafkaSecurity | None = None,
        **overrides: Any,
    ) -> None:
        self._config: dict[str, Any] = {
            **client_config(bootstrap, security),
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "max_in_flight_requests_per_connection": 5,
            "linger_ms": 5,
            "retries": 2_147_483_647,
            "retry_backoff_ms": 100,
            # Not kafka-python's 30 s: a broker back after an outage is used within a second.
            "reconnect_backoff_max_ms": 1_000,
            "request_timeout_ms": 10_000,
            "delivery_timeout_ms": 25_000,
            "max_block_ms": 10_000,
            "bootstrap_timeout_ms": 10_000,
            "allow_auto_create_topics": False,
            **overrides,
        }
        if self._config["max_in_flight_requests_per_connection"] > 5:
            raise ValueError("idempotent ordering needs max_in_flight_requests_per_connection <= 5")
        self._flush_timeout_s = flush_timeout_s
        self._producer: Any = None
        self._pending: list[Any] = []
        self._lock = threading.Lock()

    def publish(self, topic: str, key: bytes, headers: Headers, value: bytes | None) -> None:
        from kafka.errors import KafkaError

        with self._lock:
            try:
                if self._producer is None:
                    from kafka import KafkaProducer

                    self._producer = KafkaProducer(**self._config)
                future = self._producer.send(topic, value=value, key=key, headers=list(headers))
            except KafkaError as error:
                self._reset()
                raise PublishError(type(error).__name__) from error
            self._pending.append(future)

    def flush(self) -> None:
        from kafka.errors import KafkaError

        with self._lock:
            if self._producer is None:
                return
            pending, self._pending = self._pending, []
            try:
                self._producer.flush(timeout=self._flush_timeout_s)
            except KafkaError as error:
                self._reset()
                raise PublishError(type(error).__name__) from error
            for future in pending:
                if not future.is_done:
                    self._reset()
                    raise PublishError("KafkaTimeoutError", "flush returned before delivery")
                if future.failed():
                    exception = future.exception
                    self._reset()
                    raise PublishError(type(exception).__name__) from exception

    def close(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=timeout_s)
                self._producer = None
            self._pending = []

    def _reset(self) -> None:
        producer, self._producer, self._pending = self._producer, None, []
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:  # already failing; the next producer starts clean
                get_logger(__name__).warning("kafka.producer_close_failed")
