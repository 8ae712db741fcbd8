"""The command line as a user meets it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpsl.cli import main
from mpsl.config import load_config
from mpsl.experiment.results import RunResult
from tests.helpers import TINY


def _mpsl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpsl", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, check=False)


@pytest.mark.parametrize(
    ("yaml_text", "args", "names"),
    [
        ("train:\n  epochs: many\n", [], "train.epochs"),
        ("trian: {}\n", [], "trian"),
        ("", ["num_clients=100000"], "num_clients"),
        ("", ["data.name=imagenet"], "data.name: unknown dataset 'imagenet' (registered: avdigits, "),
        ("", ["model.fusion=x"], "model.fusion: unknown fusion 'x' (registered: dual, early, late)"),
        ("", ["model.encoder.source=random", "model.encoder.depth=2", "model.encoder.trainable_blocks=3",
              "data.name=synthetic-av"], "trainable_blocks"),
        ("model: [1, 2\n", [], "not valid YAML"),
        ("", ["runtime.device=cuda:7"], "runtime.device: cuda:7"),
    ],
)
def test_bad_config_exits_nonzero_with_one_line(tmp_path: Path, yaml_text: str, args: list[str], names: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)

    proc = _mpsl("run", str(config), *args, f"out_dir={tmp_path}/runs", cwd=tmp_path)

    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert names in lines[0] and lines[0].startswith("mpsl: error:")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_config_file_names_the_packaged_configs(tmp_path: Path) -> None:
    proc = _mpsl("run", "nope.yaml", cwd=tmp_path)

    assert proc.returncode == 2 and "nope.yaml does not exist" in proc.stderr
    assert "packaged: avdigits, clipart, emoji, paper" in proc.stderr and proc.stderr.count("\n") == 1


def test_run_writes_results_and_its_config_and_never_overwrites_them_unless_forced(tmp_path: Path) -> None:
    # Prepare
    config = tmp_path / "tiny.yaml"
    config.write_text("name: cli\nmethods: [mpsl]\n")
    args = [str(config), *TINY, f"out_dir={tmp_path}"]

    # Execute
    first = _mpsl("run", *args, cwd=tmp_path)
    results = tmp_path / "cli" / "mpsl" / "results.json"
    written = results.read_bytes()
    saved_config = load_config(tmp_path / "cli" / "config.yaml")
    again = _mpsl("run", *args, "train.server_lr=2e-3", cwd=tmp_path)
    kept = results.read_bytes()
    forced = _mpsl("run", *args, "train.server_lr=2e-3", "--force", cwd=tmp_path)

    # Assert
    assert first.returncode == 0, first.stderr
    assert RunResult.load(results).num_clients == 3 and "| mpsl " in first.stdout
    assert saved_config == load_config(config, args[1:])  # the resolved config: `mpsl run` it to redo the run
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--force" in again.stderr
    assert kept == written
    assert forced.returncode == 0, forced.stderr
    assert RunResult.load(results).config.train.server_lr == 2e-3
    assert load_config(tmp_path / "cli" / "config.yaml").train.server_lr == 2e-3


def test_list_shows_the_registries(tmp_path: Path) -> None:
    proc = _mpsl("list", cwd=tmp_path)

    assert proc.returncode == 0
    assert "avdigits" in proc.stdout and "dirichlet" in proc.stdout and "minilm" in proc.stdout
    assert "config     emoji " in proc.stdout and "config     paper " in proc.stdout  # `mpsl run emoji`


def test_import_registers_a_users_own_dataset(tmp_path: Path) -> None:
    # Prepare: a user's module that registers a dataset under a new name
    (tmp_path / "my_data.py").write_text(
        "import torch\n"
        "from mpsl.data import DATASETS, Dataset, DatasetSpec, ModalitySpec, SplitData\n"
        "from mpsl.data.sources import DatasetSource\n"
        "def load(cfg, progress):\n"
        "    g = torch.Generator().manual_seed(cfg.seed)\n"
        "    def split(n):\n"
        "        y = torch.randint(0, 3, (n,), generator=g)\n"
        "        return SplitData({'img': torch.randn(n, 1, 8, 8, generator=g) + y[:, None, None, None]}, y)\n"
        "    spec = DatasetSpec('mine', {'img': ModalitySpec('image', (1, 8, 8))}, num_classes=3)\n"
        "    return Dataset(spec, split(cfg.train_size), split(cfg.test_size))\n"
        "DATASETS.register('mine')(DatasetSource(lambda cfg, progress: None, load, 'my own data'))\n"
    )
    config = tmp_path / "mine.yaml"
    config.write_text("name: mine\nmethods: [mpsl]\ndata: {name: mine}\n")

    # Execute
    proc = _mpsl("run", "-i", "my_data", str(config), *[o for o in TINY if not o.startswith("data.name")],
                 f"out_dir={tmp_path}", cwd=tmp_path)

    # Assert
    assert proc.returncode == 0, proc.stderr
    results = RunResult.load(tmp_path / "mine" / "mpsl" / "results.json")
    assert results.dataset == "mine"
    assert "test_accuracy_img_only" not in results.final  # one modality: no ablation


def test_unknown_import_is_one_line(tmp_path: Path) -> None:
    proc = _mpsl("run", "-i", "no_such_module_xyz", "x.yaml", cwd=tmp_path)

    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no_such_module_xyz" in proc.stderr


def test_report_redoes_the_comparison_byte_for_byte(tmp_path: Path) -> None:
    # Prepare: a finished comparison, its outputs then removed
    config = tmp_path / "tiny.yaml"
    config.write_text("name: rep\n")
    assert _mpsl("compare", str(config), *TINY, f"out_dir={tmp_path}", cwd=tmp_path).returncode == 0
    run = tmp_path / "rep"
    saved = {name: (run / name).read_bytes() for name in ("compare.md", "compare.csv")}
    plots = ("accuracy.png", "time_to_accuracy.png", "client_compute.png", "communication.png")
    for name in (*saved, *plots):
        (run / name).unlink()

    # Execute
    proc = _mpsl("report", str(run), cwd=tmp_path)

    # Assert
    assert proc.returncode == 0, proc.stderr
    for name, before in saved.items():
        assert (run / name).read_bytes() == before, name
    for png in plots:
        assert (run / png).stat().st_size > 10_000
    table = saved["compare.md"].decode()
    assert "simulated min (mix)" in table and "time_to_accuracy.png" in table
    assert table.index("| mpsl ") < table.index("| fedavg ") < table.index("| centralized ")
    assert len(saved["compare.csv"].decode().strip().splitlines()) == 1 + 3


def test_compare_reuses_finished_methods_unless_settings_change_or_forced(tmp_path: Path) -> None:
    # Prepare
    config = tmp_path / "tiny.yaml"
    config.write_text("name: resume\n")
    common = [*TINY, f"out_dir={tmp_path}"]
    assert _mpsl("compare", str(config), "--methods", "mpsl", *common, cwd=tmp_path).returncode == 0
    mpsl_results = tmp_path / "resume" / "mpsl" / "results.json"
    first = mpsl_results.read_bytes()

    # Execute / Assert: mpsl is reused, centralized is trained
    proc = _mpsl("compare", str(config), "--methods", "mpsl,centralized", *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "mpsl: reusing" in proc.stdout and mpsl_results.read_bytes() == first
    assert (tmp_path / "resume" / "centralized" / "results.json").is_file()

    # a changed setting retrains and says why; --force retrains regardless
    proc = _mpsl("compare", str(config), "--methods", "mpsl", *common, "train.server_lr=2e-3", cwd=tmp_path)
    assert "train.server_lr" in proc.stdout and "retraining" in proc.stdout
    assert RunResult.load(mpsl_results).config.train.server_lr == 2e-3
    second = mpsl_results.read_bytes()
    proc = _mpsl("compare", str(config), "--methods", "mpsl", "--force", *common, "train.server_lr=2e-3",
                 cwd=tmp_path)
    assert proc.returncode == 0 and "reusing" not in proc.stdout and mpsl_results.read_bytes() != second


def test_eval_reloads_the_checkpoints_and_reproduces_the_accuracy(tmp_path: Path) -> None:
    # Prepare
    config = tmp_path / "tiny.yaml"
    config.write_text("name: ev\nmethods: [mpsl, fedavg-adapter]\n")
    assert _mpsl("run", str(config), *TINY, f"out_dir={tmp_path}", cwd=tmp_path).returncode == 0

    # Execute
    proc = _mpsl("eval", str(tmp_path / "ev"), cwd=tmp_path)

    # Assert: saved and re-evaluated columns agree for every method
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|")[1:4] for line in proc.stdout.splitlines() if line.startswith("| ") and "%" not in line]
    assert [r[0].strip() for r in rows] == ["mpsl", "fedavg-adapter"]
    assert all(r[1].strip() == r[2].strip() for r in rows), proc.stdout


def test_eval_names_a_corrupted_checkpoint(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text("name: bad\nmethods: [mpsl]\n")
    assert _mpsl("run", str(config), *TINY, f"out_dir={tmp_path}", cwd=tmp_path).returncode == 0
    checkpoint = tmp_path / "bad" / "mpsl" / "server.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])

    proc = _mpsl("eval", str(tmp_path / "bad"), cwd=tmp_path)

    assert proc.returncode == 2 and "server.safetensors" in proc.stderr and "Traceback" not in proc.stderr


def test_report_on_a_folder_without_results(tmp_path: Path) -> None:
    proc = _mpsl("report", str(tmp_path), cwd=tmp_path)

    assert proc.returncode == 2 and "not a run folder" in proc.stderr


def test_demo_runs_the_packaged_config(tmp_path: Path) -> None:
    # Prepare: the demo's own config, shrunk to seconds (random encoder, tiny data)
    small = [f"data.cache_dir={tmp_path / 'cache'}", "data.train_size=80", "data.test_size=40", "train.epochs=1",
             "model.encoder.source=random", "model.encoder.width=32", "model.encoder.depth=2",
             "model.encoder.heads=2", "model.encoder.trainable_blocks=1", "progress=false", f"out_dir={tmp_path}"]

    # Execute
    proc = _mpsl("demo", *small, cwd=tmp_path)

    # Assert
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "avdigits-demo"
    results = RunResult.load(run / "mpsl" / "results.json")
    assert results.dataset == "avdigits" and results.num_clients == 8
    assert results.config.model.image.patch == (14, 14)  # from the packaged demo config
    assert {"test_accuracy_image_only", "test_accuracy_audio_only"} <= set(results.final)
    for method in ("fedavg", "centralized"):
        assert (run / method / "results.json").is_file()
    assert (run / "compare.md").is_file() and (run / "accuracy.png").is_file()


def test_prepare_unknown_dataset_is_one_line(tmp_path: Path) -> None:
    proc = _mpsl("data", "prepare", "imagenet", cwd=tmp_path)

    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "'imagenet' is not a config file, a packaged config (avdigits, clipart, emoji, paper) or a dataset (" \
        in proc.stderr


def test_prepare_of_a_packaged_config_builds_exactly_the_cache_that_config_reads(tmp_path: Path) -> None:
    # Prepare: the packaged emoji config (64 px images, 16 text tokens), a few samples, no progress output
    from mpsl.data.catalog import cache_dir, dataset_root
    from mpsl.data.sources import FILE_DATASETS, cache_root

    overrides = ["data.train_size=8", "data.test_size=4", "partition.min_size=1", f"data.cache_dir={tmp_path}",
                 "progress=false"]
    data = load_config("emoji", overrides).data
    ds = FILE_DATASETS["emoji"]

    # Execute
    proc = _mpsl("data", "prepare", "emoji", *overrides, cwd=tmp_path)

    # Assert
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"emoji ready in {cache_dir(ds, data, cache_root(data), dataset_root(ds, data))}")
    assert proc.stderr == ""  # progress=false: not a line about the build
    (meta,) = tmp_path.glob("emoji/*/meta.json")
    assert json.loads(meta.read_text())["modalities"]["image"]["shape"] == [3, 64, 64]


@pytest.mark.parametrize(("args", "names"), [(["--preset", "vit-x", "--task", "coco-qa"], "unknown preset 'vit-x'"),
                                             (["--preset", "vit-b16", "--task", "imagenet"], "unknown cost task"),
                                             (["--preset", "vit-b16"], "--preset and --task, or --all")])
def test_cost_rejects_unknown_presets_and_tasks_with_one_line(tmp_path: Path, args: list[str], names: str) -> None:
    proc = _mpsl("cost", *args, cwd=tmp_path)

    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and names in proc.stderr


def test_partition_report_prints_client_histograms_and_saves_a_heatmap(tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text("partition: {kind: dirichlet, alpha: 0.3, min_size: 2}\n")

    proc = _mpsl("data", "partition-report", str(config), *TINY, "--heatmap", "h.png", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [0, 1, 2]  # TINY: 3 clients
    assert sum(int(r[1]) for r in rows) == 96 and all(int(r[1]) == sum(map(int, r[2:])) for r in rows)
    assert (tmp_path / "h.png").stat().st_size > 5_000


def test_partition_report_of_retrieval_shards_gives_sizes_and_refuses_a_label_heatmap(tmp_path: Path) -> None:
    # Prepare: Flickr30k fixture, random equal shards over 2 clients
    from tests.data.fixtures import FIXTURES

    fx = FIXTURES["flickr30k"](tmp_path / "flickr")
    config = tmp_path / "r.yaml"
    config.write_text("partition: {kind: shards, min_size: 1}\nnum_clients: 2\n")
    args = ["data.name=flickr30k", f"data.root={tmp_path / 'flickr'}", f"data.cache_dir={tmp_path / 'c'}"]

    # Execute
    proc = _mpsl("data", "partition-report", str(config), *args, cwd=tmp_path)
    heat = _mpsl("data", "partition-report", str(config), *args, "--heatmap", "h.png", cwd=tmp_path)

    # Assert
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert rows == [["0", str(fx.train // 2)], ["1", str(fx.train // 2)]]  # sizes, no label columns
    assert heat.returncode == 2 and "no labels" in heat.stderr


def test_a_partition_registered_by_an_imported_module_can_be_chosen(tmp_path: Path) -> None:
    # Prepare: a user's module that registers a partition under a new name
    (tmp_path / "my_partition.py").write_text(
        "import numpy as np\n"
        "from mpsl.data import PARTITIONS\n"
        "@PARTITIONS.register('first-gets-half')\n"
        "def first_gets_half(labels, num_clients, cfg, rng):\n"
        "    half = len(labels) // 2\n"
        "    rest = np.array_split(np.arange(half, len(labels)), num_clients - 1)\n"
        "    return [np.arange(half), *rest]\n"
    )
    config = tmp_path / "p.yaml"
    config.write_text("partition: {kind: first-gets-half}\n")

    # Execute
    proc = _mpsl("data", "partition-report", "-i", "my_partition", str(config), *TINY, cwd=tmp_path)
    without = _mpsl("data", "partition-report", str(config), *TINY, cwd=tmp_path)

    # Assert
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[1]) for r in rows] == [48, 24, 24]  # TINY: 96 samples, 3 clients
    assert without.returncode == 2 and "partition.kind: unknown partition 'first-gets-half'" in without.stderr


def test_an_unknown_log_format_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")

    proc = _mpsl("server", str(config), *TINY, "--listen", "127.0.0.1:0", "--log-format", "xml", cwd=tmp_path)

    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--log-format xml: unknown (known: text, json)" in proc.stderr


def test_compare_tune_trains_the_grid_and_reports_the_kept_setting(tmp_path: Path) -> None:
    # Prepare
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tuned\n")

    # Execute: in this process (main() is the command line), to spare the suite a Python start-up
    code = main(["compare", str(config), *TINY, f"out_dir={tmp_path}", "--tune", "--methods", "centralized",
                 "data.val_size=16", "tune.lr_factors=[0.5,2]"])

    # Assert: both trials trained, the kept one is the comparison's, and compare.md says which it is
    assert code == 0
    run = tmp_path / "tuned"
    assert sorted(p.name for p in (run / "tuning" / "centralized").iterdir()) == ["trial-0", "trial-1"]
    saved = RunResult.load(run / "centralized" / "results.json")
    assert saved.tuning is not None and len(saved.tuning.trials) == 2
    kept = saved.tuning.trials[saved.tuning.chosen]
    assert kept.val == max(t.val for t in saved.tuning.trials) == saved.history[-1].val["val_accuracy"]
    assert "centralized: tuned over 2 settings" in (run / "compare.md").read_text()


def test_compare_seeds_trains_once_per_seed_and_report_redoes_the_summary(tmp_path: Path) -> None:
    # Prepare
    config = tmp_path / "tiny.yaml"
    config.write_text("name: seeded\nseed: 7\n")

    # Execute: in this process (main() is the command line)
    code = main(["compare", str(config), *TINY, f"out_dir={tmp_path}", "--seeds", "2", "--methods", "centralized"])
    run = tmp_path / "seeded"
    summary = (run / "compare.md").read_text()
    (run / "compare.md").unlink()
    redo = main(["report", str(run)])

    # Assert: two complete run folders, a summary over both, redone byte for byte from the saved results
    assert code == 0 and redo == 0
    seeds = [RunResult.load(run / f"seed-{s}" / "centralized" / "results.json") for s in (7, 8)]
    assert [r.seed for r in seeds] == [7, 8]
    assert "(mean ± std)" in summary and "| seed 7 | seed 8 |" in summary
    assert (run / "compare.md").read_text() == summary
