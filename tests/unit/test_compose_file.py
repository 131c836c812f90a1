"""docker-compose.yml is the production-shaped description: it must stay a valid stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def load() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def test_every_long_running_service_has_a_health_check_or_depends_on_healthy_ones() -> None:
    services = load()["services"]
    for name in ("postgres", "kafka-1", "kafka-2", "kafka-3", "api"):
        assert "healthcheck" in services[name], name
    for name in ("relay", "erasure", "scout", "chat", "mail"):
        port = services[name]["environment"]["LIFECYCLE_PROBE_PORT"]
        assert f"127.0.0.1:{port}/readyz" in " ".join(services[name]["healthcheck"]["test"]), name
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_completed_successfully":
                assert services[dependency]["restart"] == "no", dependency  # a one-shot job
            else:
                assert "healthcheck" in services[dependency]


def test_every_process_starts_after_the_migrations_ran() -> None:
    services = load()["services"]
    migrate = " ".join(services["migrate"]["command"])
    assert "lifecycle migrate &&" in migrate
    for name in ("scout", "chat", "mail"):
        assert f"lifecycle migrate --service {name}" in migrate
    for name in ("api", "topics", "relay", "erasure", "scout", "chat", "mail"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        ), name


def test_service_containers_get_database_kafka_and_key_from_the_environment() -> None:
    services = load()["services"]
    for name in ("api", "topics", "relay", "erasure", "scout", "chat", "mail"):
        env = services[name]["environment"]
        for variable in (
            "LIFECYCLE_DATABASE_URL",
            "LIFECYCLE_KAFKA_BOOTSTRAP",
            "LIFECYCLE_MASTER_KEY",
            "LIFECYCLE_API_TOKENS",
        ):
            assert variable in env, (name, variable)


def test_kafka_is_a_three_node_kraft_cluster_from_the_official_image() -> None:
    services = load()["services"]
    nodes = [services[f"kafka-{n}"] for n in (1, 2, 3)]
    voters = "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
    for n, kafka in enumerate(nodes, start=1):
        env = kafka["environment"]
        assert kafka["image"].startswith("apache/kafka:4.")
        assert env["KAFKA_NODE_ID"] == n
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == 2
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 3
    env = services["topics"]["environment"]
    assert env["LIFECYCLE_KAFKA_REPLICATION_FACTOR"] == "3"
    assert len(env["LIFECYCLE_KAFKA_BOOTSTRAP"].split(",")) == 3


def test_each_consumer_has_a_stable_instance_id_of_its_own() -> None:
    services = load()["services"]
    ids = [services[name]["environment"]["LIFECYCLE_INSTANCE_ID"] for name in
           ("erasure", "scout", "chat", "mail")]  # fmt: skip
    assert len(set(ids)) == len(ids)


def test_every_process_kind_of_the_cli_runs_as_a_service() -> None:
    commands = {
        " ".join(service["command"][1:3])
        for service in load()["services"].values()
        if service.get("command", [""])[0] == "lifecycle"
    }
    assert commands >= {
        "serve --host",
        "topics",
        "relay",
        "erasure",
        "consume scout",
        "consume chat",
        "consume mail",
    }


def test_every_party_reaches_kafka_under_its_own_principal_on_an_authorizing_broker() -> None:
    """Issue 19: the broker authenticates (SASL) and authorizes (standard authorizer, nothing
    allowed without an ACL); each erasing service runs as itself, the service's processes as
    `lifecycle`, topics and ACLs are the admin's."""
    services = load()["services"]
    kafka = services["kafka-1"]["environment"]
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert kafka["KAFKA_SUPER_USERS"] == "User:admin"
    assert "PLAINTEXT:PLAINTEXT" not in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    expected = {"api": "lifecycle", "relay": "lifecycle", "erasure": "lifecycle"}
    expected |= {name: name for name in ("scout", "chat", "mail")}
    expected |= {"topics": "admin", "acls": "admin"}
    for name, principal in expected.items():
        env = services[name]["environment"]
        assert env["LIFECYCLE_KAFKA_SASL_USERNAME"] == principal, name
        assert env["LIFECYCLE_KAFKA_SECURITY_PROTOCOL"].startswith("SASL_"), name
    assert services["acls"]["command"] == ["lifecycle", "acls", "--apply"]


def test_prometheus_scrapes_the_api_and_every_worker_probe() -> None:
    services = load()["services"]
    config = yaml.safe_load((COMPOSE.parent / "ops" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert "api:8000" in targets
    for name in ("relay", "erasure", "scout", "chat", "mail"):
        env = services[name]["environment"]
        assert env["LIFECYCLE_PROBE_HOST"] == "0.0.0.0", name
        assert f"{name}:{env['LIFECYCLE_PROBE_PORT']}" in targets, name
    assert "./ops/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
