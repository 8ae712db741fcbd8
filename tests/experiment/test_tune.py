"""--tune keeps the setting with the best validation score, never the best test score, and records the grid."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mpsl.config import Config
from mpsl.data import Dataset, load_dataset
from mpsl.errors import ConfigError
from mpsl.experiment.methods import METHODS
from mpsl.experiment.results import RunResult
from mpsl.experiment.tune import tune_method
from tests.experiment.test_results import _result
from tests.helpers import tiny_config

# trial i of the grid: (final validation accuracy, final test accuracy); the test-best is trial 0
SCORES = [(0.50, 0.90), (0.80, 0.60), (0.70, 0.70)]


def _fake_train(cfg: Config, dataset: Dataset, name: str, out_dir: Path) -> RunResult:
    """A run that ends with the scores of its grid position (found by its server rate) and saves like one."""
    position = [0.1, 1.0, 10.0].index(round(cfg.train.server_lr / tiny_config().train.server_lr, 6))
    val, test = SCORES[position]
    base = _result()
    last = dataclasses.replace(base.history[-1], val={"val_accuracy": val}, test={"test_accuracy": test})
    result = dataclasses.replace(base, method=name, config=cfg, history=(*base.history[:-1], last),
                                 final={"test_accuracy": test})
    out_dir.mkdir(parents=True)
    result.save(out_dir / "results.json")
    return result


def test_the_validation_best_is_kept_where_the_test_best_differs(tmp_path: Path) -> None:
    # Prepare
    cfg = tiny_config("data.val_size=16")
    dataset = load_dataset(cfg.data)

    # Execute
    chosen = tune_method(cfg, dataset, "centralized", tmp_path, _fake_train)

    # Assert: trial 1 (val 0.80), not trial 0 (test 0.90); the grid and scores are in results.json
    assert chosen.tuning.chosen == 1 and chosen.final["test_accuracy"] == 0.60
    assert [t.val for t in chosen.tuning.trials] == [s[0] for s in SCORES]
    assert chosen.tuning.trials[1].overrides["train.server_lr"] == pytest.approx(cfg.train.server_lr)
    saved = RunResult.load(tmp_path / "centralized" / "results.json")
    assert saved.tuning == chosen.tuning and saved.config.train.server_lr == chosen.config.train.server_lr
    assert len(json.loads((tmp_path / "centralized" / "results.json").read_text())["tuning"]["trials"]) == 3


def test_tuning_without_a_validation_split_is_refused_naming_the_key(tmp_path: Path) -> None:
    cfg = tiny_config()

    with pytest.raises(ConfigError, match="data.val_size"):
        tune_method(cfg, load_dataset(cfg.data), "mpsl", tmp_path, _fake_train)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_declares_a_grid_of_valid_settings(name: str) -> None:
    cfg = tiny_config("tune.lr_factors=[0.5,2]", "tune.local_epochs=[1,3]")

    grid = METHODS.get(name).grid(cfg)

    expected = {"mpsl": 4, "splitfed": 4, "fedavg": 4, "fedavg-adapter": 4, "centralized": 2}[name]
    assert len(grid) == expected and len({tuple(sorted(g.items())) for g in grid}) == expected
    for overrides in grid:
        cfg.replace(**overrides)  # every setting is a valid config


def test_with_seeds_the_first_seed_tunes_and_every_other_trains_once_at_its_choice(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    # Prepare: record each training's seed and rate
    import mpsl.experiment.run as run

    calls: list[tuple[int, float]] = []

    def recorded(cfg: Config, dataset: Dataset, name: str, out_dir: Path, world=None) -> RunResult:
        calls.append((cfg.seed, cfg.train.server_lr))
        result = dataclasses.replace(_fake_train(cfg, dataset, name, out_dir), seed=cfg.seed)
        result.save(out_dir / "results.json")
        return result

    monkeypatch.setattr(run, "run_method", recorded)
    cfg = tiny_config("data.val_size=16", "methods=[centralized]", f"out_dir={tmp_path}")

    # Execute
    results = run.run_experiment(cfg, tune=True, seeds=3)

    # Assert: three trials on the first seed, then the validation-best rate (trial 1) once per other seed,
    # each result carrying the first seed's tuning
    lr = cfg.train.server_lr
    assert [c[0] for c in calls] == [cfg.seed] * 3 + [cfg.seed + 1, cfg.seed + 2]
    assert [c[1] for c in calls[3:]] == pytest.approx([lr, lr])
    assert [r.tuning.chosen for r in results] == [1, 1, 1] and all(r.tuning == results[0].tuning for r in results)
    saved = RunResult.load(tmp_path / cfg.name / f"seed-{cfg.seed + 2}" / "centralized" / "results.json")
    assert saved.tuning == results[0].tuning


def test_a_tuning_records_its_choices_as_a_config_section_that_later_runs_train_at(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    # Prepare: a training whose validation score grows with the rate, so the tuner keeps 10x the configured one
    import mpsl.experiment.run as run
    from mpsl.config import load_config
    from mpsl.experiment.tune import TUNED_FILE, method_config

    trained: list[tuple[str, float, int]] = []

    def by_rate(cfg: Config, dataset: Dataset, name: str, out_dir: Path, world=None) -> RunResult:
        trained.append((name, cfg.train.server_lr, cfg.fl.local_epochs))
        base = _result()
        last = dataclasses.replace(base.history[-1], val={"val_accuracy": cfg.train.server_lr})
        result = dataclasses.replace(base, method=name, config=cfg, history=(*base.history[:-1], last))
        out_dir.mkdir(parents=True, exist_ok=True)
        result.save(out_dir / "results.json")
        return result

    monkeypatch.setattr(run, "run_method", by_rate)
    cfg = tiny_config("data.val_size=16", "methods=[centralized,fedavg]", "tune.local_epochs=[2]",
                      f"out_dir={tmp_path}", "name=tuning")
    lr = cfg.train.server_lr

    # Execute: tune, then train a new run with the recorded section merged into its config
    run.run_experiment(cfg, tune=True)
    recorded = load_config(tmp_path / "tuning" / TUNED_FILE).tune.chosen
    trained.clear()
    run.run_experiment(cfg.replace(name="later", **{"tune.chosen": recorded}))

    # Assert: both methods kept 10x (FedAvg also its local epochs, typed back to an integer); the later run trained
    # each once at that choice, without tuning
    assert recorded["centralized"]["train.server_lr"] == pytest.approx(10 * lr)
    assert method_config(cfg.replace(**{"tune.chosen": recorded}), "fedavg").fl.local_epochs == 2
    assert trained == [("centralized", pytest.approx(10 * lr), 1), ("fedavg", pytest.approx(10 * lr), 2)]
    report = (tmp_path / "later" / "compare.md").read_text()
    assert "trained at the setting a recorded tuning kept" in report
