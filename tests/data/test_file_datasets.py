"""Every file dataset loads a fixture written in its official layout, through memory and cache alike.

Parametrized over the registry: registering a dataset without a fixture writer fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mpsl.config import DataConfig
from mpsl.data import load_dataset, prepare_dataset
from mpsl.data.sources import FILE_DATASETS
from mpsl.errors import DataError
from mpsl.experiment.methods.split_learning import Mpsl
from tests.data.fixtures import FIXTURES
from tests.helpers import tiny_config

NAMES = sorted(FILE_DATASETS)
SMALL = {"image_size": 32, "audio_frames": 48, "text_length": 8}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    """name -> (root, Fixture): each fixture written once for this module."""
    out = {}
    for name in NAMES:
        root = tmp_path_factory.mktemp(name)
        out[name] = (root, FIXTURES[name](root))
    return out


def _cfg(name: str, root: Path, cache: Path, settings: dict | None = None) -> DataConfig:
    return DataConfig(name=name, root=str(root), cache_dir=str(cache), **{**SMALL, **(settings or {})})


def test_every_file_dataset_has_a_fixture() -> None:
    assert set(FIXTURES) == set(FILE_DATASETS)


@pytest.mark.parametrize("name", NAMES)
def test_fixture_loads_with_spec_shapes_and_labels(name: str, written, tmp_path: Path) -> None:
    # Prepare
    root, fx = written[name]
    # Execute
    data = load_dataset(_cfg(name, root, tmp_path, fx.settings))
    # Assert
    assert (len(data.train), len(data.test)) == (fx.train, fx.test)
    assert data.spec.num_classes == fx.num_classes
    for split in (data.train, data.test):
        batch = split.subset(torch.arange(min(4, len(split))))
        assert set(batch.inputs) == set(data.spec.modalities)
        for m, x in batch.inputs.items():
            assert tuple(x.shape[1:]) == data.spec.modalities[m].shape, m
            assert torch.isfinite(x.float()).all(), m
        if data.spec.task == "classification":
            assert int(split.labels.min()) >= 0 and int(split.labels.max()) < fx.num_classes
        else:  # retrieval: every sample is its own pair
            assert split.labels.tolist() == list(range(len(split)))


@pytest.mark.parametrize("name", NAMES)
def test_cache_is_memory_mapped_and_equal_to_decoding(name: str, written, tmp_path: Path) -> None:
    # Prepare
    root, fx = written[name]
    cfg = _cfg(name, root, tmp_path, fx.settings)
    decoded = load_dataset(cfg)
    # Execute
    path = prepare_dataset(cfg, progress=False)
    cached = load_dataset(cfg)
    # Assert
    assert (path / "meta.json").is_file()
    assert any(isinstance(np.load(f, mmap_mode="r"), np.memmap) for f in path.glob("train_*.npy"))
    for a, b in ((decoded.train, cached.train), (decoded.test, cached.test)):
        torch.testing.assert_close(a.labels, b.labels)
        for m in decoded.spec.modalities:
            torch.testing.assert_close(a.inputs[m], b.inputs[m], msg=m)


@pytest.mark.parametrize("name", NAMES)
def test_a_few_mpsl_steps_train_on_the_fixture(name: str, written, tmp_path: Path) -> None:
    # Prepare
    root, fx = written[name]
    settings = [f"data.{k}={v}" for k, v in {**SMALL, **fx.settings}.items()]
    cfg = tiny_config(f"data.name={name}", f"data.root={root}", f"data.cache_dir={tmp_path}", *settings,
                      "model.image.patch=[16,16]", "model.audio.patch=[16,16]", "model.audio.stride=[10,10]",
                      "num_clients=2", "train.batch_size=4", "partition.kind=iid", "partition.min_size=1")
    method = Mpsl(cfg, load_dataset(cfg.data))
    # Execute
    stats = method.train_round(0, progress=False)
    # Assert
    assert stats.steps >= 2
    assert stats.count == fx.train
    assert np.isfinite(stats.loss)


@pytest.mark.parametrize("name", NAMES)
def test_a_corrupted_file_is_named(name: str, tmp_path: Path) -> None:
    # Prepare
    root = tmp_path / "root"
    fx = FIXTURES[name](root)
    fx.corrupt.write_bytes(b"\x00not a media file\xff" * 8)
    # Execute
    with pytest.raises(DataError) as err:
        load_dataset(_cfg(name, root, tmp_path / "cache", fx.settings))
    # Assert
    assert str(fx.corrupt) in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_root_is_named(name: str, tmp_path: Path) -> None:
    # Execute
    with pytest.raises(DataError) as err:
        load_dataset(_cfg(name, tmp_path / "nowhere", tmp_path))
    # Assert
    assert "nowhere" in str(err.value)


def test_mpsl_data_cache_builds_once_and_later_runs_never_read_the_files(tmp_path: Path) -> None:
    # Prepare
    import subprocess
    import sys

    root = tmp_path / "t4sa"
    fx = FIXTURES["t4sa"](root)
    args = ["t4sa", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
            *[f"data.{k}={v}" for k, v in SMALL.items()]]
    # Execute
    proc = subprocess.run([sys.executable, "-m", "mpsl", "data", "cache", *args], capture_output=True, text=True)
    fx.corrupt.write_bytes(b"garbage")  # a cached run must not decode the files again
    cached = load_dataset(_cfg("t4sa", root, tmp_path / "cache"))
    # Assert
    assert proc.returncode == 0, proc.stderr
    assert "t4sa ready in" in proc.stdout
    assert f"t4sa: decoding train: {fx.train} samples in" in proc.stderr  # not a terminal: one plain line per stage
    assert "\r" not in proc.stderr
    assert (len(cached.train), len(cached.test)) == (fx.train, fx.test)
    with pytest.raises(DataError, match="t4sa"):  # other settings -> another cache -> the files again
        load_dataset(_cfg("t4sa", root, tmp_path / "cache", {"image_size": 24}))


def test_hflip_mirrors_training_images_only_and_shares_the_cache(written, tmp_path: Path) -> None:
    # Prepare
    root, _ = written["t4sa"]
    plain = load_dataset(_cfg("t4sa", root, tmp_path))
    prepare_dataset(_cfg("t4sa", root, tmp_path), progress=False)
    flipping = load_dataset(_cfg("t4sa", root, tmp_path, {"hflip": True}))  # the same cache: flips happen on read
    rows = torch.arange(len(plain.train))
    # Execute
    reads = [flipping.train.subset(rows).inputs["image"] for _ in range(4)]
    # Assert: every read image is the original or its mirror, both occur, and test images are never flipped
    original = plain.train.subset(rows).inputs["image"]
    mirrored = []
    for r in reads:
        for i in rows:
            mirrored.append(torch.equal(r[i], original[i].flip(-1)))
            assert mirrored[-1] or torch.equal(r[i], original[i])
    assert any(mirrored) and not all(mirrored)
    torch.testing.assert_close(flipping.test.inputs["image"], plain.test.inputs["image"])
