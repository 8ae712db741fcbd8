"""The command line as a user meets it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY


def _mpsl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpsl", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, check=False)


@pytest.mark.parametrize(
    ("yaml_text", "args", "names"),
    [
        ("train:\n  epochs: many\n", [], "train.epochs"),
        ("trian: {}\n", [], "trian"),
        ("", ["num_clients=100000"], "num_clients"),
        ("", ["data.name=imagenet"], "unknown dataset 'imagenet'"),
        ("", ["model.encoder.source=random", "model.encoder.depth=2", "model.encoder.trainable_blocks=3",
              "data.name=synthetic-av"], "trainable_blocks"),
        ("model: [1, 2\n", [], "not valid YAML"),
    ],
)
def test_bad_config_exits_nonzero_with_one_line(tmp_path: Path, yaml_text: str, args: list[str], names: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)

    proc = _mpsl("run", str(config), *args, f"out_dir={tmp_path}/runs", cwd=tmp_path)

    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert names in lines[0] and lines[0].startswith("mpsl: error:")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_config_file(tmp_path: Path) -> None:
    proc = _mpsl("run", "nope.yaml", cwd=tmp_path)

    assert proc.returncode == 2 and "nope.yaml does not exist" in proc.stderr


def test_run_writes_results(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text("name: cli\nmethods: [mpsl]\n")

    proc = _mpsl("run", str(config), *TINY, f"out_dir={tmp_path}", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "cli" / "mpsl" / "results.json").read_text())
    assert results["num_clients"] == 3
    assert "| mpsl " in proc.stdout


def test_list_shows_the_registries(tmp_path: Path) -> None:
    proc = _mpsl("list", cwd=tmp_path)

    assert proc.returncode == 0
    assert "avdigits" in proc.stdout and "dirichlet" in proc.stdout and "minilm" in proc.stdout
