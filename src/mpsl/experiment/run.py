"""The run loop: train each method round by round, evaluate, account, checkpoint and save results.json.

Every method goes through the same loop, so their numbers are measured the same way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from mpsl.config import Config, check_clients_fit, to_dict
from mpsl.data import Dataset
from mpsl.errors import ConfigError, MpslError
from mpsl.experiment.accounting import client_memory, trainable_parameters, training_flops
from mpsl.experiment.checkpoints import save_checkpoint
from mpsl.experiment.evaluate import evaluate, headline, modality_ablations
from mpsl.experiment.files import write_atomically
from mpsl.experiment.methods import METHODS, Method
from mpsl.experiment.provenance import versions
from mpsl.models import WholeModel
from mpsl.runtime import Traffic

EXPERIMENT_FILE = "experiment.json"  # the compared methods, in order, and the backbone-scaling table
# keys that do not change what a method computes: a saved result stays valid when only these differ
_NOT_RESULT_KEYS = ("methods", "progress", "logging", "runtime")  # runtime: how, not what


def _cost(method: Method) -> dict[str, Any]:
    """Per-sample FLOPs of each side and the client's memory, measured on one client mini-batch."""
    data = method.dataset.train
    probe = data.subset(torch.arange(min(method.client_batch_size(), len(data))))  # [b]
    flops = training_flops(method.client_template, method.server_template, probe, method.task)
    whole = flops.client_per_sample + flops.server_per_sample
    client = whole if method.client_runs_encoder else flops.client_per_sample
    model = WholeModel(method.client_template, method.server_template)  # as every party starts
    memory = client_memory(model, probe, method.task, method.client_runs_encoder)
    return {
        "flops": {"client_per_sample": client, "server_per_sample": whole - client, "model_per_sample": whole,
                  "client_share": client / whole},
        "client_memory_bytes": {"parameters": memory.parameters, "optimizer": memory.optimizer,
                                "activations": memory.activations, "total": memory.total,
                                "batch_size": len(probe)},
        "params": {"client_trainable": trainable_parameters(model if method.client_runs_encoder else model.client),
                   "server_trainable": 0 if method.client_runs_encoder else trainable_parameters(model.server),
                   "model_trainable": trainable_parameters(model),
                   "encoder_total": sum(p.numel() for p in model.server.encoder.parameters())},
    }


def _traffic(traffic: list[Traffic], rounds: int) -> dict[str, float]:
    n = max(len(traffic), 1)
    up, down = sum(t.up for t in traffic) / n, sum(t.down for t in traffic) / n
    return {
        "bytes_up_per_client": up,
        "bytes_down_per_client": down,
        "bytes_up_per_client_per_round": up / rounds,
        "bytes_down_per_client_per_round": down / rounds,
        "payload_bytes_up_per_client": sum(t.payload_up for t in traffic) / n,
        "payload_bytes_down_per_client": sum(t.payload_down for t in traffic) / n,
        "messages_per_client": sum(t.messages for t in traffic) / n,
    }


def _tensorboard(cfg: Config, out_dir: Path):
    if not cfg.logging.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def run_method(cfg: Config, dataset: Dataset, name: str, out_dir: Path) -> dict[str, Any]:
    """Train `name` from the seeded initial model, evaluate every round, save results.json and the model."""
    cfg = METHODS.get(name).configure(cfg)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    method = METHODS.get(name)(cfg, dataset)
    cost = _cost(method)
    writer = _tensorboard(cfg, out_dir)
    history = []
    metric = f"test_{method.task.metric}"
    for epoch in range(cfg.train.epochs):
        t0 = time.perf_counter()
        stats = method.train_round(epoch, cfg.progress).as_dict()
        model = method.global_model()
        test = evaluate(model.client, model.server, dataset.test, method.task, cfg.eval.batch_size)
        comm = _traffic(method.traffic(), epoch + 1)
        history.append({"epoch": epoch + 1, **stats, **test,
                        "bytes_up_per_client": comm["bytes_up_per_client"],
                        "bytes_down_per_client": comm["bytes_down_per_client"],
                        "seconds": time.perf_counter() - t0})
        print(f"{name:>14} {method.round_word} {epoch + 1}/{cfg.train.epochs}: train loss {stats['train_loss']:.4f}, "
              f"train acc {stats['train_accuracy']:.3f}, {metric.replace('_', ' ')} {test[metric]:.3f}, "
              f"{(comm['bytes_up_per_client'] + comm['bytes_down_per_client']) / 1e6:.1f} MB/client "
              f"({history[-1]['seconds']:.0f} s)", flush=True)
        if writer is not None:
            for key in ("train_loss", "train_accuracy", *test, "bytes_up_per_client", "bytes_down_per_client"):
                writer.add_scalar(f"{name}/{key}", history[-1][key], epoch + 1)
    if writer is not None:
        writer.close()

    model = method.global_model()
    final: dict[str, Any] = {k: history[-1][k] for k in test}
    if cfg.eval.ablations:
        final.update(modality_ablations(model.client, model.server, dataset.test, method.task, cfg.eval.batch_size))
    personal = method.personal_models() if cfg.eval.personalized else []
    if personal:
        per_client = [headline(c, model.server, dataset.test, method.task, cfg.eval.batch_size) for c in personal]
        final[f"{metric}_personalized_mean"] = sum(per_client) / len(per_client)
        final[f"{metric}_personalized"] = per_client
    save_checkpoint(model, out_dir)
    results = {
        "method": name,
        "dataset": dataset.spec.name,
        "task": dataset.spec.task,
        "metric": metric,  # the headline key of history and final
        "num_clients": method.num_clients,
        "epochs": cfg.train.epochs,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "history": history,
        "final": final,
        "comm": _traffic(method.traffic(), cfg.train.epochs),
        **cost,
        "samples_per_client": method.samples_per_client(),
        "modalities_per_client": method.modalities_per_client(),
        "client_batch_size": method.client_batch_size(),
        "wall_seconds": time.perf_counter() - started,
        "versions": versions(),
    }
    write_json(out_dir / "results.json", results)
    return results


