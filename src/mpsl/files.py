"""Writing result and checkpoint files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpsl.errors import MpslError


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """`write` fills a temporary file beside `path`, which is then renamed over it in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
    return path


def write_json(path: Path, data: Any) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MpslError(f"{path} is not valid JSON: {exc}") from None
