"""The one progress bar every stage uses: a live tqdm bar on a terminal, one plain line per stage otherwise.

On a terminal the bar redraws itself in place; in a log file or a pipe those redraws would be hundreds of
`\\r` frames, so there each stage prints one line when it ends instead ("avdigits: degrading samples:
5000 samples in 41.2 s"). `enabled=False` (the config's `progress: false`) prints nothing at all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm


class Progress:
    """What callers use of a bar: iterate, `update`, `set_postfix`, `close`, and `with`."""

    def __init__(self, iterable: Iterable[Any] | None, desc: str, total: int | None, unit: str, enabled: bool,
                 transient: bool, stream: TextIO) -> None:
        self.iterable, self.desc, self.unit, self.stream = iterable, desc, unit, stream
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.live = enabled and stream.isatty()
        self.line = enabled and not self.live and not transient  # a plain summary line when the stage ends
        self.bar = tqdm(iterable, desc=desc, total=self.total, unit=unit, disable=not self.live, leave=not transient,
                        dynamic_ncols=True, file=stream)
        self.n, self.postfix, self.started, self.closed = 0, "", time.perf_counter(), False

    def __iter__(self) -> Iterator[Any]:
        for item in self.bar:
            yield item
            self.n += 1
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.bar.close()
        if self.line:
            units = self.unit if self.n == 1 else f"{self.unit}s"
            extra = f" ({self.postfix})" if self.postfix else ""
            print(f"{self.desc}: {self.n} {units} in {time.perf_counter() - self.started:.1f} s{extra}",
                  file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, total: int | None = None, unit: str = "it",
                 enabled: bool = True, transient: bool = False, stream: TextIO | None = None) -> Progress:
    """A bar for one stage. `transient`: on a terminal it vanishes when done, and off a terminal it prints no
    line (for stages whose caller prints its own line, such as a training epoch). Writes to stderr."""
    return Progress(iterable, desc, total, unit, enabled, transient, stream if stream is not None else sys.stderr)
