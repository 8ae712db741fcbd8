"""Byte accounting shared by every runtime: a message is counted as the frame the codec produces for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mpsl.protocol.serde import Codec, frame_nbytes, framing_nbytes, wire_copy

Direction = Literal["up", "down"]


@dataclass
class Traffic:
    """Bytes one client sent (up) and received (down): framed totals and tensor payload alone."""

    up: int = 0
    down: int = 0
    payload_up: int = 0
    payload_down: int = 0
    messages: int = 0

    def add(self, frame: int, payload: int, direction: Direction) -> None:
        if direction == "up":
            self.up, self.payload_up = self.up + frame, self.payload_up + payload
        else:
            self.down, self.payload_down = self.down + frame, self.payload_down + payload
        self.messages += 1


def carry(codec: Codec, traffic: Traffic, msg: Any, direction: Direction) -> Any:
    """Encode, count, decode: the receiver only ever sees what the wire carried."""
    frame = codec.encode(msg)
    traffic.add(len(frame), len(frame) - framing_nbytes(frame), direction)  # read off the frame, not recomputed
    return codec.decode(frame)


def count(traffic: Traffic, msg: Any, direction: Direction, wire_dtype: str = "float32") -> None:
    """Count the frame the codec would produce for `msg`, from shapes alone (serde.encoded_nbytes)."""
    traffic.add(*frame_nbytes(msg, wire_dtype), direction)


def relay(codec: Codec, traffic: Traffic, msg: Any, direction: Direction) -> Any:
    """What `carry` does without the bytes: count the frame from shapes, hand over the values the wire would
    deliver (fresh copies through the wire dtype, checked as decode checks them)."""
    count(traffic, msg, direction, codec.wire_dtype_name)
    return wire_copy(msg, codec.wire_dtype_name)
