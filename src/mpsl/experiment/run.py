"""The run loop: train each method round by round, evaluate, account, checkpoint and save results.json.

Every method goes through the same loop, so their numbers are measured the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from mpsl.analysis.accounting import client_memory, trainable_parameters, training_flops
from mpsl.analysis.privacy import privacy_spent
from mpsl.checkpoints import save_checkpoint
from mpsl.config import Config, check_clients_fit, to_dict
from mpsl.data import Dataset
from mpsl.devices import compile_failure, resolve_device
from mpsl.errors import ConfigError, MpslError
from mpsl.experiment.evaluate import evaluate, headline, modality_ablations
from mpsl.experiment.methods import METHODS, Method, RoundStats
from mpsl.experiment.provenance import versions
from mpsl.experiment.results import (
    RESULTS_FILE,
    ClientMemory,
    Comm,
    Cost,
    EpochRecord,
    FlopsPerSample,
    Privacy,
    RunResult,
    TrainableParams,
    Tuning,
)
from mpsl.files import read_json, write_atomically, write_json
from mpsl.models import WholeModel
from mpsl.registry import check_choices
from mpsl.runtime import Traffic
from mpsl.runtime.distributed import TorchWorld
from mpsl.runtime.ray_actors import import_ray

EXPERIMENT_FILE = "experiment.json"  # the compared methods, in order, and the backbone-scaling table
CONFIG_FILE = "config.yaml"  # the resolved config of the last command that wrote the folder: `mpsl run` it again
# keys that do not change what a method computes: a saved result stays valid when only these differ
_NOT_RESULT_KEYS = ("methods", "progress", "logging", "runtime", "ray")  # runtime, ray: how, not what


def _cost(method: Method) -> Cost:
    """Per-sample FLOPs of each side and the client's memory, measured on one client mini-batch."""
    data = method.dataset.train
    probe = data.subset(torch.arange(min(method.client_batch_size(), len(data))))  # [b]
    flops = training_flops(method.client_template, method.server_template, probe, method.task)
    whole = flops.client_per_sample + flops.server_per_sample
    client = whole if method.client_runs_encoder else flops.client_per_sample
    model = WholeModel(method.client_template, method.server_template)  # as every party starts
    memory = client_memory(model, probe, method.task, method.client_runs_encoder)
    return Cost(
        flops=FlopsPerSample(client_per_sample=float(client), server_per_sample=float(whole - client),
                             model_per_sample=float(whole), client_share=client / whole),
        client_memory_bytes=ClientMemory(parameters=memory.parameters, optimizer=memory.optimizer,
                                         activations=memory.activations, total=memory.total,
                                         batch_size=len(probe)),
        params=TrainableParams(
            client_trainable=trainable_parameters(model if method.client_runs_encoder else model.client),
            server_trainable=0 if method.client_runs_encoder else trainable_parameters(model.server),
            model_trainable=trainable_parameters(model),
            encoder_total=sum(p.numel() for p in model.server.encoder.parameters())),
    )


def _privacy(cfg: Config) -> Privacy:
    spent = privacy_spent(cfg.privacy, cfg.train.epochs)
    return Privacy(delta=spent.delta, epsilon_tokens=spent.epsilon_tokens, epsilon_labels=spent.epsilon_labels)


def _comm(traffic: list[Traffic], rounds: int) -> Comm:
    n = max(len(traffic), 1)
    up, down = sum(t.up for t in traffic) / n, sum(t.down for t in traffic) / n
    return Comm(
        bytes_up_per_client=up,
        bytes_down_per_client=down,
        bytes_up_per_client_per_round=up / rounds,
        bytes_down_per_client_per_round=down / rounds,
        payload_bytes_up_per_client=sum(t.payload_up for t in traffic) / n,
        payload_bytes_down_per_client=sum(t.payload_down for t in traffic) / n,
        messages_per_client=sum(t.messages for t in traffic) / n,
    )


