"""The run loop: train one method epoch by epoch, evaluate, and write results.json."""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import mpsl
from mpsl.config import Config, to_dict
from mpsl.data import Dataset
from mpsl.errors import MpslError
from mpsl.experiment.accounting import trainable_parameters, training_flops
from mpsl.experiment.evaluate import accuracy, fedavg, modality_ablations
from mpsl.experiment.setup import Simulation, build_simulation
from mpsl.protocol import mpsl_step
from mpsl.tasks import TASKS


def steps_per_epoch(sim: Simulation) -> int:
    return max(math.ceil(len(c.data) / c.batch_size) for c in sim.clients)


def train_epoch(sim: Simulation, epoch: int, first_step: int, progress: bool, label: str) -> dict[str, float]:
    for h in sim.handles:
        h.start_epoch(epoch)
    loss_sum, correct, count, step = 0.0, 0, 0, first_step
    bar = tqdm(total=steps_per_epoch(sim), desc=f"{label} epoch {epoch + 1}", unit="step",
               disable=not progress, leave=False, dynamic_ncols=True)
    while (result := mpsl_step(sim.server, sim.handles, step)) is not None:
        loss_sum += result.loss * result.count  # metrics are normalized by samples actually seen
        correct += result.correct
        count += result.count
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / count:.3f}", clients=len(result.client_ids))
    bar.close()
    sim.server.end_epoch()
    for h in sim.handles:
        h.end_epoch()
    return {"train_loss": loss_sum / count, "train_accuracy": correct / count, "steps": step - first_step}


def run_method(cfg: Config, dataset: Dataset, method: str, out_dir: Path) -> dict[str, Any]:
    """Train `method` from the seeded initial model, evaluate each epoch, save results.json."""
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    sim = build_simulation(cfg, dataset, method)
    task = TASKS.get(dataset.spec.task)()
    probe = sim.clients[0].data.subset(torch.arange(min(sim.clients[0].batch_size, len(sim.clients[0].data))))
    flops = training_flops(sim.initial_client, sim.server.model, probe, task)

    history, step = [], 0
    for epoch in range(cfg.train.epochs):
        t0 = time.perf_counter()
        stats = train_epoch(sim, epoch, step, cfg.progress, method)
        step += int(stats["steps"])
        merged = _global_model(sim)
        test_acc = accuracy(merged, sim.server.model, dataset.test, task, cfg.eval.batch_size)
        history.append({"epoch": epoch + 1, **stats, "test_accuracy": test_acc,
                        "seconds": time.perf_counter() - t0})
        print(f"{method:>12} epoch {epoch + 1}/{cfg.train.epochs}: train loss {stats['train_loss']:.4f}, "
              f"train acc {stats['train_accuracy']:.3f}, test acc {test_acc:.3f} "
              f"({history[-1]['seconds']:.0f} s)", flush=True)

    merged = _global_model(sim)
    final: dict[str, Any] = {"test_accuracy": history[-1]["test_accuracy"]}
    if cfg.eval.ablations:
        final.update(modality_ablations(merged, sim.server.model, dataset.test, task, cfg.eval.batch_size))
    if cfg.eval.personalized and len(sim.clients) > 1:
        per_client = [accuracy(c.model, sim.server.model, dataset.test, task, cfg.eval.batch_size)
                      for c in sim.clients]
        final["test_accuracy_personalized_mean"] = sum(per_client) / len(per_client)
        final["test_accuracy_personalized"] = per_client
    results = {
        "method": method,
        "dataset": dataset.spec.name,
        "num_clients": len(sim.clients),
        "epochs": cfg.train.epochs,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "history": history,
        "final": final,
        "comm": _traffic(sim),
        "flops": {"client_per_sample": flops.client_per_sample, "server_per_sample": flops.server_per_sample,
                  "client_share": flops.client_per_sample / (flops.client_per_sample + flops.server_per_sample)},
        "params": {"client_trainable": trainable_parameters(sim.initial_client),
                   "server_trainable": trainable_parameters(sim.server.model),
                   "server_total": sum(p.numel() for p in sim.server.model.parameters())},
        "samples_per_client": [len(c.data) for c in sim.clients],
        "wall_seconds": time.perf_counter() - started,
        "versions": {"mpsl": mpsl.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out_dir / "results.json")
    return results


def _global_model(sim: Simulation):
    """FedAvg of the client models weighted by samples seen; used for evaluation only, never sent back."""
    if len(sim.clients) == 1:
        return sim.clients[0].model
    return fedavg([c.model for c in sim.clients], [c.samples_seen for c in sim.clients])


def _traffic(sim: Simulation) -> dict[str, float]:
    n = len(sim.handles)
    traffic = [h.traffic for h in sim.handles]
    return {
        "bytes_up_per_client": sum(t.up for t in traffic) / n,
        "bytes_down_per_client": sum(t.down for t in traffic) / n,
        "payload_bytes_up_per_client": sum(t.payload_up for t in traffic) / n,
        "payload_bytes_down_per_client": sum(t.payload_down for t in traffic) / n,
        "messages_per_client": sum(t.messages for t in traffic) / n,
    }


def write_reports(run_dir: Path, results: list[dict[str, Any]]) -> None:
    """summary.md and accuracy.png from results alone, so `mpsl report` can redo them without training."""
    from mpsl.experiment.report import accuracy_plot, results_table

    table = results_table(results)
    (run_dir / "summary.md").write_text(f"# {run_dir.name}\n\n{table}")
    first = results[0]
    plot = accuracy_plot(results, run_dir / "accuracy.png",
                         f"{first['dataset']}: test accuracy ({first['config']['num_clients']} clients)")
    print(f"\n{table}\nwrote {run_dir / 'summary.md'}, {plot} and results.json per method under {run_dir}")


def load_results(run_dir: Path) -> list[dict[str, Any]]:
    """The saved results of a run folder, in the order its config listed the methods."""
    files = sorted(run_dir.glob("*/results.json"))
    if not files:
        raise MpslError(f"no <method>/results.json under {run_dir}: not a run folder")
    results = []
    for f in files:
        try:
            results.append(json.loads(f.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MpslError(f"{f} is not valid JSON: {exc}") from None
    order = results[0].get("config", {}).get("methods", [])
    return sorted(results, key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))


def check_names(cfg: Config) -> None:
    """Registry names in the config, checked before any data is prepared or model loaded."""
    from mpsl.data import DATASETS
    from mpsl.experiment.setup import METHODS
    from mpsl.models import ENCODERS

    DATASETS.get(cfg.data.name)
    ENCODERS.get(cfg.model.encoder.source)
    for method in cfg.methods:
        METHODS.get(method)


def run_experiment(cfg: Config) -> list[dict[str, Any]]:
    """Every method in cfg.methods on the same data and seed; writes runs/<name>/{<method>/results.json,
    summary.md, accuracy.png} and prints the table."""
    from mpsl.data import load_dataset

    check_names(cfg)
    dataset = load_dataset(cfg.data)
    run_dir = Path(cfg.out_dir) / cfg.name
    results = [run_method(cfg, dataset, method, run_dir / method) for method in cfg.methods]
    write_reports(run_dir, results)
    return results
