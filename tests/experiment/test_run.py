from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mpsl.data import DATASETS
from mpsl.data.sources import FILE_DATASETS
from mpsl.experiment.results import SCHEMA_VERSION, RunResult
from mpsl.experiment.run import run_experiment
from tests.helpers import tiny_config

# the layout people read without mpsl: these keys stay where they were before the schema had a version
REQUIRED_TOP = {"schema_version", "method", "dataset", "num_clients", "epochs", "seed", "config", "history", "final",
                "comm", "flops", "params", "client_memory_bytes", "wall_seconds", "versions"}


def test_a_short_run_learns_and_writes_valid_results(tmp_path: Path) -> None:
    # Prepare
    cfg = tiny_config(f"out_dir={tmp_path}", "name=e2e", "train.epochs=4", "train.server_lr=1e-3",
                      "data.train_size=192")

    # Execute
    returned = run_experiment(cfg)

    # Assert
    run_dir = tmp_path / "e2e"
    for method, result in zip(cfg.methods, returned, strict=True):
        path = run_dir / method / "results.json"
        saved = RunResult.load(path)
        assert saved == result  # what was returned is what a reader gets back
        assert set(json.loads(path.read_text())) >= REQUIRED_TOP
        assert saved.schema_version == SCHEMA_VERSION
        assert saved.method == method and saved.dataset == "synthetic-av"
        assert [h.epoch for h in saved.history] == [1, 2, 3, 4]
        assert set(saved.history[0].test) == {"test_accuracy"}
        losses = [h.train_loss for h in saved.history]
        assert losses[-1] < 0.7 * losses[0], f"{method} did not learn: {losses}"
        assert saved.headline == saved.final["test_accuracy"] > 0.5  # 4 classes: chance is 0.25
        assert {"test_accuracy_image_only", "test_accuracy_audio_only"} <= set(saved.final)
        assert saved.config.methods == cfg.methods and saved.seed == cfg.seed
        assert saved.versions.torch == torch.__version__
        assert all((run_dir / method / f"{part}.safetensors").is_file() for part in ("client", "server"))
        assert saved.config.model.encoder.source == "random"
    by_method = {r.method: r for r in returned}
    assert len(by_method["mpsl"].personalized) == cfg.num_clients and by_method["fedavg"].personalized == ()
    assert by_method["mpsl"].personalized_mean == pytest.approx(sum(by_method["mpsl"].personalized) / cfg.num_clients)
    # MPSL clients run only tokenizers and head; FedAvg clients and the centralized party the whole model
    mpsl, fedavg, central = (by_method[m].cost for m in ("mpsl", "fedavg", "centralized"))
    assert mpsl.flops.server_per_sample > mpsl.flops.client_per_sample > 0
    whole = mpsl.flops.model_per_sample
    assert fedavg.flops.client_per_sample == central.flops.client_per_sample == whole
    assert mpsl.client_memory_bytes.total < fedavg.client_memory_bytes.total
    assert mpsl.params.client_trainable < fedavg.params.client_trainable
    for name in ("mpsl", "fedavg"):
        assert by_method[name].comm.bytes_up_per_client > 0 and by_method[name].comm.bytes_down_per_client > 0
    assert by_method["centralized"].comm.bytes_up_per_client == 0
    assert (run_dir / "accuracy.png").stat().st_size > 10_000
    assert "| mpsl " in (run_dir / "compare.md").read_text()


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if n not in FILE_DATASETS])  # those: fixtures
def test_every_registered_dataset_trains_a_few_mpsl_steps(name: str, tmp_path: Path,
                                                          data_cache: Path) -> None:
    cfg = tiny_config(f"data.name={name}", f"data.cache_dir={data_cache}", "data.train_size=60",
                      "data.test_size=30", "methods=[mpsl]", f"out_dir={tmp_path}",
                      "eval.personalized=false")

    (result,) = run_experiment(cfg)

    assert result.dataset == name
    assert result.history[0].steps >= 1
    assert 0.0 <= result.final["test_accuracy"] <= 1.0
    assert sum(result.samples_per_client) == 60


def test_tensorboard_logging_writes_the_per_round_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(f"out_dir={tmp_path}", "name=tb", "methods=[fedavg]", "train.epochs=2",
                      "logging.tensorboard=true")

    run_experiment(cfg)

    events = EventAccumulator(str(tmp_path / "tb" / "fedavg" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"fedavg/train_loss", "fedavg/test_accuracy", "fedavg/bytes_up_per_client"} <= tags
    assert [e.step for e in events.Scalars("fedavg/test_accuracy")] == [1, 2]
    up = [e.value for e in events.Scalars("fedavg/bytes_up_per_client")]
    assert up[1] == 2 * up[0] > 0  # cumulative: the same model is uploaded every round


def test_results_record_where_they_came_from() -> None:
    from mpsl.experiment.provenance import versions

    info = versions()

    assert info.torch == torch.__version__
    commit = info.git_commit
    assert commit is None or len(commit.removesuffix("+dirty")) == 40


def test_a_retrieval_run_reports_recall_both_ways_and_reevaluates_the_same(tmp_path: Path) -> None:
    # Prepare: the Flickr30k fixture, image <-> 5 captions
    from mpsl.experiment.evaluate_run import evaluate_run
    from tests.data.fixtures import FIXTURES

    root = tmp_path / "flickr"
    FIXTURES["flickr30k"](root)
    cfg = tiny_config("data.name=flickr30k", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                      "data.image_size=32", "model.image.patch=[16,16]", "num_clients=2", "train.batch_size=4",
                      "partition.kind=shards", "partition.min_size=1", "methods=[mpsl,centralized]",
                      f"out_dir={tmp_path}", "name=ret", "model.retrieval.normalize=true",
                      "model.retrieval.temperature=0.07", "model.retrieval.learn_temperature=true")

    # Execute
    results = run_experiment(cfg)
    again = evaluate_run(tmp_path / "ret")

    # Assert
    keys = {f"test_{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"test_recall_mean"}
    for r in results:
        assert r.task == "retrieval" and r.metric == "test_recall_mean"
        assert keys <= set(r.final) and all(0.0 <= r.final[k] <= 1.0 for k in keys)
        assert not any(k.endswith("_only") for k in r.final)  # no modality ablations for retrieval
    table = (tmp_path / "ret" / "compare.md").read_text()
    assert "i2t R@1 %" in table and "t2i R@10 %" in table and "mean R@K %" in table
    for row, r in zip(again, results, strict=True):
        assert row.method == r.method and row.saved == r.headline
        assert row.scores["test_recall_mean"] == pytest.approx(r.final["test_recall_mean"])


def test_with_a_validation_split_every_epoch_records_validation_metrics(tmp_path: Path) -> None:
    cfg = tiny_config(f"out_dir={tmp_path}", "name=val", "methods=[mpsl]", "train.epochs=2", "data.val_size=24")

    (result,) = run_experiment(cfg)

    saved = RunResult.load(tmp_path / "val" / "mpsl" / "results.json")
    assert saved == result and [set(h.val) for h in saved.history] == [{"val_accuracy"}] * 2
    assert all(0 <= h.val["val_accuracy"] <= 1 for h in saved.history)
    assert sum(saved.samples_per_client) == 96 - 24  # held out of training
