"""One place turns the `LIFECYCLE_KAFKA_*` security settings into kafka-python's arguments."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lifecycle.kafka.security import KafkaSecurity, KafkaSecurityError, client_config
from lifecycle.settings import Settings


def test_the_default_is_plaintext_without_credentials() -> None:
    assert client_config("h:1") == {"bootstrap_servers": "h:1", "security_protocol": "PLAINTEXT"}
    assert Settings().kafka_security == KafkaSecurity()


def test_sasl_over_tls_from_settings_gives_every_client_the_same_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "LIFECYCLE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LIFECYCLE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "LIFECYCLE_KAFKA_SASL_USERNAME": "scout",
        "LIFECYCLE_KAFKA_SASL_PASSWORD": "s3cret-value",
        "LIFECYCLE_KAFKA_SSL_CAFILE": "/etc/kafka/ca.pem",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    security = settings.kafka_security
    assert client_config("h:1", security) == {
        "bootstrap_servers": "h:1",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "scout",
        "sasl_plain_password": "s3cret-value",
        "ssl_check_hostname": True,
        "ssl_cafile": "/etc/kafka/ca.pem",
    }
    assert security.principal == "scout"
    # Neither the settings nor the security object ever show the password.
    assert "s3cret-value" not in repr(settings) + repr(security) + str(settings)


def test_tls_client_certificates_need_both_halves() -> None:
    security = KafkaSecurity(protocol="SSL", ssl_certfile="c.pem", ssl_keyfile="k.pem")
    assert security.kwargs()["ssl_certfile"] == "c.pem"
    assert "sasl_mechanism" not in security.kwargs()
    with pytest.raises(KafkaSecurityError, match="certificate and its key"):
        KafkaSecurity(protocol="SSL", ssl_certfile="c.pem")


def test_sasl_without_credentials_fails_at_start_naming_the_settings() -> None:
    with pytest.raises(ValidationError, match="LIFECYCLE_KAFKA_SASL_USERNAME") as raised:
        Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN")
    assert "password" not in str(raised.value).lower().replace("sasl_password", "")
