"""`mpsl compare --tune`: each method trained over its declared grid with the same budget, the setting with the
best final validation score kept, and the grid with every score recorded in its results.json.

Only the validation split (data.val_size) is read to choose; the test split of every trial is evaluated as
usual but never compared. The trials stay in runs/<name>/tuning/<method>/trial-<i>/; the chosen one is copied
to runs/<name>/<method>/, where the comparison reads it.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from mpsl.config import Config, dotted_value, to_dict
from mpsl.data import Dataset
from mpsl.errors import ConfigError
from mpsl.experiment.methods import METHODS
from mpsl.experiment.results import RESULTS_FILE, RunResult, Trial, Tuning
from mpsl.files import write_atomically

Train = Callable[[Config, Dataset, str, Path], RunResult]  # experiment.run.run_method


def choose(metric: str, results: list[RunResult]) -> int:
    """The trial with the best final validation score; the first of equals."""
    scores = [r.history[-1].val[metric] for r in results]
    return max(range(len(scores)), key=scores.__getitem__)


def tune_method(cfg: Config, dataset: Dataset, name: str, run_dir: Path, train: Train) -> RunResult:
    """Train `name` over its grid with `train`, keep the validation-best, and return its result with the tuning
    recorded."""
    if dataset.val is None:
        raise ConfigError("--tune chooses by validation: set data.val_size (training samples held out, e.g. "
                          "data.val_size=500)")
    grid = METHODS.get(name).grid(cfg)
    trials_dir = run_dir / "tuning" / name
    results = []
    for i, overrides in enumerate(grid):
        shown = ", ".join(f"{k}={v:g}" for k, v in overrides.items())
        print(f"{name}: tuning {i + 1}/{len(grid)}: {shown}", flush=True)
        results.append(train(cfg.replace(**overrides), dataset, name, trials_dir / f"trial-{i}"))
    metric = f"val_{results[0].metric.removeprefix('test_')}"
    best = choose(metric, results)
    tuning = Tuning(metric, tuple(Trial({k: float(v) for k, v in o.items()}, r.history[-1].val[metric])
                                  for o, r in zip(grid, results, strict=True)), best)
    chosen = dataclasses.replace(results[best], tuning=tuning)
    out = run_dir / name
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(trials_dir / f"trial-{best}", out)
    chosen.save(out / RESULTS_FILE)
    return chosen


def typed_overrides(cfg: Config, overrides: Mapping[str, float]) -> dict[str, int | float]:
    """Overrides of `cfg` with whole numbers where the key holds an integer (recorded settings are floats)."""
    tree = to_dict(cfg)
    return {k: int(v) if isinstance(dotted_value(tree, k), int) and float(v).is_integer() else v
            for k, v in overrides.items()}


def chosen_overrides(cfg: Config, tuning: Tuning) -> dict[str, int | float]:
    """The setting a tuning kept, as overrides of `cfg`."""
    return typed_overrides(cfg, tuning.trials[tuning.chosen].overrides)


def method_config(cfg: Config, name: str) -> Config:
    """The config `name` trains with: cfg with the setting a recorded tuning kept for it (tune.chosen)."""
    chosen = cfg.tune.chosen.get(name)
    return cfg.replace(**typed_overrides(cfg, chosen)) if chosen else cfg


TUNED_FILE = "tuned.yaml"


def write_tuned(run_dir: Path, cfg: Config, results: list[RunResult]) -> Path:
    """runs/<name>/tuned.yaml: what each tuned method kept, as the tune.chosen section of a config, so a later run
    (the demo, another seed, the full data) trains at the recorded choice instead of a hand-picked one."""
    tuned = [r for r in results if r.tuning is not None]
    chosen = {r.method: chosen_overrides(cfg, r.tuning) for r in tuned}
    header = (f"# kept by `mpsl compare --tune` (by final {tuned[0].tuning.metric}, seed {tuned[0].seed}); copy "
              "into a config to train each method at its choice\n") if tuned else ""
    path = write_atomically(run_dir / TUNED_FILE, lambda tmp: tmp.write_text(
        header + yaml.safe_dump({"tune": {"chosen": chosen}}, sort_keys=False)))
    print(f"kept settings: {path} (as tune.chosen in a config, each method trains at its choice)", flush=True)
    return path


def train_chosen(cfg: Config, dataset: Dataset, name: str, run_dir: Path, tuning: Tuning, train: Train) -> RunResult:
    """`name` trained once at the setting an earlier tuning (another seed's) kept, that tuning recorded with it:
    --seeds with --tune chooses on the first seed and trains every seed at that choice."""
    out = run_dir / name
    result = dataclasses.replace(train(cfg.replace(**chosen_overrides(cfg, tuning)), dataset, name, out),
                                 tuning=tuning)
    result.save(out / RESULTS_FILE)
    return result
