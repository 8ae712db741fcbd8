"""Command line: `mpsl run`, `mpsl demo`, `mpsl data prepare`, `mpsl report`, `mpsl list`."""

from __future__ import annotations

import argparse
import sys

from mpsl.errors import MpslError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpsl", description="Multimodal Parallel Split Learning")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train the methods of a config and write runs/<name>/")
    run.add_argument("config", help="YAML config file")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.epochs=2 model.head=server")

    demo = sub.add_parser("demo", help="MPSL vs centralized on the embedded avdigits dataset")
    demo.add_argument("overrides", nargs="*", metavar="key=value")
    for training in (run, demo):
        training.add_argument("-i", "--import", dest="imports", action="append", default=[], metavar="MODULE",
                              help="import a module first, e.g. one that registers your own dataset (repeatable)")

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prepare = data_sub.add_parser("prepare", help="build a dataset's cache (re-used when present)")
    prepare.add_argument("name")
    prepare.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.cache_dir=/tmp/mpsl")

    report = sub.add_parser("report", help="redo summary.md and accuracy.png of a run folder from its results")
    report.add_argument("run_dir", help="e.g. runs/avdigits-demo")

    sub.add_parser("list", help="registered datasets, encoders, methods, fusions, partitions")
    return parser


def _import_plugins(modules: list[str]) -> None:
    """User modules that register datasets, encoders or methods before the config is checked."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise MpslError(f"--import {name}: {exc}") from None


def _run(args: argparse.Namespace) -> None:
    from mpsl.config import DEMO_CONFIG, load_config
    from mpsl.experiment.run import run_experiment

    _import_plugins(args.imports)
    cfg = load_config(args.config if args.command == "run" else DEMO_CONFIG, args.overrides)
    run_experiment(cfg)


def _prepare(args: argparse.Namespace) -> None:
    from mpsl.config import load_config
    from mpsl.data import prepare_dataset

    cfg = load_config(None, [f"data.name={args.name}", *args.overrides])
    print(f"{args.name} ready in {prepare_dataset(cfg.data)}")


def _report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mpsl.experiment.run import load_results, write_reports

    run_dir = Path(args.run_dir)
    write_reports(run_dir, load_results(run_dir))


def _list(args: argparse.Namespace) -> None:
    from mpsl.data import DATASETS, PARTITIONS
    from mpsl.experiment.setup import METHODS
    from mpsl.models import ENCODERS, FUSIONS, TOKENIZERS

    for name in DATASETS:
        print(f"dataset    {name:<14} {DATASETS.get(name).summary}")
    for title, registry in (("encoder", ENCODERS), ("tokenizer", TOKENIZERS), ("fusion", FUSIONS),
                            ("partition", PARTITIONS), ("method", METHODS)):
        print(f"{title:<10} {', '.join(registry)}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"run": _run, "demo": _run, "data": _prepare, "report": _report, "list": _list}
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
