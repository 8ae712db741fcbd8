"""Tests for building, caching and loading the avdigits dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mpsl.data.avdigits import AUDIO_SHAPE, IMAGE_SHAPE, KEYS, load, prepare

TRAIN, TEST = 200, 100


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare(
        tmp_path_factory.mktemp("cache_a"), seed=3, train_size=TRAIN, test_size=TEST, progress=False
    )


def test_prepare_writes_expected_arrays(prepared: Path) -> None:
    # Execute
    data = load(prepared)

    # Assert
    assert prepared.name == f"v1-seed3-n{TRAIN}-{TEST}"
    assert set(data) == set(KEYS)
    for split, n in (("train", TRAIN), ("test", TEST)):
        assert data[f"{split}_image"].shape == (n, *IMAGE_SHAPE)
        assert data[f"{split}_audio"].shape == (n, *AUDIO_SHAPE)
        assert data[f"{split}_image"].dtype == np.float16
        assert data[f"{split}_audio"].dtype == np.float16
        assert data[f"{split}_label"].dtype == np.int64
        assert np.all(np.isfinite(data[f"{split}_image"]))
        assert np.all(np.isfinite(data[f"{split}_audio"]))
        counts = np.bincount(data[f"{split}_label"], minlength=10)
        assert counts.size == 10 and counts.min() == n // 10  # balanced classes, labels 0..9


def test_inputs_are_standardised_so_zero_means_blank(prepared: Path) -> None:
    # Execute
    data = load(prepared)

    # Assert
    for key in ("train_image", "train_audio"):
        values = data[key].astype(np.float32)
        assert abs(float(values.mean())) < 1e-2
        assert float(values.std()) == pytest.approx(1.0, abs=0.05)


def test_meta_records_disjoint_voices(prepared: Path) -> None:
    # Execute
    meta = json.loads((prepared / "meta.json").read_text())

    # Assert
    train_voices, test_voices = set(meta["train_voices"]), set(meta["test_voices"])
    assert train_voices and test_voices
    assert not train_voices & test_voices
    assert meta["seed"] == 3 and meta["train_size"] == TRAIN and meta["test_size"] == TEST
    assert sum(meta["test_class_counts"]) == TEST


def test_same_seed_gives_identical_bytes(prepared: Path, tmp_path: Path) -> None:
    # Execute
    again = prepare(tmp_path, seed=3, train_size=TRAIN, test_size=TEST, progress=False)

    # Assert
    assert again != prepared
    assert (again / "data.npz").read_bytes() == (prepared / "data.npz").read_bytes()


def test_cache_is_reused_and_force_rebuilds(tmp_path: Path) -> None:
    # Prepare
    first = prepare(tmp_path, seed=5, train_size=TRAIN, test_size=TEST, progress=False)
    stamp = (first / "data.npz").stat().st_mtime_ns

    # Execute
    second = prepare(tmp_path, seed=5, train_size=TRAIN, test_size=TEST, progress=False)
    reused_stamp = (second / "data.npz").stat().st_mtime_ns
    forced = prepare(tmp_path, seed=5, train_size=TRAIN, test_size=TEST, force=True, progress=False)

    # Assert
    assert second == first and reused_stamp == stamp
    assert forced == first and (forced / "data.npz").stat().st_mtime_ns != stamp
    leftovers = [p.name for p in first.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temp folders left behind


def test_load_reports_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.npz"):
        load(tmp_path)


def test_load_reports_truncated_archive(prepared: Path, tmp_path: Path) -> None:
    # Prepare
    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken)
    file = broken / "data.npz"
    file.write_bytes(file.read_bytes()[:5000])

    # Execute / Assert
    with pytest.raises(ValueError, match="corrupted avdigits file .*data.npz"):
        load(broken)


def test_load_reports_wrong_shape_and_missing_key(prepared: Path, tmp_path: Path) -> None:
    # Prepare
    data = load(prepared)
    wrong_shape = dict(data, train_audio=data["train_audio"][:, :, :16])
    np.savez(tmp_path / "shape.npz", **wrong_shape)
    missing = {k: v for k, v in data.items() if k != "test_label"}
    np.savez(tmp_path / "missing.npz", **missing)

    # Execute / Assert
    with pytest.raises(ValueError, match="shape.npz.*train_audio"):
        load(tmp_path / "shape.npz")
    with pytest.raises(ValueError, match="missing.npz.*test_label"):
        load(tmp_path / "missing.npz")
