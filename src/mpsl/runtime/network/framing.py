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
    """Joins chunks into one frame; more than `max_bytes` in total is refused before it is buffered, and so
    is a piece other than the last under `min_chunk_bytes` (each chunk costs the receiver a fixed amount of
    work, so a frame may not be cut into more than max_bytes / min_chunk_bytes + 1 of them)."""

    def __init__(self, max_bytes: int, min_chunk_bytes: int = 1) -> None:
        self.max_bytes = max_bytes
        self.min_chunk_bytes = max(min_chunk_bytes, 1)
        self.max_chunks = max_bytes // self.min_chunk_bytes + 1
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def pending(self) -> bool:
        """A frame has begun and its last chunk has not arrived."""
        return bool(self._parts)

    def _refuse(self, reason: str) -> ProtocolError:
        self._parts, self._size = [], 0
        return ProtocolError(reason)

    def add(self, data: bytes, last: bool) -> bytes | None:
        """The whole frame once `last` arrives, else None."""
        self._size += len(data)
        if self._size > self.max_bytes:
            raise self._refuse(f"message larger than the limit of {self.max_bytes} bytes")
        if not last and len(data) < self.min_chunk_bytes:
            raise self._refuse(f"a chunk of {len(data)} bytes before the last; pieces of a frame are at least "
                               f"{self.min_chunk_bytes} bytes")
        if len(self._parts) + 1 > self.max_chunks:
            raise self._refuse(f"a frame in more than {self.max_chunks} chunks")
        self._parts.append(data)
        if not last:
            return None
        frame = b"".join(self._parts)
        self._parts, self._size = [], 0
        return frame
