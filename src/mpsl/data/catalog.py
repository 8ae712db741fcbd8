"""Datasets read from files in their official layouts, decoded once, optionally cached memory-mapped.

A file dataset says only how to read its layout (which samples, which files, which labels) and how
to decode one sample; this module does the rest the same way for all of them:

    read(root)  -> Layout: class names + train / test Examples (paths, sentences, labels)
    decode(ex)  -> modality -> one sample's array (uint8 image, float fbank, int64 token ids)
    no cache    -> every sample decoded into memory, with a progress bar
    cache       -> `mpsl data cache NAME`: the same arrays written once as .npy files and memory-mapped,
                   so a run reads only the rows of its batches; used whenever it is present
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpsl.config import DataConfig
from mpsl.data.folders import build_folder
from mpsl.data.media import normalize_image
from mpsl.data.spec import Dataset, DatasetSpec, ModalitySpec, SplitData
from mpsl.errors import DataError
from mpsl.progress import progress_bar

CACHE_VERSION = 1  # bump when a decoder changes what it stores
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Example:
    sources: dict[str, Any]  # what decode reads: file paths, times, sentences
    label: int  # class index; retrieval: ignored (each sample is its own pair id)


@dataclass(frozen=True)
class Layout:
    classes: list[str]  # label names, index = label; empty for retrieval
    train: list[Example]
    test: list[Example]


@dataclass(frozen=True)
class FileDataset:
    """A dataset on disk, registered in DATASETS through `register_files`."""

    name: str
    summary: str
    task: str  # a key of mpsl.tasks.TASKS
    modalities: Callable[[DataConfig], dict[str, ModalitySpec]]  # kinds and per-sample shapes
    read: Callable[[Path, DataConfig], Layout]  # raises DataError naming a missing or malformed file
    decode: Callable[[Example, DataConfig], dict[str, np.ndarray]]  # one sample, every modality
    fusion: str = "early"  # the paper's: early for image/audio + text, late for frame + audio, dual for retrieval
    default_root: Callable[[DataConfig], Path] | None = None  # embedded sets know where their files are
    # fields of DataConfig that change what decode stores (the cache key), beyond name, root and sizes
    depends_on: tuple[str, ...] = field(default=("image_size", "audio_frames", "text", "text_tokenizer",
                                                 "text_length"))


def dataset_root(ds: FileDataset, cfg: DataConfig) -> Path:
    if cfg.root:
        root = Path(cfg.root).expanduser()
    elif ds.default_root is not None:
        root = ds.default_root(cfg)
    else:
        raise DataError(f"{ds.name}: set data.root to the folder that holds the dataset "
                        f"(see `mpsl list` and docs/datasets.md for the expected layout)")
    if not root.is_dir():
        raise DataError(f"{ds.name}: data.root {root} is not a folder")
    return root


def _limit(examples: list[Example], size: int | None, seed: int) -> list[Example]:
    """The first `size` examples of a seeded shuffle, kept in file order; all of them when size is None."""
    if size is None or size >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:size])
    return [examples[i] for i in keep]


def cache_key(ds: FileDataset, cfg: DataConfig, root: Path) -> str:
    settings = {k: getattr(cfg, k) for k in ds.depends_on}
    settings.update(name=ds.name, root=str(root.resolve()), train_size=cfg.train_size, test_size=cfg.test_size,
                    seed=cfg.seed, version=CACHE_VERSION)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def cache_dir(ds: FileDataset, cfg: DataConfig, cache_root: Path, root: Path) -> Path:
    return cache_root / ds.name / cache_key(ds, cfg, root)


def _examples(ds: FileDataset, cfg: DataConfig, root: Path) -> tuple[list[str], dict[str, list[Example]]]:
    layout = ds.read(root, cfg)
    sizes = {"train": cfg.train_size, "test": cfg.test_size}
    splits = {s: _limit(getattr(layout, s), sizes[s], cfg.seed) for s in SPLITS}
    for s, examples in splits.items():
        if not examples:
            raise DataError(f"{ds.name}: no {s} samples found under {root}")
    return layout.classes, splits


def _labels(classes: list[str], examples: list[Example]) -> np.ndarray:
    """[n] class indices; a dataset without classes (retrieval) labels each sample by its position, its pair id."""
    if not classes:
        return np.arange(len(examples), dtype=np.int64)
    return np.asarray([e.label for e in examples], dtype=np.int64)


def _check(ds: FileDataset, arrays: dict[str, np.ndarray], specs: dict[str, ModalitySpec], ex: Example) -> None:
    if set(arrays) != set(specs):
        raise DataError(f"{ds.name}: decoding {ex.sources} gave {sorted(arrays)}, expected {sorted(specs)}")
    for m, a in arrays.items():
        if tuple(a.shape) != specs[m].shape:
            raise DataError(f"{ds.name}: {m} of {ex.sources} decoded to shape {tuple(a.shape)}, "
                            f"expected {specs[m].shape}")


def _decode_all(ds: FileDataset, cfg: DataConfig, split: str, examples: list[Example],
                specs: dict[str, ModalitySpec], progress: bool) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    for i, ex in enumerate(progress_bar(examples, desc=f"{ds.name}: decoding {split}", unit="sample",
                                        enabled=progress)):
        arrays = ds.decode(ex, cfg)
        _check(ds, arrays, specs, ex)
        yield i, arrays


def _reader(kind: str, flip: torch.Generator | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Stored rows -> model inputs: images stay uint8 on disk and are normalized per batch; with `flip`
    (training images, data.hflip) each image is mirrored left-right with probability 1/2 at every read."""
    def read(x: torch.Tensor) -> torch.Tensor:
        if kind != "image":
            return x.long() if not x.is_floating_point() else x.float()
        images = normalize_image(x) if x.dtype == torch.uint8 else x.float()  # [b, 3, S, S]
        if flip is not None:
            mirror = torch.rand(len(images), generator=flip) < 0.5  # [b]
            images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
        return images

    return read


