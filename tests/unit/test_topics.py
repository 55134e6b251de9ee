"""The topic registry, client settings and bootstrap discovery (no broker needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedsynth.errors import ConfigError
from topics import clients, registry
from topics.discovery import resolve_bootstrap, write_record
from topics.registry import ALL_TOPICS, TOPICS_BY_NAME, CleanupPolicy, TopicSpec, synthetic_topic


def test_registry_names_the_architecture_topics() -> None:
    assert [t.name for t in ALL_TOPICS] == [
        "fedsynth.control", "fedsynth.site-events", "fedsynth.share-relay", "fedsynth.updates",
        "fedsynth.unmask", "fedsynth.global-model", "fedsynth.audit", "fedsynth.dead-letter",
    ]
    assert set(TOPICS_BY_NAME) == {t.name for t in ALL_TOPICS}


def test_single_partition_topics_and_compaction() -> None:
    one = {t.name for t in ALL_TOPICS if t.partitions == 1}
    assert one == {"fedsynth.control", "fedsynth.global-model", "fedsynth.audit"}
    assert {t.partitions for t in ALL_TOPICS if t.name not in one} == {registry.DEFAULT_PARTITIONS}
    compacted = [t.name for t in ALL_TOPICS if t.cleanup_policy is CleanupPolicy.COMPACT]
    assert compacted == ["fedsynth.global-model"]
    assert registry.AUDIT.retention_ms == -1


def test_chunked_topics_fit_a_900_kib_chunk() -> None:
    for spec in (registry.UPDATES, registry.GLOBAL_MODEL, registry.DEAD_LETTER):
        assert spec.max_message_bytes >= 900 * 1024 + 64 * 1024
    assert clients.MAX_REQUEST_BYTES >= max(t.max_message_bytes for t in ALL_TOPICS)


def test_configs_are_kafka_strings() -> None:
    assert registry.GLOBAL_MODEL.configs() == {
        "cleanup.policy": "compact", "retention.ms": "-1", "max.message.bytes": str(2 * 1024**2),
    }


def test_spec_is_frozen_and_validated() -> None:
    with pytest.raises(AttributeError):
        registry.CONTROL.partitions = 2  # type: ignore[misc]
    with pytest.raises(ConfigError):
        TopicSpec("other.topic", 1, "k", ("X",), 1000)
    with pytest.raises(ConfigError):
        TopicSpec("fedsynth.x", 0, "k", ("X",), 1000)
    with pytest.raises(ConfigError):
        TopicSpec("fedsynth.x", 1, "k", ("X",), 0)


def test_synthetic_topic() -> None:
    spec = synthetic_topic("heart_disease_uci")
    assert spec.name == "fedsynth.synthetic.heart_disease_uci"
    assert spec.key == "dataset id" and spec.partitions == registry.DEFAULT_PARTITIONS
    for bad in ("", "a b", "x/y", "a.b"):
        with pytest.raises(ConfigError):
            synthetic_topic(bad)


def test_producer_defaults_avoid_broker_quirks() -> None:
    d = clients.PRODUCER_DEFAULTS
    assert d["enable_idempotence"] is False and d["acks"] == "all"
    assert d["max_request_size"] == 4 * 1024 * 1024 and d["compression_type"] is None
    with pytest.raises(ConfigError):
        clients.make_producer("127.0.0.1:1", transactional_id="tx")


def test_consumer_settings() -> None:
    s = clients.consumer_settings("g")
    assert s["enable_auto_commit"] is False and s["auto_offset_reset"] == "earliest"
    assert s["max_partition_fetch_bytes"] >= clients.MAX_REQUEST_BYTES
    assert s["fetch_max_bytes"] >= s["max_partition_fetch_bytes"]


def test_faust_accepts_settings() -> None:
    faust = pytest.importorskip("faust")
    app = faust.App("t", broker="kafka://127.0.0.1:1", **clients.faust_settings(web_port=1))
    assert app.conf.broker_session_timeout == 10.0
    assert app.conf.topic_partitions == registry.DEFAULT_PARTITIONS
    assert app.conf.producer_max_request_size == clients.MAX_REQUEST_BYTES
    assert app.conf.topic_allow_declare is False
    assert str(app.conf.processing_guarantee.value) == "at_least_once"


def test_resolve_bootstrap_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDSYNTH_BOOTSTRAP", raising=False)
    with pytest.raises(ConfigError, match="run `fedsynth broker` or pass --bootstrap"):
        resolve_bootstrap(None, tmp_path)
    write_record("127.0.0.1:7777", os.getpid(), tmp_path)  # a live pid
    assert resolve_bootstrap(None, tmp_path) == "127.0.0.1:7777"
    monkeypatch.setenv("FEDSYNTH_BOOTSTRAP", "env:9092")
    assert resolve_bootstrap(None, tmp_path) == "env:9092"
    assert resolve_bootstrap("cli:9092", tmp_path) == "cli:9092"


def test_resolve_bootstrap_ignores_garbage_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDSYNTH_BOOTSTRAP", raising=False)
    (tmp_path / "broker.json").write_text("{not json")
    with pytest.raises(ConfigError):
        resolve_bootstrap(None, tmp_path)
    (tmp_path / "broker.json").write_text(json.dumps({"bootstrap": "x:1"}))
    with pytest.raises(ConfigError):
        resolve_bootstrap(None, tmp_path)


def test_home_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDSYNTH_BOOTSTRAP", raising=False)
    monkeypatch.setenv("FEDSYNTH_HOME", str(tmp_path))
    write_record("127.0.0.1:8888", os.getpid())
    assert (tmp_path / "broker.json").exists()
    assert resolve_bootstrap(None) == "127.0.0.1:8888"
