"""Where a result came from: package, torch and Python versions, and the git commit of the source."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

import mpsl
from mpsl.experiment.results import Versions


def git_commit() -> str | None:
    """The commit of the checkout mpsl is imported from, '+dirty' if it has uncommitted changes; None outside git."""
    source = Path(mpsl.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def versions() -> Versions:
    return Versions(mpsl=mpsl.__version__, torch=torch.__version__, python=platform.python_version(),
                    git_commit=git_commit())
