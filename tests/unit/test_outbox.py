from pathlib import Path

from agents.outbox import Outbox, OutboxMessage


def _msg(i: int) -> OutboxMessage:
    return OutboxMessage(
        f"id-{i}", "fedsynth.updates", b"site", bytes([i]) * 10, (("traceparent", b"00-x"),)
    )


def test_pending_survives_a_restart_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    for i in range(3):
        box.put(_msg(i))
    box.ack("id-1")
    reopened = Outbox(tmp_path)
    assert [m.message_id for m in reopened.pending()] == ["id-0", "id-2"]
    assert reopened.pending()[1] == _msg(2)
    reopened.put(_msg(5))
    assert [m.message_id for m in Outbox(tmp_path).pending()] == ["id-0", "id-2", "id-5"]


def test_ack_of_unknown_id_is_harmless(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.put(_msg(1))
    box.ack("nope")
    assert len(box) == 1
    box.ack("id-1")
    assert len(box) == 0
