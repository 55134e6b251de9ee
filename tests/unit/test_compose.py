"""docker-compose.yml and Dockerfile: the same services on Apache Kafka (KRaft, one node)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fedsynth.cli import COMMANDS
from topics.registry import ALL_TOPICS

ROOT = Path(__file__).resolve().parents[2]
HOSPITALS = {"Cleveland", "Hungary", "VA Long Beach", "Switzerland"}
APP_SERVICES = {"topics", "aggregator", "gateway", "agent-cleveland", "agent-hungary",
                "agent-va-long-beach", "agent-switzerland"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == APP_SERVICES | {"kafka"}


def test_kafka_is_one_kraft_node_with_large_messages(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= max(t.max_message_bytes for t in ALL_TOPICS)
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) > 900 * 1024
    assert "healthcheck" in kafka


def test_app_services_share_image_and_bootstrap(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert service["build"]["context"] == ".", name
        assert service["image"] == "fedsynth:latest", name
        assert service["environment"]["FEDSYNTH_BOOTSTRAP"] == "kafka:9092", name
        command = service["command"]
        assert command[0] == "fedsynth" and command[1] in COMMANDS, name
    assert compose["services"]["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert (compose["services"]["aggregator"]["depends_on"]["topics"]["condition"]
            == "service_completed_successfully")


def test_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["topics"]["command"][:4] == ["fedsynth", "topics", "--bootstrap", "kafka:9092"]
    assert services["aggregator"]["command"] == ["fedsynth", "aggregator"]
    assert services["gateway"]["command"] == ["fedsynth", "gateway", "--port", "8080"]
    assert "8080:8080" in services["gateway"]["ports"]
    sites = {s["command"][3] for n, s in services.items() if n.startswith("agent-")}
    assert sites == HOSPITALS
    assert all(s["command"][2] == "--site" for n, s in services.items() if n.startswith("agent-"))


def test_dockerfile_installs_cpu_torch_before_the_package() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert "FROM python:3.11-slim" in lines
    torch = next(i for i, line in enumerate(lines) if "torch==2.13.0" in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch]
    package = lines.index("RUN pip install .")
    assert torch < package


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_is_valid() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("no docker compose client here (docker lacks the compose plugin)")
    done = subprocess.run([*command, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
