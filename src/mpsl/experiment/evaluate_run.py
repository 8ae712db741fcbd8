"""`mpsl eval`: rebuild each method's model from its saved config, load its checkpoint, evaluate again."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mpsl.checkpoints import load_checkpoint
from mpsl.data import Dataset, load_dataset
from mpsl.errors import MpslError
from mpsl.experiment.evaluate import evaluate, modality_ablations
from mpsl.experiment.results import RunResult
from mpsl.experiment.run import load_results
from mpsl.models import WholeModel
from mpsl.parties import templates
from mpsl.tasks import TASKS


@dataclass(frozen=True)
class Reevaluation:
    """A method's saved headline score beside every test metric of its checkpoint evaluated again."""

    method: str
    saved: float
    scores: dict[str, float]


def evaluate_saved(result: RunResult, method_dir: Path, datasets: dict[str, Dataset]) -> dict[str, float]:
    """Every test metric (and single-modality scores) of the checkpoint in `method_dir`."""
    cfg = result.config
    key = repr(cfg.data)
    if key not in datasets:
        datasets[key] = load_dataset(cfg.data, cfg.progress)
    dataset = datasets[key]
    client, server = templates(cfg, dataset.spec)
    model = WholeModel(client, server)
    load_checkpoint(model, method_dir)
    task = TASKS.get(dataset.spec.task)()
    scores = evaluate(client, server, dataset.test, task, cfg.eval.batch_size)
    scores.update(modality_ablations(client, server, dataset.test, task, cfg.eval.batch_size))
    return scores


def evaluate_run(run_dir: Path, methods: list[str] | None = None) -> list[Reevaluation]:
    """Re-evaluate every (or the named) method of a run folder; prints saved vs re-evaluated headline score."""
    results = load_results(run_dir)
    known = [r.method for r in results]
    for name in methods or []:
        if name not in known:
            raise MpslError(f"{run_dir} has no results for method {name!r} (it has: {', '.join(known)})")
    datasets: dict[str, Dataset] = {}
    rows = []
    metric = results[0].metric
    name = metric.removeprefix("test_").replace("_", " ")
    print(f"| method | saved {name} % | re-evaluated {name} % |\n|---|---|---|")
    for r in results:
        if methods and r.method not in methods:
            continue
        scores = evaluate_saved(r, run_dir / r.method, datasets)
        rows.append(Reevaluation(r.method, r.headline, scores))
        print(f"| {r.method} | {100 * r.headline:.1f} | {100 * scores[r.metric]:.1f} |", flush=True)
    return rows
