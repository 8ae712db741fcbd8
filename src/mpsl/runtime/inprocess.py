"""In-process runtime: handles that call client objects directly.

The step only ever sees what a network would carry (no shared memory or autograd graph, no peeking at
another client's tensors) and byte counts are what a network runtime would send. By default a message is
counted from its shapes and handed over as a fresh copy with the wire's values (`relay`); `encode=True`
really encodes and decodes every message, for debugging the codec in a simulation.
"""

from __future__ import annotations

from typing import Any

from mpsl.protocol.client import SplitClient
from mpsl.protocol.messages import CutGrad, EpochMetrics, FeatureGrad, Features, Tokens
from mpsl.protocol.serde import Codec
from mpsl.runtime.traffic import Direction, Traffic, carry, relay


class InProcessHandle:
    def __init__(self, client: SplitClient, codec: Codec | None = None, encode: bool = False) -> None:
        self.client = client
        self.client_id = client.client_id
        self.codec = codec or Codec()
        self.encode = encode
        self.traffic = Traffic()
        self.exhausted = False

    @property
    def epoch(self) -> int | None:
        return self.client.epoch

    def _move(self, msg: Any, direction: Direction) -> Any:
        return (carry if self.encode else relay)(self.codec, self.traffic, msg, direction)

    def start_epoch(self, epoch: int) -> None:
        self.client.start_epoch(epoch)
        self.exhausted = False

    def embed(self, step: int) -> Tokens | None:
        msg = self.client.embed(step)
        self.exhausted = msg is None
        return None if msg is None else self._move(msg, "up")

    def features(self, msg: Features) -> FeatureGrad:
        reply = self.client.features(self._move(msg, "down"))
        return self._move(reply, "up")

    def cut_grad(self, msg: CutGrad) -> None:
        self.client.cut_grad(self._move(msg, "down"))

    def end_epoch(self) -> EpochMetrics:
        return self._move(self.client.end_epoch(), "up")