def _tensorboard(cfg: Config, out_dir: Path):
    if not cfg.logging.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def _train_round(method: Method, epoch: int, progress: bool) -> RoundStats:
    try:
        return method.train_round(epoch, progress)
    except Exception as exc:
        failure = compile_failure(exc)  # runtime.compile: surfaces on the first forward
        if failure is None:
            raise
        raise failure from None


def run_method(cfg: Config, dataset: Dataset, name: str, out_dir: Path, world: TorchWorld | None = None) -> RunResult:
    """Train `name` from the seeded initial model, evaluate every round, save results.json and the model.

    With server replicas (`world`) every rank trains and evaluates the same model; only rank 0 writes and prints.
    """
    cls = METHODS.get(name)
    cfg = cls.configure(cfg)
    main = world is None or world.is_main
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    method = cls(cfg, dataset, world=world) if cls.replicated and world is not None else cls(cfg, dataset)
    cost = _cost(method)
    writer = _tensorboard(cfg, out_dir) if main else None
    history: list[EpochRecord] = []
    metric = f"test_{method.task.metric}"
    for epoch in range(cfg.train.epochs):
        t0 = time.perf_counter()
        stats = _train_round(method, epoch, cfg.progress and main)
        model = method.global_model()
        test = evaluate(model.client, model.server, dataset.test, method.task, cfg.eval.batch_size)
        val = {} if dataset.val is None else evaluate(model.client, model.server, dataset.val, method.task,
                                                      cfg.eval.batch_size, "val")
        comm = _comm(method.traffic(), epoch + 1)
        record = EpochRecord(epoch=epoch + 1, train_loss=stats.loss, train_accuracy=stats.accuracy,
                             steps=stats.steps, bytes_up_per_client=comm.bytes_up_per_client,
                             bytes_down_per_client=comm.bytes_down_per_client, seconds=time.perf_counter() - t0,
                             test=test, val=val)
        history.append(record)
        if main:
            print(f"{name:>14} {method.round_word} {epoch + 1}/{cfg.train.epochs}: train loss "
                  f"{record.train_loss:.4f}, train acc {record.train_accuracy:.3f}, "
                  + (f"val {method.task.metric} {val['val_' + method.task.metric]:.3f}, " if val else "")
                  + f"{metric.replace('_', ' ')} {test[metric]:.3f}, "
                  f"{(comm.bytes_up_per_client + comm.bytes_down_per_client) / 1e6:.1f} MB/client "
                  f"({record.seconds:.0f} s)", flush=True)
        if writer is not None:
            scalars = {"train_loss": record.train_loss, "train_accuracy": record.train_accuracy, **test,
                       "bytes_up_per_client": record.bytes_up_per_client,
                       "bytes_down_per_client": record.bytes_down_per_client}
            for key, value in scalars.items():
                writer.add_scalar(f"{name}/{key}", value, epoch + 1)
    if writer is not None:
        writer.close()
    # Ray actors go (on a failure they go with this process); evaluation reads the weights copied back
    method.close()

    model = method.global_model()
    final = dict(history[-1].test)
    if cfg.eval.ablations:
        final.update(modality_ablations(model.client, model.server, dataset.test, method.task, cfg.eval.batch_size))
    personal = method.personal_models() if cfg.eval.personalized else []
    per_client = [headline(c, model.server, dataset.test, method.task, cfg.eval.batch_size) for c in personal]
    if per_client:
        final[f"{metric}_personalized_mean"] = sum(per_client) / len(per_client)
    if main:
        save_checkpoint(model, out_dir)
    result = RunResult(
        method=name,
        dataset=dataset.spec.name,
        task=dataset.spec.task,
        metric=metric,
        num_clients=method.num_clients,
        epochs=cfg.train.epochs,
        seed=cfg.seed,
        config=cfg,
        history=tuple(history),
        final=final,
        personalized=tuple(per_client),
        comm=_comm(method.traffic(), cfg.train.epochs),
        cost=cost,
        samples_per_client=tuple(method.samples_per_client()),
        modalities_per_client=tuple(tuple(m) for m in method.modalities_per_client()),
        client_batch_size=method.client_batch_size(),
        wall_seconds=time.perf_counter() - started,
        versions=versions(),
        privacy=None if method.client_runs_encoder else _privacy(cfg),  # messages exist only when split
    )
    if main:
        result.save(out_dir / RESULTS_FILE)
    return result


