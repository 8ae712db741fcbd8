"""Cut encoded frames into gRPC-sized chunks and join them back, refusing anything over the limit."""

from __future__ import annotations

from collections.abc import Iterator

from mpsl.errors import ProtocolError


def chunks(frame: bytes, size: int) -> Iterator[tuple[bytes, bool]]:
    """(piece, is_last) pieces of at most `size` bytes; an empty frame is one empty last piece."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    for start in range(0, max(len(frame), 1), size):
        yield frame[start:start + size], start + size >= len(frame)


class Reassembler:
    """Joins chunks into one frame; more than `max_bytes` in total is refused before it is buffered."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, data: bytes, last: bool) -> bytes | None:
        """The whole frame once `last` arrives, else None."""
        self._size += len(data)
        if self._size > self.max_bytes:
            self._parts, self._size = [], 0
            raise ProtocolError(f"message larger than the limit of {self.max_bytes} bytes")
        self._parts.append(data)
        if not last:
            return None
        frame = b"".join(self._parts)
        self._parts, self._size = [], 0
        return frame
