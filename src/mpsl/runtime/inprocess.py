"""In-process runtime: handles that call client objects directly, through the real wire encoding.

Every message is encoded and decoded, so the step can only see what a network would carry (no
shared autograd graph, no peeking at another client's tensors) and byte counts are what a network
runtime would send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpsl.protocol.client import SplitClient
from mpsl.protocol.messages import CutGrad, FeatureGrad, Features, Tokens
from mpsl.protocol.serde import Codec, framing_nbytes


@dataclass
class Traffic:
    """Bytes one client sent (up) and received (down): framed totals and tensor payload alone."""

    up: int = 0
    down: int = 0
    payload_up: int = 0
    payload_down: int = 0
    messages: int = 0


class InProcessHandle:
    def __init__(self, client: SplitClient, codec: Codec | None = None) -> None:
        self.client = client
        self.client_id = client.client_id
        self.codec = codec or Codec()
        self.traffic = Traffic()

    def _carry(self, msg: Any, direction: str) -> Any:
        frame = self.codec.encode(msg)
        payload = len(frame) - framing_nbytes(frame)  # read off the frame, not recomputed from msg
        t = self.traffic
        if direction == "up":
            t.up, t.payload_up = t.up + len(frame), t.payload_up + payload
        else:
            t.down, t.payload_down = t.down + len(frame), t.payload_down + payload
        t.messages += 1
        return self.codec.decode(frame)

    def start_epoch(self, epoch: int) -> None:
        self.client.start_epoch(epoch)

    def embed(self, step: int) -> Tokens | None:
        msg = self.client.embed(step)
        return None if msg is None else self._carry(msg, "up")

    def features(self, msg: Features) -> FeatureGrad:
        return self._carry(self.client.features(self._carry(msg, "down")), "up")

    def cut_grad(self, msg: CutGrad) -> None:
        self.client.cut_grad(self._carry(msg, "down"))

    def end_epoch(self) -> None:
        self.client.end_epoch()

