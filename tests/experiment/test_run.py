from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpsl.data import DATASETS
from mpsl.experiment.run import run_experiment
from tests.helpers import tiny_config

REQUIRED_TOP = {"method", "dataset", "num_clients", "epochs", "seed", "config", "history", "final", "comm",
                "flops", "wall_seconds"}


def test_a_short_run_learns_and_writes_valid_results(tmp_path: Path) -> None:
    # Prepare
    cfg = tiny_config(f"out_dir={tmp_path}", "name=e2e", "train.epochs=4", "train.server_lr=1e-3",
                      "data.train_size=192")

    # Execute
    returned = run_experiment(cfg)

    # Assert
    run_dir = tmp_path / "e2e"
    for method, result in zip(cfg.methods, returned, strict=True):
        saved = json.loads((run_dir / method / "results.json").read_text())
        assert set(saved) >= REQUIRED_TOP
        assert saved["method"] == method and saved["dataset"] == "synthetic-av"
        assert [h["epoch"] for h in saved["history"]] == [1, 2, 3, 4]
        assert {"epoch", "train_loss", "test_accuracy"} <= set(saved["history"][0])
        losses = [h["train_loss"] for h in saved["history"]]
        assert losses[-1] < 0.7 * losses[0], f"{method} did not learn: {losses}"
        assert saved["final"]["test_accuracy"] > 0.5  # 4 classes: chance is 0.25
        assert {"test_accuracy_image_only", "test_accuracy_audio_only"} <= set(saved["final"])
        assert saved["comm"]["bytes_up_per_client"] > 0 and saved["comm"]["bytes_down_per_client"] > 0
        assert saved["flops"]["server_per_sample"] > saved["flops"]["client_per_sample"] > 0
        assert saved["config"]["model"]["encoder"]["source"] == "random"
        assert saved == json.loads(json.dumps(result))
    mpsl_final = json.loads((run_dir / "mpsl" / "results.json").read_text())["final"]
    assert len(mpsl_final["test_accuracy_personalized"]) == cfg.num_clients
    assert (run_dir / "accuracy.png").stat().st_size > 10_000
    assert "| mpsl " in (run_dir / "summary.md").read_text()


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_registered_dataset_trains_a_few_mpsl_steps(name: str, tmp_path: Path,
                                                          data_cache: Path) -> None:
    cfg = tiny_config(f"data.name={name}", f"data.cache_dir={data_cache}", "data.train_size=60",
                      "data.test_size=30", "methods=[mpsl]", f"out_dir={tmp_path}",
                      "eval.personalized=false")

    (result,) = run_experiment(cfg)

    assert result["dataset"] == name
    assert result["history"][0]["steps"] >= 1
    assert 0.0 <= result["final"]["test_accuracy"] <= 1.0
    assert sum(result["samples_per_client"]) == 60
