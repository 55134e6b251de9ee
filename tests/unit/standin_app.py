"""A stand-in for the faust app around an AggregatorRuntime, for tests without a broker: it
records the seeks and sends the runtime makes; the runtime, its service and threads are real."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class StandInConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []
        self.assigned: set[Any] = set()

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp.topic, tp.partition, offset))

    def assignment(self) -> set[Any]:
        return set(self.assigned)


class StandInProducer:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_and_wait(self, topic: str, *args: Any) -> None:
        self.sent.append(topic)


@dataclass
class StandInConf:
    id: str = "fedsynth-aggregator-test"


@dataclass
class StandInApp:
    consumer: StandInConsumer = field(default_factory=StandInConsumer)
    producer: StandInProducer = field(default_factory=StandInProducer)
    conf: StandInConf = field(default_factory=StandInConf)