def _differences(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        return [d for key in sorted(set(saved) | set(wanted))
                for d in _differences(saved.get(key), wanted.get(key), f"{prefix}{key}.")]
    return [] if saved == wanted else [f"{prefix.rstrip('.')}: {saved!r} -> {wanted!r}"]


def reusable(cfg: Config, name: str, out_dir: Path) -> RunResult | None:
    """The saved results of `name` if they were made with the same settings; None (and why) otherwise."""
    path = out_dir / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        saved = RunResult.load(path)
    except MpslError as exc:
        print(f"{name}: saved results cannot be reused ({exc}); retraining")
        return None
    wanted = to_dict(METHODS.get(name).configure(cfg))
    have = to_dict(saved.config)
    changed = _differences({k: v for k, v in have.items() if k not in _NOT_RESULT_KEYS},
                           {k: v for k, v in wanted.items() if k not in _NOT_RESULT_KEYS})
    if changed:
        print(f"{name}: saved results were made with other settings ({'; '.join(changed[:3])}); retraining")
        return None
    print(f"{name}: reusing {path} (pass --force to retrain)")
    return saved


def check_names(cfg: Config) -> None:
    """Registry names (every registry is imported here), optional packages and sizes known in advance,
    checked before any data is prepared or model loaded."""
    from mpsl.data import DATASETS

    check_choices(cfg)
    resolve_device(cfg.runtime.device)
    source = DATASETS.get(cfg.data.name)
    known = cfg.data.train_size or source.default_train_size
    if known is not None:
        check_clients_fit(cfg, known)
    if cfg.logging.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("logging.tensorboard: true needs the tensorboard package "
                              "(pip install 'mpsl[tensorboard]')") from None
    if cfg.runtime.kind == "ray":
        import_ray()  # the one-line error naming mpsl[ray], before any data is prepared


def run_experiment(cfg: Config, reuse: bool = False, force: bool = False, tune: bool = False, seeds: int = 1,
                   world: TorchWorld | None = None, tuned: Mapping[str, Tuning] | None = None) -> list[RunResult]:
    """Every method in cfg.methods on the same data and seed, then the comparison reports.

    Writes runs/<name>/config.yaml (the resolved config), runs/<name>/<method>/{results.json,
    client.safetensors, server.safetensors} and the reports of experiment.report. With `reuse`, a method
    whose results exist for the same settings is not trained again; without it, a run folder that
    already holds something is refused unless `force`. With `tune`, each method is trained over its grid
    and the validation-best setting kept (experiment.tune); nothing is reused then. `tuned` (method -> an
    earlier tuning) trains each method once at the setting that tuning kept. With `seeds` > 1, the whole
    comparison runs once per seed (cfg.seed, cfg.seed + 1, ...) in runs/<name>/seed-<s>/ and
    experiment.seeded summarizes them in runs/<name>/; every seed's results are returned, seed by seed; with
    `tune`, the first seed tunes and the others train at its choices.
    With server replicas (`world`, torchrun) rank 0 prepares the data first and alone writes the folder.
    """
    from mpsl.analysis.scaling import scaling_table
    from mpsl.data import load_dataset
    from mpsl.experiment.report import write_reports
    from mpsl.experiment.tune import method_config, train_chosen, tune_method, write_tuned

    check_names(cfg)
    run_dir = Path(cfg.out_dir) / cfg.name
    main = world is None or world.is_main
    if main and not reuse and not force and run_dir.is_dir() and any(run_dir.iterdir()):
        raise MpslError(f"{run_dir} already holds a run: pass --force to overwrite it, name=... to keep both, or "
                        "use `mpsl compare` to reuse the methods that finished with the same settings")
    if world is not None and (tune or seeds > 1):
        raise ConfigError("--tune and --seeds run in one process: under torchrun, train one configuration per launch")
    if world is not None and cfg.runtime.kind == "ray":
        raise ConfigError("runtime.kind=ray under torchrun: Ray actors and server replicas are two ways to scale "
                          "out; use one")
    if seeds > 1:
        return _run_seeds(cfg, run_dir, reuse, force, tune, seeds)
    if world is not None and not main:
        world.barrier()  # rank 0 builds (or reads) the data cache first, so the ranks never write it together
    dataset = load_dataset(cfg.data, cfg.progress and main)
    if world is not None and main:
        world.barrier()
    results = []
    for name in cfg.methods:
        if tuned is not None:
            results.append(train_chosen(cfg, dataset, name, run_dir, tuned[name], run_method))
            continue
        if tune:
            results.append(tune_method(cfg, dataset, name, run_dir, run_method))
            continue
        method_cfg = method_config(cfg, name)
        saved = reusable(method_cfg, name, run_dir / name) if reuse and main else None
        if world is not None and world.sum([saved is not None])[0]:  # rank 0's folder decides for every rank
            if saved is not None:
                results.append(saved)
            continue
        results.append(saved if saved is not None else run_method(method_cfg, dataset, name, run_dir / name, world))
    if not main:
        return results
    mean_samples = len(dataset.train) / cfg.num_clients
    write_atomically(run_dir / CONFIG_FILE, lambda tmp: tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
    write_json(run_dir / EXPERIMENT_FILE, {"methods": list(cfg.methods),
                                           "scaling": scaling_table(cfg, dataset.spec, mean_samples)})
    if tune:
        write_tuned(run_dir, cfg, results)
    write_reports(run_dir, results, load_scaling(run_dir))
    return results


def _run_seeds(cfg: Config, run_dir: Path, reuse: bool, force: bool, tune: bool, seeds: int) -> list[RunResult]:
    from mpsl.experiment.seeded import write_seeded_reports
    from mpsl.experiment.tune import write_tuned

    by_seed: dict[int, list[RunResult]] = {}
    tuned: dict[str, Tuning] | None = None  # with --tune: what the first seed chose, per method
    for seed in range(cfg.seed, cfg.seed + seeds):
        print(f"seed {seed} ({seed - cfg.seed + 1} of {seeds})", flush=True)
        by_seed[seed] = run_experiment(cfg.replace(seed=seed, name=f"seed-{seed}", out_dir=str(run_dir)),
                                       reuse, force, tune and tuned is None, tuned=tuned)
        if tune and tuned is None:
            tuned = {r.method: r.tuning for r in by_seed[seed] if r.tuning is not None}
            write_tuned(run_dir, cfg, by_seed[seed])
    write_atomically(run_dir / CONFIG_FILE, lambda tmp: tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
    write_json(run_dir / EXPERIMENT_FILE, {"methods": list(cfg.methods), "seeds": sorted(by_seed)})
    write_seeded_reports(run_dir, by_seed)
    return [r for seed in sorted(by_seed) for r in by_seed[seed]]


def load_seeds(run_dir: Path) -> dict[int, list[RunResult]] | None:
    """Each seed's results of a run folder made with --seeds, or None for a single-seed folder."""
    path = run_dir / EXPERIMENT_FILE
    seeds = read_json(path).get("seeds") if path.is_file() else None
    if seeds is None:
        return None
    return {int(s): load_results(run_dir / f"seed-{s}") for s in seeds}


def load_scaling(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / EXPERIMENT_FILE
    return read_json(path).get("scaling", []) if path.is_file() else []


def load_results(run_dir: Path) -> list[RunResult]:
    """The saved results of the last comparison in a run folder, in its order of methods."""
    if (run_dir / EXPERIMENT_FILE).is_file():
        methods = read_json(run_dir / EXPERIMENT_FILE).get("methods", [])
        files = [run_dir / m / RESULTS_FILE for m in methods]
    else:
        files = sorted(run_dir.glob(f"*/{RESULTS_FILE}"))
    if not files:
        raise MpslError(f"no <method>/{RESULTS_FILE} under {run_dir}: not a run folder")
    for f in files:
        if not f.is_file():
            raise MpslError(f"{f} is missing: that method has not finished")
    return [RunResult.load(f) for f in files]
