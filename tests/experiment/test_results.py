"""results.json is a versioned contract: what is saved is read back as the same record, and a file of
another version or with a missing or mistyped key is refused with one line naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpsl.config import Config
from mpsl.errors import MpslError
from mpsl.experiment.results import (
    SCHEMA_VERSION,
    ClientMemory,
    Comm,
    Cost,
    EpochRecord,
    FlopsPerSample,
    RunResult,
    TrainableParams,
    Versions,
)


def _result() -> RunResult:
    """A made-up two-client, two-epoch result with every kind of field filled in."""
    epochs = tuple(EpochRecord(epoch=e, train_loss=2.0 / e, train_accuracy=0.2 * e, steps=4,
                               bytes_up_per_client=10.0 * e, bytes_down_per_client=12.0 * e, seconds=0.5,
                               test={"test_accuracy": 0.3 * e})
                   for e in (1, 2))
    return RunResult(
        method="mpsl", dataset="synthetic-av", task="classification", metric="test_accuracy", num_clients=2,
        epochs=2, seed=7, config=Config().replace(**{"num_clients": 2, "partition.kind": "iid"}), history=epochs,
        final={"test_accuracy": 0.6, "test_accuracy_image_only": 0.4, "test_accuracy_personalized_mean": 0.45},
        personalized=(0.4, 0.5),
        comm=Comm(20.0, 24.0, 10.0, 12.0, 16.0, 20.0, 8.0),
        cost=Cost(FlopsPerSample(1.0e6, 9.0e6, 1.0e7, 0.1), ClientMemory(100, 200, 300, 600, 4),
                  TrainableParams(1000, 9000, 10000, 12000)),
        samples_per_client=(30, 20), modalities_per_client=(("image", "audio"), ("audio",)), client_batch_size=4,
        wall_seconds=3.5, versions=Versions(mpsl="0.1.0", torch="2.13.0", python="3.11.9", git_commit=None))


def _saved(tmp_path: Path, edit=None) -> Path:
    tree = _result().to_json()
    if edit is not None:
        edit(tree)
    path = tmp_path / "mpsl" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tree))
    return path


def test_a_saved_result_loads_back_as_the_same_record(tmp_path: Path) -> None:
    # Prepare
    result = _result()

    # Execute
    loaded = RunResult.load(result.save(tmp_path / "results.json"))

    # Assert
    assert loaded == result
    assert loaded.headline == 0.6 and loaded.personalized_mean == 0.45
    assert loaded.config.partition.kind == "iid" and loaded.modalities_per_client[1] == ("audio",)


def test_the_file_keeps_the_flat_layout_with_its_schema_version_first(tmp_path: Path) -> None:
    # Execute
    tree = json.loads(_result().save(tmp_path / "results.json").read_text())

    # Assert: cost sits at the top level, each epoch's test metrics beside its own keys
    assert next(iter(tree)) == "schema_version" and tree["schema_version"] == SCHEMA_VERSION
    assert {"flops", "client_memory_bytes", "params"} <= set(tree) and "cost" not in tree
    assert tree["flops"]["client_share"] == 0.1 and tree["client_memory_bytes"]["total"] == 600
    assert tree["history"][1] == {"epoch": 2, "train_loss": 1.0, "train_accuracy": 0.4, "steps": 4,
                                  "bytes_up_per_client": 20.0, "bytes_down_per_client": 24.0, "seconds": 0.5,
                                  "test_accuracy": 0.6, "val": {}}  # no validation split
    assert tree["config"]["partition"]["kind"] == "iid"


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (lambda t: t.update(schema_version=SCHEMA_VERSION + 1),
         f"has schema_version {SCHEMA_VERSION + 1}; this mpsl reads schema_version {SCHEMA_VERSION}"),
        (lambda t: t.pop("schema_version"), "has no schema_version"),
        (lambda t: t.pop("final"), ": missing key final"),
        (lambda t: t["history"][1].pop("seconds"), ": history[1]: missing key seconds"),
        (lambda t: t.pop("flops"), ": missing key flops"),
        (lambda t: t["client_memory_bytes"].update(total="600"), ": client_memory_bytes.total: expected an integer"),
        (lambda t: t["final"].update(test_accuracy=[0.6]), ": final.test_accuracy: expected a number"),
        (lambda t: t["history"][0].update(test_accuracy=None), ": history[0].test_accuracy: expected a number"),
        (lambda t: t.update(extra=1), ": unknown key extra"),
        (lambda t: t["config"].update(num_clients=0), ": config: does not load as a config of this mpsl"),
    ],
    ids=["newer-version", "unversioned", "missing-final", "missing-in-history", "missing-flattened-cost",
         "mistyped-memory", "mistyped-final", "mistyped-history-metric", "unknown-key", "invalid-config"],
)
def test_a_file_of_another_version_or_shape_is_refused_naming_the_file_and_the_key(tmp_path: Path, edit,
                                                                                  expect: str) -> None:
    # Prepare
    path = _saved(tmp_path, edit)

    # Execute
    with pytest.raises(MpslError) as refused:
        RunResult.load(path)

    # Assert
    message = str(refused.value)
    assert message.startswith(str(path)) and expect in message and "\n" not in message


def test_a_file_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text("[1, 2]")

    with pytest.raises(MpslError, match="not an mpsl results file"):
        RunResult.load(path)


def test_report_of_a_run_with_a_results_file_of_another_version_is_one_line(tmp_path: Path, capsys) -> None:
    # Prepare
    from mpsl.cli import main

    path = _saved(tmp_path, lambda t: t.update(schema_version=0))

    # Execute
    code = main(["report", str(tmp_path)])

    # Assert
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"mpsl: error: {path} has schema_version 0; this mpsl reads schema_version")


def test_saved_results_of_another_version_are_retrained_not_reused(tmp_path: Path, capsys) -> None:
    # Prepare: the same settings, but written under another schema version
    from mpsl.experiment.run import reusable

    result = _result()
    _saved(tmp_path, lambda t: t.update(schema_version=SCHEMA_VERSION + 1))
    same = _saved(tmp_path / "same")

    # Execute
    stale = reusable(result.config, "mpsl", tmp_path / "mpsl")
    fresh = reusable(result.config, "mpsl", same.parent)

    # Assert
    assert stale is None and "cannot be reused" in capsys.readouterr().out
    assert fresh == result
