"""Several seeds aggregate to the right mean and sample std, each seed's value kept beside them."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pytest

from mpsl.experiment.results import RunResult
from mpsl.experiment.seeded import mean_std, seed_rows, seeded_csv, seeded_markdown, write_seeded_reports
from tests.experiment.test_results import _result

SCORES = {0: {"mpsl": 0.70, "fedavg": 0.50}, 1: {"mpsl": 0.80, "fedavg": 0.55}, 2: {"mpsl": 0.75, "fedavg": 0.60}}


def _by_seed() -> dict[int, list[RunResult]]:
    """Two methods over three seeds, each result ending with its own headline score."""
    base = _result()
    out = {}
    for seed, scores in SCORES.items():
        runs = []
        for method, score in scores.items():
            last = dataclasses.replace(base.history[-1], test={"test_accuracy": score})
            runs.append(dataclasses.replace(base, method=method, seed=seed, history=(*base.history[:-1], last),
                                            final={"test_accuracy": score}))
        out[seed] = runs
    return out


def test_each_method_gets_the_mean_and_sample_std_of_its_seeds() -> None:
    rows = {r["method"]: r for r in seed_rows(_by_seed())}

    for method in ("mpsl", "fedavg"):
        values = [SCORES[s][method] for s in SCORES]
        assert rows[method]["mean"] == pytest.approx(statistics.fmean(values))
        assert rows[method]["std"] == pytest.approx(statistics.stdev(values))
        assert [rows[method][f"seed_{s}"] for s in SCORES] == values and rows[method]["seeds"] == 3


def test_one_seed_has_no_spread() -> None:
    assert mean_std([0.4]) == (0.4, 0.0)


def test_the_table_and_csv_show_mean_std_and_every_seed(tmp_path: Path) -> None:
    by_seed = _by_seed()

    table, rows = seeded_markdown("t", by_seed), seeded_csv(by_seed).splitlines()
    written = write_seeded_reports(tmp_path, by_seed)

    assert "| mpsl | 75.0 ± 5.0 | 70.0 | 80.0 | 75.0 |" in table
    assert rows[0].startswith("method,seeds,metric,mean,std,seed_0,seed_1,seed_2") and len(rows) == 3
    assert [p.name for p in written] == ["compare.md", "compare.csv", "accuracy.png"]
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000
