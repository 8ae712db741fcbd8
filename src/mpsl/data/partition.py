"""Split a training set across clients, reproducibly from a seed.

    iid        random near-equal shards, label mix as the whole set
    shards     random shards of exactly n // N samples (retrieval: equal contrastive batches)
    dirichlet  label skew: per class, client shares ~ Dir(alpha)
    quantity   quantity skew: client sizes ~ Dir(alpha), label mix as the whole set
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mpsl.config import PartitionConfig
from mpsl.errors import ConfigError
from mpsl.registry import Registry

Partitioner = Callable[[np.ndarray, int, PartitionConfig, np.random.Generator], list[np.ndarray]]
PARTITIONS: Registry[Partitioner] = Registry("partition", config_keys=("partition.kind",))


@PARTITIONS.register("iid")
def iid(labels: np.ndarray, num_clients: int, cfg: PartitionConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into near-equal shards."""
    return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), num_clients)]


@PARTITIONS.register("shards")
def shards(labels: np.ndarray, num_clients: int, cfg: PartitionConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Exactly n // N random samples per client; the n mod N left over are not used."""
    size = len(labels) // num_clients
    order = rng.permutation(len(labels))
    return [np.sort(order[k * size:(k + 1) * size]) for k in range(num_clients)]


@PARTITIONS.register("quantity")
def quantity(labels: np.ndarray, num_clients: int, cfg: PartitionConfig,
             rng: np.random.Generator, max_tries: int = 1000) -> list[np.ndarray]:
    """Client sizes from Dir(alpha) (small alpha: a few large clients), redrawn until all hold min_size."""
    n = len(labels)
    for _ in range(max_tries):
        cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, cfg.alpha)))[:-1] * n).astype(int)
        parts = np.split(rng.permutation(n), cuts)
        if min(len(p) for p in parts) >= cfg.min_size:
            return [np.sort(p) for p in parts]
    raise ConfigError(
        f"partition: no quantity-skew draw (alpha={cfg.alpha}) gave all {num_clients} clients "
        f"{cfg.min_size}+ samples in {max_tries} tries; raise partition.alpha or lower partition.min_size"
    )


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


def modality_holdings(modalities: list[str], num_clients: int, cfg: PartitionConfig, seed: int) -> list[list[str]]:
    """The modalities each client holds: all of them, except for round(missing_fraction x N) seeded
    clients that hold only one (`missing_keep`, or one drawn per client), as devices without a
    camera or microphone would."""
    if cfg.missing_keep is not None and cfg.missing_keep not in modalities:
        raise ConfigError(f"partition.missing_keep: {cfg.missing_keep!r} is not a modality of this dataset "
                          f"({', '.join(modalities)})")
    holdings = [list(modalities) for _ in range(num_clients)]
    missing = round(cfg.missing_fraction * num_clients)
    if missing == 0 or len(modalities) < 2:
        return holdings
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the sample partition does not move
    for k in np.sort(rng.permutation(num_clients)[:missing]):
        holdings[k] = [cfg.missing_keep if cfg.missing_keep is not None else str(rng.choice(modalities))]
    return holdings
