"""Every schema a topic declares exists, and every message schema has a topic."""

from schemas.registry import default_registry
from topics.registry import ALL_TOPICS, synthetic_topic


def test_topic_value_schemas_exist_and_cover_all_messages() -> None:
    names = set(default_registry().names)
    declared = {s for spec in (*ALL_TOPICS, synthetic_topic("x")) for s in spec.value_schemas}
    assert declared <= names, declared - names
    carried_in_chunks = {"GlobalModel"}
    assert names - declared - carried_in_chunks == set()
