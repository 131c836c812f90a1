"""How every Kafka client of the service authenticates: the one place that turns the
`LIFECYCLE_KAFKA_*` security settings into kafka-python keyword arguments.

Producer, group members, admin clients, the admin API's inspector, the audit tools and the
consumer kit all build their configuration through `client_config`, so a broker with TLS and
SASL (SCRAM-SHA-256/512 or PLAIN) and ACLs is reached the same way by each of them. Each
process runs under its own principal (the relay under the lifecycle service's, a downstream
service under its own): the credentials come from that process's environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PROTOCOLS: tuple[Protocol, ...] = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS: tuple[Mechanism, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSecurityError(ValueError):
    """Security settings that cannot work together (named, never with a secret's value)."""


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS (a CA to trust, optionally a client certificate) and SASL credentials.

    The default is plaintext without authentication: the embedded default and the local test
    broker. `repr` never shows the password."""

    protocol: Protocol = "PLAINTEXT"
    sasl_mechanism: Mechanism | None = None
    username: str | None = None
    password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise KafkaSecurityError(f"unknown security protocol {self.protocol!r}")
        sasl = self.protocol.startswith("SASL_")
        if sasl and (not self.sasl_mechanism or not self.username or self.password is None):
            raise KafkaSecurityError(
                f"{self.protocol} needs LIFECYCLE_KAFKA_SASL_MECHANISM, "
                "LIFECYCLE_KAFKA_SASL_USERNAME and LIFECYCLE_KAFKA_SASL_PASSWORD"
            )
        if self.sasl_mechanism is not None and self.sasl_mechanism not in MECHANISMS:
            raise KafkaSecurityError(f"unknown SASL mechanism {self.sasl_mechanism!r}")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise KafkaSecurityError("a client certificate and its key go together")

    def __repr__(self) -> str:
        return (
            f"KafkaSecurity(protocol={self.protocol!r}, sasl_mechanism={self.sasl_mechanism!r}, "
            f"username={self.username!r})"
        )

    @property
    def principal(self) -> str | None:
        """Who the broker sees (the SASL user); None without SASL."""
        return self.username if self.protocol.startswith("SASL_") else None

    def kwargs(self) -> dict[str, Any]:
        """kafka-python's keyword arguments for this security (any client class)."""
        found: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol.startswith("SASL_"):
            found.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password,
            )
        if self.protocol.endswith("SSL"):
            found["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name):
                    found[name] = getattr(self, name)
        return found


PLAINTEXT = KafkaSecurity()


def client_config(bootstrap: str, security: KafkaSecurity | None = None) -> dict[str, Any]:
    """`bootstrap_servers` and the security keyword arguments, for any kafka-python client."""
    return {"bootstrap_servers": bootstrap, **(security or PLAINTEXT).kwargs()}
