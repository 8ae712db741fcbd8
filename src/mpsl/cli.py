"""Command line: `mpsl run | compare | demo | report | eval | export | server | client | status | cost | data |
list`."""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from typing import TYPE_CHECKING

from mpsl.errors import ConfigError, MpslError

if TYPE_CHECKING:
    from mpsl.config import Config


CONFIG_HELP = "a YAML config file, or the name of a config shipped with mpsl (`mpsl list`)"
DEFAULT_PORT_HELP = "without a port: the default port, 50051, which `mpsl server` listens on too"  # address.py


def _version() -> str:
    """The installed distribution's version (its metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mpsl")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        from mpsl import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpsl", description="Multimodal Parallel Split Learning")
    parser.add_argument("--version", action="version", version=f"mpsl {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train the methods of a config and write runs/<name>/")
    run.add_argument("config", help=CONFIG_HELP)
    run.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.epochs=2 model.head=server")
    run.add_argument("--force", action="store_true", help="overwrite the run folder of an earlier run of this name")

    compare = sub.add_parser("compare", help="train several methods on the same data and seed, then compare them "
                                             "(finished methods are reused)")
    compare.add_argument("config", help=CONFIG_HELP)
    compare.add_argument("overrides", nargs="*", metavar="key=value")
    compare.add_argument("--methods", help="comma-separated, e.g. mpsl,fedavg,centralized (default: the config's)")
    compare.add_argument("--seeds", type=int, default=1, help="train the whole comparison this many times (seed, "
                         "seed + 1, ...) and report mean ± std (default 1)")
    compare.add_argument("--tune", action="store_true", help="train each method over its grid (tune.*) with the same "
                         "budget and keep the best on the validation split (needs data.val_size); with --seeds, "
                         "the first seed tunes and the others train at its choices")

    demo = sub.add_parser("demo", help="MPSL vs FedAvg vs centralized on the embedded avdigits dataset")
    demo.add_argument("overrides", nargs="*", metavar="key=value")
    for resumable in (compare, demo):
        resumable.add_argument("--force", action="store_true", help="retrain methods that already have results")
    server = sub.add_parser("server", help="host the encoder and drive MPSL training of remote clients over gRPC")
    server.add_argument("config", help=f"{CONFIG_HELP} (the same one the clients use)")
    server.add_argument("overrides", nargs="*", metavar="key=value")
    server.add_argument("--listen", required=True, metavar="HOST[:PORT]",
                        help="e.g. 0.0.0.0:50051; without a port the default port (50051); port 0: any free port, "
                             "logged")
    server.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    server.add_argument("--tokens", metavar="FILE", help="YAML mapping client id -> secret token")
    server.add_argument("--tls-cert", metavar="FILE", help="server certificate (PEM); with --tls-key")
    server.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    server.add_argument("--tls-client-ca", metavar="FILE",
                        help="mutual TLS: accept only clients presenting a certificate signed by this CA (PEM)")
    server.add_argument("--public-status", action="store_true",
                        help="answer `mpsl status` without a token even when --tokens is set")

    client = sub.add_parser("client", help="train this device's tokenizers against an mpsl server")
    client.add_argument("config", help=f"{CONFIG_HELP} (the same one the server uses)")
    client.add_argument("overrides", nargs="*", metavar="key=value")
    client.add_argument("--server", required=True, metavar="HOST[:PORT]", help=DEFAULT_PORT_HELP)
    client.add_argument("--client-id", required=True, type=int, help="this device's id, 0..num_clients-1; "
                                                                     "it also selects the data partition")
    client.add_argument("--data", choices=("partition", "all"), default="partition",
                        help="partition: this client's share of the dataset (simulating many devices on one "
                             "dataset); all: the whole training split the dataset loader returns on this device")
    client.add_argument("--resume", action="store_true", help="start from this client's last checkpoint")
    client.add_argument("--token-file", metavar="FILE", help="file whose first line is this client's token")
    client.add_argument("--tls-ca", metavar="FILE", help="CA (or self-signed) certificate to trust (PEM)")
    client.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM) for a server that asks for one "
                                                           "(--tls-client-ca); with --tls-key")
    client.add_argument("--tls-key", metavar="FILE", help="client private key (PEM)")
    client.add_argument("--retry-for", type=float, default=300.0, metavar="SECONDS",
                        help="keep reconnecting this long after losing the server (default 300)")
    for deployed in (server, client):
        deployed.add_argument("--log-format", default="text", metavar="FORMAT",
                              help="text: one `event=<name> key=value ...` line per event (default); json: one "
                                   "JSON object per line with the event's name and fields")

    cost = sub.add_parser("cost", help="per-sample FLOPs and bytes of MPSL vs FL for the paper's tasks and backbones")
    cost.add_argument("--preset", help="backbone, e.g. vit-b16 (`mpsl list`)")
    cost.add_argument("--task", help="paper task shape, e.g. coco-qa (`mpsl list`)")
    cost.add_argument("--all", action="store_true", help="every task x every backbone")
    cost.add_argument("--wire-dtype", default="float16", choices=("float32", "float16", "bfloat16"),
                      help="the second bytes column (the first is fp32)")
    cost.add_argument("--write", metavar="FILE", help="with --all: write the Markdown report (docs/costs.md)")

    privacy = sub.add_parser("privacy", help="train MPSL and attack it as the server: label inference and input "
                                             "reconstruction per epoch (docs/privacy.md)")
    privacy.add_argument("config", help=CONFIG_HELP)
    privacy.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. privacy.grad_clip=1 train.epochs=2")
    privacy.add_argument("--write", metavar="FILE", help="also write the Markdown table to FILE")

    status = sub.add_parser("status", help="connected clients and progress of a running mpsl server")
    status.add_argument("--server", required=True, metavar="HOST[:PORT]", help=DEFAULT_PORT_HELP)
    status.add_argument("--tls-ca", metavar="FILE")
    status.add_argument("--token-file", metavar="FILE", help="any client's token file (a server with --tokens "
                                                             "answers only token holders)")
    status.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM), with --tls-key")
    status.add_argument("--tls-key", metavar="FILE")

    for training in (run, compare, demo, server, client):
        training.add_argument("-i", "--import", dest="imports", action="append", default=[], metavar="MODULE",
                              help="import a module first, e.g. one that registers your own dataset (repeatable)")

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prepare = data_sub.add_parser("prepare", help="build the dataset cache a config uses (re-used when present)")
    cache = data_sub.add_parser("cache", help="decode a file dataset once into a memory-mapped cache that later "
                                              "runs with the same data.* settings read instead of the files")
    for p in (prepare, cache):
        p.add_argument("name", metavar="config", help=f"{CONFIG_HELP}, or a dataset name (its default settings)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.root=/data/flickr30k")
        p.add_argument("-i", "--import", dest="imports", action="append", default=[], metavar="MODULE",
                       help="import a module first, e.g. one that registers your own dataset")
    spread = data_sub.add_parser("partition-report", help="per-client sizes and label histograms of a config's "
                                                          "partition, before training")
    spread.add_argument("config", help=CONFIG_HELP)
    spread.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. partition.kind=dirichlet")
    spread.add_argument("--heatmap", metavar="PNG", help="also save a clients x classes heatmap")
    spread.add_argument("-i", "--import", dest="imports", action="append", default=[], metavar="MODULE")

    report = sub.add_parser("report", help="redo compare.md, compare.csv and the plots of a run folder from its "
                                           "saved results, without training")
    report.add_argument("run_dir", help="e.g. runs/avdigits-demo")

    evaluate = sub.add_parser("eval", help="re-evaluate the saved final models of a run folder on the test set")
    evaluate.add_argument("run_dir", help="e.g. runs/avdigits-demo")
    evaluate.add_argument("--methods", help="comma-separated subset (default: every method with a checkpoint)")

    export = sub.add_parser("export", help="write a run's trained encoder as a transformers model directory (and "
                                           "its LoRA weights as a peft adapter)")
    export.add_argument("run_dir", help="a run folder (e.g. runs/avdigits-demo) or one method's folder in it")
    export.add_argument("--method", help="which method's encoder (default: mpsl, else the run's first)")
    export.add_argument("--out", metavar="DIR", help="default: <method folder>/export")

    sub.add_parser("list", help="packaged configs, registered datasets, encoders, methods, fusions, partitions")
    return parser


def _import_plugins(modules: list[str]) -> None:
    """User modules that register datasets, encoders or methods before the config is checked; found
    on the Python path or, as with `python -m`, in the current folder."""
    import importlib
    import os
    import sys

    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise MpslError(f"--import {name}: {exc}") from None


def _run(args: argparse.Namespace) -> None:
    from mpsl.config import DEMO_CONFIG, load_config
    from mpsl.experiment.run import run_experiment
    from mpsl.runtime.distributed import join

    _import_plugins(args.imports)
    overrides = list(args.overrides)
    if getattr(args, "methods", None):
        overrides.append(f"methods=[{args.methods}]")
    cfg = load_config(DEMO_CONFIG if args.command == "demo" else args.config, overrides)
    tune, seeds = getattr(args, "tune", False), getattr(args, "seeds", 1)
    if seeds < 1:
        raise MpslError(f"--seeds {seeds}: must be at least 1")
    world = join(cfg)  # under torchrun: this process is one of K server replicas (README: Scaling out)
    try:
        with _quiet_unless(world is None or world.is_main):
            run_experiment(cfg, reuse=args.command != "run" and not args.force and not tune,
                           force=args.force or tune, tune=tune, seeds=seeds, world=world)
    finally:
        if world is not None:
            world.close()


def _quiet_unless(main: bool) -> contextlib.AbstractContextManager:
    """Replicas other than rank 0 print nothing (errors still reach stderr)."""
    return contextlib.nullcontext() if main else contextlib.redirect_stdout(io.StringIO())


def _data(args: argparse.Namespace) -> None:
    from mpsl.config import load_config

    if args.data_command in ("prepare", "cache"):
        from mpsl.data import prepare_dataset
        from mpsl.data.sources import FILE_DATASETS

        _import_plugins(args.imports)
        cfg = _config_or_dataset(args.name, args.overrides)
        path = prepare_dataset(cfg.data, cfg.progress)
        size = sum(f.stat().st_size for f in path.glob("*.npy")) / 1e6
        print(f"{cfg.data.name} ready in {path}" + (f" ({size:.1f} MB)" if cfg.data.name in FILE_DATASETS else ""))
        return
    from pathlib import Path

    from mpsl.analysis.partition_report import client_histograms, heatmap, report_text

    _import_plugins(args.imports)
    cfg = load_config(args.config, args.overrides)
    counts, holdings, sizes = client_histograms(cfg)
    print(report_text(counts, cfg, holdings, sizes))
    if args.heatmap and counts.shape[1] == 0:
        raise MpslError(f"--heatmap: {cfg.data.name} has no labels to draw (retrieval); the sizes are above")
    if args.heatmap:
        title = f"{cfg.data.name}: {cfg.partition.kind} partition over {cfg.num_clients} clients"
        print(f"wrote {heatmap(counts, Path(args.heatmap), title)}")


def _config_or_dataset(name: str, overrides: list[str]) -> Config:
    """A config file, a packaged config, or else a dataset name with the default settings, in that order: `mpsl
    data prepare emoji` builds exactly the cache that configs/emoji.yaml (the packaged `emoji`) reads."""
    from mpsl.config import find_config, load_config, packaged_configs
    from mpsl.data import DATASETS

    try:
        path = find_config(name)
    except ConfigError:
        if name not in DATASETS:
            raise ConfigError(f"{name!r} is not a config file, a packaged config ({', '.join(packaged_configs())}) "
                              f"or a dataset ({', '.join(DATASETS)})") from None
        return load_config(None, [f"data.name={name}", *overrides])
    return load_config(path, overrides)


def _report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mpsl.experiment.report import write_reports
    from mpsl.experiment.run import load_results, load_scaling, load_seeds
    from mpsl.experiment.seeded import write_seeded_reports

    run_dir = Path(args.run_dir)
    by_seed = load_seeds(run_dir)
    if by_seed is None:
        write_reports(run_dir, load_results(run_dir), load_scaling(run_dir))
        return
    for seed, results in by_seed.items():
        write_reports(run_dir / f"seed-{seed}", results, load_scaling(run_dir / f"seed-{seed}"))
    write_seeded_reports(run_dir, by_seed)


def _eval(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mpsl.experiment.evaluate_run import evaluate_run

    evaluate_run(Path(args.run_dir), args.methods.split(",") if args.methods else None)


def _export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mpsl.experiment.export import export_encoder, method_dir

    folder = method_dir(Path(args.run_dir), args.method)
    for path in export_encoder(folder, Path(args.out) if args.out else folder / "export"):
        loader = "PeftModel.from_pretrained(model, ...)" if path.name == "adapter" else "AutoModel.from_pretrained"
        print(f"wrote {path} ({loader})")


def _server(args: argparse.Namespace) -> None:
    from mpsl.config import load_config
    from mpsl.deploy.server_app import serve
    from mpsl.runtime.distributed import refuse_replicas

    _import_plugins(args.imports)
    cfg = load_config(args.config, args.overrides)
    refuse_replicas("mpsl server")
    serve(cfg, args.listen, args.resume, args.tokens, _cert_and_key(args), args.tls_client_ca, args.public_status,
          args.log_format)


def _cert_and_key(args: argparse.Namespace) -> tuple[str, str] | None:
    from mpsl.errors import ConfigError

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    return (args.tls_cert, args.tls_key) if args.tls_cert else None


def _client(args: argparse.Namespace) -> None:
    import asyncio

    from mpsl.config import load_config
    from mpsl.deploy.client_app import run_client

    _import_plugins(args.imports)
    cfg = load_config(args.config, args.overrides)
    asyncio.run(run_client(cfg, args.server, args.client_id, args.resume, args.token_file, args.tls_ca,
                           args.retry_for, whole_split=args.data == "all", client_cert=_cert_and_key(args),
                           log_format=args.log_format))


def _privacy(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mpsl.config import load_config
    from mpsl.data import load_dataset
    from mpsl.experiment.privacy import audit, audit_table
    from mpsl.registry import check_choices

    cfg = load_config(args.config, args.overrides)
    check_choices(cfg)
    table = audit_table(audit(cfg, load_dataset(cfg.data, cfg.progress)))
    print(table)
    if args.write:
        Path(args.write).write_text(table + "\n")
        print(f"wrote {args.write}")


def _cost(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mpsl.analysis.costs import COST_TASKS, all_costs, costs_markdown, costs_table, task_cost
    from mpsl.models import PRESETS

    if args.all:
        if args.write:
            Path(args.write).write_text(costs_markdown(args.wire_dtype))
            print(f"wrote {args.write}")
        else:
            print(costs_table(all_costs(args.wire_dtype), args.wire_dtype))
        return
    if not args.preset or not args.task:
        raise ConfigError("mpsl cost needs --preset and --task, or --all")
    PRESETS.get(args.preset)
    COST_TASKS.get(args.task)
    print(costs_table([task_cost(args.preset, args.task, args.wire_dtype)], args.wire_dtype))


def _status(args: argparse.Namespace) -> None:
    import asyncio
    import json

    from mpsl.deploy.server_app import status
    from mpsl.runtime.network.security import read_secret

    token = read_secret(args.token_file) if args.token_file else None
    print(json.dumps(asyncio.run(status(args.server, args.tls_ca, token, _cert_and_key(args))), indent=2))


def _list(args: argparse.Namespace) -> None:
    from mpsl.analysis.costs import COST_TASKS
    from mpsl.config import packaged_configs
    from mpsl.data import DATASETS, PARTITIONS
    from mpsl.experiment.methods import METHODS
    from mpsl.models import ENCODERS, FUSIONS, PRESETS, TOKENIZERS

    configs = packaged_configs()
    width = max(map(len, [*DATASETS, *configs]))
    for name, path in configs.items():  # `mpsl run NAME`: the first comment line says what it is
        about = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        print(f"config     {name:<{width}} {about}")
    for name in DATASETS:
        print(f"dataset    {name:<{width}} {DATASETS.get(name).summary}")
    for title, registry in (("encoder", ENCODERS), ("tokenizer", TOKENIZERS), ("fusion", FUSIONS),
                            ("partition", PARTITIONS), ("method", METHODS), ("preset", PRESETS),
                            ("cost task", COST_TASKS)):
        print(f"{title:<10} {', '.join(registry)}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also come after options, e.g. `compare C.yaml --methods a,b k=v`
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    commands = {"run": _run, "compare": _run, "demo": _run, "data": _data, "report": _report, "eval": _eval,
                "export": _export, "server": _server, "client": _client, "status": _status, "cost": _cost,
                "privacy": _privacy, "list": _list}
    try:
        commands[args.command](args)
    except MpslError as exc:
        print(f"mpsl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mpsl: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