def _split_data(arrays: dict[str, np.ndarray], labels: np.ndarray, specs: dict[str, ModalitySpec],
                flip: torch.Generator | None = None) -> SplitData:
    tensors = {m: torch.from_numpy(arrays[m]) for m in specs}
    readers = {m: _reader(s.kind, flip) for m, s in specs.items()}
    return SplitData(tensors, torch.from_numpy(np.asarray(labels)), readers=readers)


def _flip(cfg: DataConfig, split: str) -> torch.Generator | None:
    """The random source of training-image flips (seeded by data.seed); None for test or without data.hflip."""
    return torch.Generator().manual_seed(cfg.seed) if cfg.hflip and split == "train" else None


def _spec(ds: FileDataset, cfg: DataConfig, classes: list[str]) -> DatasetSpec:
    return DatasetSpec(ds.name, ds.modalities(cfg), num_classes=len(classes), task=ds.task, fusion=ds.fusion)


def decode_in_memory(ds: FileDataset, cfg: DataConfig, progress: bool = True) -> Dataset:
    classes, splits = _examples(ds, cfg, dataset_root(ds, cfg))
    spec = _spec(ds, cfg, classes)
    data = {}
    for split, examples in splits.items():
        rows: dict[str, list[np.ndarray]] = {m: [] for m in spec.modalities}
        for _, arrays in _decode_all(ds, cfg, split, examples, spec.modalities, progress):
            for m, a in arrays.items():
                rows[m].append(a)
        data[split] = _split_data({m: np.stack(r) for m, r in rows.items()}, _labels(classes, examples),
                                  spec.modalities, _flip(cfg, split))
    return Dataset(spec, data["train"], data["test"], classes)


def build_cache(ds: FileDataset, cfg: DataConfig, cache_root: Path, progress: bool = True) -> Path:
    """Decode every sample once into memory-mappable .npy files; a finished cache is kept as it is."""
    root = dataset_root(ds, cfg)
    target = cache_dir(ds, cfg, cache_root, root)
    if _is_complete(target):
        return target
    classes, splits = _examples(ds, cfg, root)
    spec = _spec(ds, cfg, classes)

    def fill(tmp: Path) -> None:
        sizes = {}
        for split, examples in splits.items():
            files: dict[str, np.memmap] = {}
            for i, arrays in _decode_all(ds, cfg, split, examples, spec.modalities, progress):
                for m, a in arrays.items():
                    if m not in files:  # [n, *shape], written row by row: never the whole split in memory
                        files[m] = np.lib.format.open_memmap(tmp / f"{split}_{m}.npy", mode="w+",
                                                             dtype=a.dtype, shape=(len(examples), *a.shape))
                    files[m][i] = a
            for f in files.values():
                f.flush()
            np.save(tmp / f"{split}_labels.npy", _labels(classes, examples))
            sizes[split] = len(examples)
        meta = {"name": ds.name, "classes": classes, "sizes": sizes, "task": ds.task,
                "modalities": {m: asdict(s) for m, s in spec.modalities.items()},
                "root": str(root), "version": CACHE_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: it marks a finished cache

    return build_folder(target, fill, _is_complete)


def _is_complete(folder: Path) -> bool:
    return (folder / "meta.json").is_file()


def load_cache(ds: FileDataset, cfg: DataConfig, path: Path) -> Dataset:
    try:
        meta = json.loads((path / "meta.json").read_text())
        modalities = {m: ModalitySpec(s["kind"], tuple(s["shape"])) for m, s in meta["modalities"].items()}
        spec = DatasetSpec(ds.name, modalities, num_classes=len(meta["classes"]), task=meta["task"], fusion=ds.fusion)
        data = {}
        for split in SPLITS:
            arrays = {m: np.load(path / f"{split}_{m}.npy", mmap_mode="c") for m in spec.modalities}
            data[split] = _split_data(arrays, np.load(path / f"{split}_labels.npy"), spec.modalities,
                                      _flip(cfg, split))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"{ds.name}: the cache in {path} is damaged ({exc}); delete it and run "
                        f"`mpsl data cache {ds.name}` again") from None
    return Dataset(spec, data["train"], data["test"], list(meta["classes"]))


def load_files(ds: FileDataset, cfg: DataConfig, cache_root: Path, progress: bool = True) -> Dataset:
    """From the cache when it exists for these settings; otherwise decoded into memory (and a hint)."""
    root = dataset_root(ds, cfg)
    path = cache_dir(ds, cfg, cache_root, root)
    if _is_complete(path):
        return load_cache(ds, cfg, path)
    if progress:
        print(f"{ds.name}: decoding from {root} (run `mpsl data cache {ds.name}` once "
              "to keep the decoded samples memory-mapped for later runs)", flush=True)
    return decode_in_memory(ds, cfg, progress)
