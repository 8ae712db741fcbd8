"""Mini-batches read ahead on a background thread, so computing never waits on data it could have had.

A party's batches are known in advance (its order is drawn when the epoch starts), so the next
`depth` of them are read from the (memory-mapped) cache, and pinned for a CUDA device, while the
current one is computed. One small shared pool serves every party: a thousand simulated clients do
not mean a thousand threads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from mpsl.data.spec import SplitData
from mpsl.devices import pin, to_device

T = TypeVar("T")
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mpsl-read")


@dataclass(frozen=True)
class Batch:
    inputs: dict[str, torch.Tensor]  # modality -> [b, *shape]
    labels: torch.Tensor  # [b]

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Batch:
        moved = to_device({**self.inputs, "__labels__": self.labels}, device)
        labels = moved.pop("__labels__")
        return Batch(moved, labels)


class Lookahead(Generic[T]):
    """Items read(start), read(start + 1), ... read(stop - 1), each begun `depth` items before it is taken."""

    def __init__(self, read: Callable[[int], T], start: int, stop: int, depth: int) -> None:
        self._read, self._next, self._stop, self._depth = read, start, stop, depth
        self._pending: deque[Future[T]] = deque()
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self._depth and self._next < self._stop:
            self._pending.append(_POOL.submit(self._read, self._next))
            self._next += 1

    def take(self) -> T:
        if self._pending:
            item = self._pending.popleft().result()
        elif self._next < self._stop:  # depth 0: read now, on this thread
            item = self._read(self._next)
            self._next += 1
        else:
            raise IndexError("no batch left")
        self._fill()
        return item


def read_batch(data: SplitData, index: torch.Tensor, device: torch.device) -> Batch:
    """Rows `index` of `data` as model inputs in host memory, pinned when they are bound for CUDA."""
    view = data.subset(index)
    return Batch(pin(view.inputs, device), pin({"y": view.labels}, device)["y"])


def batches(data: SplitData, order: torch.Tensor, batch_size: int, device: torch.device,
            depth: int) -> Iterator[Batch]:
    """`data` in mini-batches of `order`, read ahead and copied to `device` as each is taken."""
    count = -(-len(order) // batch_size)
    ahead = Lookahead(lambda i: read_batch(data, order[i * batch_size:(i + 1) * batch_size], device),  # [b]
                      0, count, depth)
    for _ in range(count):
        yield ahead.take().to(device)
