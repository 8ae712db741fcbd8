"""Shared test helpers: a tiny random-init model on the in-memory synthetic dataset."""

from __future__ import annotations

from mpsl.config import Config, load_config

TINY = [
    "data.name=synthetic-av", "data.train_size=96", "data.test_size=48",
    "model.encoder.source=random", "model.encoder.width=32", "model.encoder.depth=2",
    "model.encoder.heads=2", "model.image.patch=[4,4]", "model.audio.patch=[4,4]", "model.audio.stride=null",
    "num_clients=3", "train.batch_size=12", "train.epochs=1", "progress=false",
]


def tiny_config(*overrides: str) -> Config:
    return load_config(None, [*TINY, *overrides])

