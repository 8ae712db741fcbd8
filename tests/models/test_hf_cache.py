"""model.encoder.path takes a model id found in the local Hugging Face cache, and never downloads one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mpsl.packaged import minilm_dir
from tests.helpers import TINY

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def _fake_cache(home: Path) -> Path:
    """The layout huggingface_hub writes: refs/main names a snapshot whose files link to the packaged MiniLM."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / f"models--{MODEL_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        (snapshot / f).symlink_to(minilm_dir() / f)
    return snapshot


def _env(home: Path) -> dict[str, str]:
    """HF_HOME at the fake cache, the hub allowed but unreachable: a download attempt could not succeed."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    return {**env, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}


def test_an_encoder_path_that_is_a_cached_model_id_loads_that_model(tmp_path: Path) -> None:
    # Prepare
    _fake_cache(tmp_path / "hf")
    script = (
        "import torch\n"
        "from mpsl.config import load_config\n"
        "from mpsl.models.finetune import build_encoder\n"
        f"by_id = build_encoder(load_config(None, ['model.encoder.source=hf-bert', 'model.encoder.path={MODEL_ID}'])"
        ".model.encoder).encoder.state_dict()\n"
        "packaged = build_encoder(load_config(None, []).model.encoder).encoder.state_dict()\n"
        "assert by_id.keys() == packaged.keys() and len(by_id) > 50\n"
        "print(max((by_id[k] - packaged[k]).abs().max().item() for k in by_id))\n"
    )

    # Execute
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(tmp_path / "hf"),
                          timeout=300, check=False)

    # Assert: the same weights as the packaged MiniLM the cache entry links to
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip()) == 0.0


def test_a_model_id_missing_from_the_local_cache_is_one_clear_line(tmp_path: Path) -> None:
    # Prepare: a cache that holds MiniLM, not the model asked for
    _fake_cache(tmp_path / "hf")
    (tmp_path / "tiny.yaml").write_text("methods: [mpsl]\n")

    # Execute
    proc = subprocess.run([sys.executable, "-m", "mpsl", "run", "tiny.yaml", *TINY, "model.encoder.source=hf-bert",
                           "model.encoder.path=nobody/no-such-model", f"out_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=tmp_path, env=_env(tmp_path / "hf"), timeout=300,
                          check=False)

    # Assert
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "model.encoder.path: nobody/no-such-model" in proc.stderr
    assert "local Hugging Face cache" in proc.stderr and "never downloads" in proc.stderr
    assert str(tmp_path / "hf" / "hub") in proc.stderr  # the cache it looked in
