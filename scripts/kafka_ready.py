"""Readiness probe for the local Kafka broker started by scripts/services.

Usage: python scripts/kafka_ready.py BOOTSTRAP DEADLINE_SECONDS [BROKERS]

Makes real requests (DescribeCluster, Metadata, then a consumer-group request) with
kafka-python until the broker answers with an unfenced broker and a group coordinator,
retrying until the deadline. With BROKERS (a cluster), ready also means that many brokers are
registered and unfenced. A secured broker is asked with the credentials in
LIFECYCLE_KAFKA_SECURITY_PROTOCOL / _SASL_MECHANISM / _SASL_USERNAME / _SASL_PASSWORD.

Exit codes: 0 ready; 1 not ready by the deadline (last error on stderr);
3 kafka-python is not importable (the caller falls back to a port check).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time


def _security_from_env() -> dict[str, str]:
    """SASL credentials for a secured broker, from the service's own setting names."""
    protocol = os.environ.get("LIFECYCLE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    if not protocol.startswith("SASL_"):
        return {}
    return {
        "security_protocol": protocol,
        "sasl_mechanism": os.environ.get("LIFECYCLE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
        "sasl_plain_username": os.environ.get("LIFECYCLE_KAFKA_SASL_USERNAME", ""),
        "sasl_plain_password": os.environ.get("LIFECYCLE_KAFKA_SASL_PASSWORD", ""),
    }


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print("usage: kafka_ready.py BOOTSTRAP DEADLINE_SECONDS [BROKERS]", file=sys.stderr)
        return 2
    bootstrap, deadline_s = argv[1], float(argv[2])
    expected = int(argv[3]) if len(argv) == 4 else 1
    try:
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaConfigurationError
    except ImportError:
        return 3

    # kafka-python logs every refused connection at WARNING/ERROR while the broker starts.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    deadline = time.monotonic() + deadline_s
    last_error = "no attempt made"
    while time.monotonic() < deadline:
        admin = None
        # Bound each attempt by the time left; the bootstrap wait is named differently in
        # kafka-python 2.x (api_version_auto_timeout_ms) and 3.x (bootstrap_timeout_ms).
        attempt_ms = int(max(0.5, min(5.0, deadline - time.monotonic())) * 1000)
        options = {
            "bootstrap_servers": bootstrap,
            "client_id": "lifecycle-services-probe",
            "request_timeout_ms": attempt_ms,
            "reconnect_backoff_ms": 100,
            "reconnect_backoff_max_ms": 500,
        }
        options.update(_security_from_env())
        for name in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms"):
            if name in KafkaAdminClient.DEFAULT_CONFIG:
                options[name] = attempt_ms
        try:
            admin = KafkaAdminClient(**options)
            cluster = admin.describe_cluster()
            brokers = [b for b in cluster.get("brokers", []) if not b.get("is_fenced", False)]
            if len(brokers) < expected:
                last_error = f"{len(brokers)} of {expected} brokers unfenced: {cluster!r}"
            else:
                admin.list_topics()
                # A fresh broker creates __consumer_offsets on the first group request and
                # answers COORDINATOR_NOT_AVAILABLE meanwhile: ready means groups work too.
                admin.list_group_offsets({"lifecycle-services-probe": None})
                return 0
        except (KafkaConfigurationError, TypeError) as exc:
            # A bug in this probe, not a broker that is still starting: no point retrying.
            print(f"kafka readiness probe misconfigured: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # any other failure is a reason to retry until the deadline
            last_error = f"{type(exc).__name__}: {exc}"
        finally:
            if admin is not None:
                with contextlib.suppress(Exception):
                    admin.close()
        time.sleep(0.2)
    print(f"kafka at {bootstrap} not ready: {last_error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
