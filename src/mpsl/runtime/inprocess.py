"""In-process runtime: handles that call client objects directly, through the real wire encoding.

Every message is encoded and decoded, so the step can only see what a network would carry (no
shared autograd graph, no peeking at another client's tensors) and byte counts are what a network
runtime would send.
"""

from __future__ import annotations

from mpsl.protocol.client import SplitClient
from mpsl.protocol.messages import CutGrad, FeatureGrad, Features, Tokens
from mpsl.protocol.serde import Codec
from mpsl.runtime.traffic import Traffic, carry


class InProcessHandle:
    def __init__(self, client: SplitClient, codec: Codec | None = None) -> None:
        self.client = client
        self.client_id = client.client_id
        self.codec = codec or Codec()
        self.traffic = Traffic()
        self.exhausted = False

    @property
    def epoch(self) -> int | None:
        return self.client.epoch

    def start_epoch(self, epoch: int) -> None:
        self.client.start_epoch(epoch)
        self.exhausted = False

    def embed(self, step: int) -> Tokens | None:
        msg = self.client.embed(step)
        self.exhausted = msg is None
        return None if msg is None else carry(self.codec, self.traffic, msg, "up")

    def features(self, msg: Features) -> FeatureGrad:
        reply = self.client.features(carry(self.codec, self.traffic, msg, "down"))
        return carry(self.codec, self.traffic, reply, "up")

    def cut_grad(self, msg: CutGrad) -> None:
        self.client.cut_grad(carry(self.codec, self.traffic, msg, "down"))

    def end_epoch(self) -> None:
        self.client.end_epoch()
