from __future__ import annotations

import numpy as np
import pytest

from mpsl.config import PartitionConfig
from mpsl.data import PARTITIONS, partition
from mpsl.errors import ConfigError

LABELS = np.random.default_rng(0).integers(0, 10, size=2000)


@pytest.mark.parametrize("kind", PARTITIONS.names())
def test_every_sample_is_assigned_at_most_once_and_all_are_used_but_shards_remainder(kind: str) -> None:
    parts = partition(LABELS, 7, PartitionConfig(kind=kind), seed=1)

    joined = np.concatenate(parts)
    assert len(parts) == 7 and len(set(joined.tolist())) == len(joined)  # disjoint
    assert min(len(p) for p in parts) >= 10
    if kind == "shards":
        assert [len(p) for p in parts] == [len(LABELS) // 7] * 7  # the 2000 mod 7 left over are unused
    else:
        assert sorted(joined.tolist()) == list(range(len(LABELS)))


@pytest.mark.parametrize("kind", PARTITIONS.names())
def test_seeded_partitions_are_reproducible(kind: str) -> None:
    a = partition(LABELS, 5, PartitionConfig(kind=kind), seed=3)
    b = partition(LABELS, 5, PartitionConfig(kind=kind), seed=3)
    c = partition(LABELS, 5, PartitionConfig(kind=kind), seed=4)

    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _label_skew(parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label histogram and the global one."""
    global_hist = np.bincount(LABELS, minlength=10) / len(LABELS)
    return float(np.mean([0.5 * np.abs(np.bincount(LABELS[p], minlength=10) / len(p) - global_hist).sum()
                          for p in parts]))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    skews = [_label_skew(partition(LABELS, 10, PartitionConfig("dirichlet", alpha=a), seed=0))
             for a in (100.0, 1.0, 0.1)]

    assert skews[0] < skews[1] < skews[2]
    assert skews[0] < 0.1 < 0.4 < skews[2]


def test_impossible_partition_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="num_clients"):
        partition(LABELS[:5], 6, PartitionConfig("iid"), seed=0)
    with pytest.raises(ConfigError, match="alpha"):
        partition(LABELS[:100], 10, PartitionConfig("dirichlet", alpha=0.01, min_size=10), seed=0)


def test_quantity_skew_varies_sizes_but_not_label_mix() -> None:
    sizes = [np.std([len(p) for p in partition(LABELS, 10, PartitionConfig("quantity", alpha=a), seed=0)])
             for a in (100.0, 1.0, 0.3)]
    parts = partition(LABELS, 10, PartitionConfig("quantity", alpha=1.0), seed=0)

    assert sizes[0] < sizes[1] < sizes[2]
    big = [p for p in parts if len(p) >= 150]
    assert big and _label_skew(big) < 0.1  # each large client still sees the global label mix
