"""Byte accounting shared by every runtime: a message is counted as the frame the codec produced."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mpsl.protocol.serde import Codec, framing_nbytes


@dataclass
class Traffic:
    """Bytes one client sent (up) and received (down): framed totals and tensor payload alone."""

    up: int = 0
    down: int = 0
    payload_up: int = 0
    payload_down: int = 0
    messages: int = 0


def carry(codec: Codec, traffic: Traffic, msg: Any, direction: Literal["up", "down"]) -> Any:
    """Encode, count, decode: the receiver only ever sees what the wire carried."""
    frame = codec.encode(msg)
    payload = len(frame) - framing_nbytes(frame)  # read off the frame, not recomputed from msg
    if direction == "up":
        traffic.up, traffic.payload_up = traffic.up + len(frame), traffic.payload_up + payload
    else:
        traffic.down, traffic.payload_down = traffic.down + len(frame), traffic.payload_down + payload
    traffic.messages += 1
    return codec.decode(frame)
