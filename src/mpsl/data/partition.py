"""Split a training set across clients: IID or Dirichlet label skew, reproducible from a seed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mpsl.config import PartitionConfig
from mpsl.errors import ConfigError
from mpsl.registry import Registry

Partitioner = Callable[[np.ndarray, int, PartitionConfig, np.random.Generator], list[np.ndarray]]
PARTITIONS: Registry[Partitioner] = Registry("partition")


@PARTITIONS.register("iid")
def iid(labels: np.ndarray, num_clients: int, cfg: PartitionConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into near-equal shards."""
    return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), num_clients)]


@PARTITIONS.register("dirichlet")
def dirichlet(labels: np.ndarray, num_clients: int, cfg: PartitionConfig,
              rng: np.random.Generator, max_tries: int = 1000) -> list[np.ndarray]:
    """Per class, client shares drawn from Dir(alpha); redrawn until every client has min_size samples.

    The common non-IID benchmark recipe (the paper uses alpha = 0.5, minimum size 10).
    """
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, cfg.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for k, chunk in enumerate(np.split(members, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= cfg.min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"partition: no Dirichlet(alpha={cfg.alpha}) draw gave all {num_clients} clients "
        f"{cfg.min_size}+ samples in {max_tries} tries; raise partition.alpha or data.train_size, "
        "or lower num_clients or partition.min_size"
    )


def partition(labels: np.ndarray, num_clients: int, cfg: PartitionConfig, seed: int) -> list[np.ndarray]:
    if num_clients > len(labels):
        raise ConfigError(f"num_clients: {num_clients} clients but only {len(labels)} training samples")
    return PARTITIONS.get(cfg.kind)(labels, num_clients, cfg, np.random.default_rng(seed))
