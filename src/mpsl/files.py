"""Writing result and checkpoint files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpsl.errors import MpslError


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """`write` fills a temporary file beside `path`, which is then renamed over it in one step. The file is
    flushed to disk before the rename and the folder after it, so a power loss leaves the old file or the new
    one, never an empty or partial one under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    _fsync(tmp)
    tmp.replace(path)
    _fsync(path.parent)
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MpslError(f"{path} is not valid JSON: {exc}") from None