def write_json(path: Path, data: Any) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MpslError(f"{path} is not valid JSON: {exc}") from None


def _differences(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        return [d for key in sorted(set(saved) | set(wanted))
                for d in _differences(saved.get(key), wanted.get(key), f"{prefix}{key}.")]
    return [] if saved == wanted else [f"{prefix.rstrip('.')}: {saved!r} -> {wanted!r}"]


def reusable(cfg: Config, name: str, out_dir: Path) -> dict[str, Any] | None:
    """The saved results of `name` if they were made with the same settings; None (and why) otherwise."""
    path = out_dir / "results.json"
    if not path.is_file():
        return None
    saved = read_json(path)
    wanted = to_dict(METHODS.get(name).configure(cfg))
    have = saved.get("config", {}) if isinstance(saved, dict) else {}
    changed = _differences({k: v for k, v in have.items() if k not in _NOT_RESULT_KEYS},
                           {k: v for k, v in wanted.items() if k not in _NOT_RESULT_KEYS})
    if changed:
        print(f"{name}: saved results were made with other settings ({'; '.join(changed[:3])}); retraining")
        return None
    print(f"{name}: reusing {path} (pass --force to retrain)")
    return saved


def check_names(cfg: Config) -> None:
    """Registry names, optional packages and sizes known in advance, checked before any data is prepared or
    model loaded."""
    from mpsl.data import DATASETS
    from mpsl.models import ENCODERS

    source = DATASETS.get(cfg.data.name)
    known = cfg.data.train_size or source.default_train_size
    if known is not None:
        check_clients_fit(cfg, known)
    ENCODERS.get(cfg.model.encoder.source)
    for method in cfg.methods:
        METHODS.get(method)
    if cfg.logging.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("logging.tensorboard: true needs the tensorboard package "
                              "(pip install 'mpsl[tensorboard]')") from None


def run_experiment(cfg: Config, reuse: bool = False) -> list[dict[str, Any]]:
    """Every method in cfg.methods on the same data and seed, then the comparison reports.

    Writes runs/<name>/<method>/{results.json, client.safetensors, server.safetensors} and the
    reports of experiment.report. With `reuse`, a method whose results exist for the same settings
    is not trained again.
    """
    from mpsl.data import load_dataset
    from mpsl.experiment.report import write_reports
    from mpsl.experiment.scaling import scaling_table

    check_names(cfg)
    dataset = load_dataset(cfg.data)
    run_dir = Path(cfg.out_dir) / cfg.name
    results = []
    for name in cfg.methods:
        saved = reusable(cfg, name, run_dir / name) if reuse else None
        results.append(saved if saved is not None else run_method(cfg, dataset, name, run_dir / name))
    mean_samples = len(dataset.train) / cfg.num_clients
    write_json(run_dir / EXPERIMENT_FILE, {"methods": list(cfg.methods),
                                           "scaling": scaling_table(cfg, dataset.spec, mean_samples)})
    write_reports(run_dir, results, load_scaling(run_dir))
    return results


def load_scaling(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / EXPERIMENT_FILE
    return read_json(path).get("scaling", []) if path.is_file() else []


def load_results(run_dir: Path) -> list[dict[str, Any]]:
    """The saved results of the last comparison in a run folder, in its order of methods."""
    if (run_dir / EXPERIMENT_FILE).is_file():
        methods = read_json(run_dir / EXPERIMENT_FILE).get("methods", [])
        files = [run_dir / m / "results.json" for m in methods]
    else:
        files = sorted(run_dir.glob("*/results.json"))
    if not files:
        raise MpslError(f"no <method>/results.json under {run_dir}: not a run folder")
    results = []
    for f in files:
        if not f.is_file():
            raise MpslError(f"{f} is missing: that method has not finished")
        r = read_json(f)
        if not isinstance(r, dict) or not {"method", "config", "history", "final"} <= set(r):
            raise MpslError(f"{f} is not an mpsl results file (needs method, config, history, final)")
        results.append(r)
    return results
