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
