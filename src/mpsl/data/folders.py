"""Building a cache folder so that a crash or a concurrent builder never leaves half of one behind."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def build_folder(target: Path, fill: Callable[[Path], None], is_complete: Callable[[Path], bool],
                 replace: bool = False) -> Path:
    """`fill` writes into a private temporary sibling of `target`, which is then renamed into place.

    An existing target is replaced when `replace` is set or when it is incomplete (e.g. a file was
    deleted by hand); if another builder finished the same target first, its folder is kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        fill(tmp)
        _move_into_place(tmp, target, replace, is_complete)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into_place(tmp: Path, target: Path, replace: bool, is_complete: Callable[[Path], bool]) -> None:
    old = None
    if target.exists() and (replace or not is_complete(target)):
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        if not is_complete(target):  # not a concurrent builder that won the race
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
