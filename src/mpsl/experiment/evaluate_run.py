"""`mpsl eval`: rebuild each method's model from its saved config, load its checkpoint, evaluate again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpsl.checkpoints import load_checkpoint
from mpsl.config import from_dict
from mpsl.data import Dataset, load_dataset
from mpsl.errors import MpslError
from mpsl.experiment.evaluate import evaluate, modality_ablations
from mpsl.experiment.run import load_results
from mpsl.models import WholeModel, build_split_model
from mpsl.tasks import TASKS


def evaluate_saved(result: dict[str, Any], method_dir: Path, datasets: dict[str, Dataset]) -> dict[str, float]:
    """Every test metric (and single-modality scores) of the checkpoint in `method_dir`."""
    cfg = from_dict(result["config"])
    key = repr(cfg.data)
    if key not in datasets:
        datasets[key] = load_dataset(cfg.data, cfg.progress)
    dataset = datasets[key]
    client, server = build_split_model(cfg.model, dataset.spec, cfg.seed)
    model = WholeModel(client, server)
    load_checkpoint(model, method_dir)
    task = TASKS.get(dataset.spec.task)()
    scores = evaluate(client, server, dataset.test, task, cfg.eval.batch_size)
    scores.update(modality_ablations(client, server, dataset.test, task, cfg.eval.batch_size))
    return scores


def evaluate_run(run_dir: Path, methods: list[str] | None = None) -> list[dict[str, Any]]:
    """Re-evaluate every (or the named) method of a run folder; prints saved vs re-evaluated headline score."""
    results = load_results(run_dir)
    known = [r["method"] for r in results]
    for name in methods or []:
        if name not in known:
            raise MpslError(f"{run_dir} has no results for method {name!r} (it has: {', '.join(known)})")
    datasets: dict[str, Dataset] = {}
    rows = []
    metric = results[0].get("metric", "test_accuracy")
    name = metric.removeprefix("test_").replace("_", " ")
    print(f"| method | saved {name} % | re-evaluated {name} % |\n|---|---|---|")
    for r in results:
        if methods and r["method"] not in methods:
            continue
        scores = evaluate_saved(r, run_dir / r["method"], datasets)
        rows.append({"method": r["method"], "saved": r["final"][metric], **scores})
        print(f"| {r['method']} | {100 * r['final'][metric]:.1f} | {100 * scores[metric]:.1f} |", flush=True)
    return rows
