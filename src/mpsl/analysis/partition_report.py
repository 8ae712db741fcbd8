"""`mpsl data partition-report`: how a config spreads the training set over clients, before training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mpsl.config import Config
from mpsl.data import load_dataset, partition
from mpsl.data.partition import modality_holdings
from mpsl.registry import check_choices

FULL_HISTOGRAM_UP_TO = 20  # classes; beyond that a row says how many classes a client has and its largest share


def client_histograms(cfg: Config) -> tuple[np.ndarray, list[list[str]], list[int]]:
    """[clients, classes] label counts of the configured partition (retrieval, without labels: no
    columns), the modalities each client holds, and each client's size."""
    check_choices(cfg)
    dataset = load_dataset(cfg.data, cfg.progress)
    labels = dataset.train.labels.numpy()
    parts = partition(labels, cfg.num_clients, cfg.partition, cfg.seed)
    holdings = modality_holdings(list(dataset.spec.modalities), cfg.num_clients, cfg.partition, cfg.seed)
    classes = dataset.spec.num_classes
    counts = np.zeros((len(parts), 0), dtype=np.int64) if classes == 0 else \
        np.stack([np.bincount(labels[p], minlength=classes) for p in parts])  # [clients, classes]
    return counts, holdings, [len(p) for p in parts]


def report_text(counts: np.ndarray, cfg: Config, holdings: list[list[str]] | None = None,
                sizes: list[int] | None = None) -> str:
    sizes = counts.sum(axis=1) if sizes is None else np.asarray(sizes)
    lines = [f"{cfg.data.name}: {int(sizes.sum())} training samples over {len(sizes)} clients, "
             f"partition {cfg.partition.kind}" + (f" (alpha {cfg.partition.alpha:g})"
                                                  if cfg.partition.kind in ("dirichlet", "quantity") else ""),
             f"sizes: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}"]
    if counts.shape[1] <= FULL_HISTOGRAM_UP_TO:
        lines.append("client  samples  " + " ".join(f"{c:>5}" for c in range(counts.shape[1])))
        lines += [f"{k:>6}  {sizes[k]:>7}  " + " ".join(f"{v:>5}" for v in row) for k, row in enumerate(counts)]
    else:
        lines.append("client  samples  classes  largest class share")
        lines += [f"{k:>6}  {sizes[k]:>7}  {np.count_nonzero(row):>7}  {row.max() / max(sizes[k], 1):>18.1%}"
                  for k, row in enumerate(counts)]
    most = max(map(len, holdings or [[]]))
    partial = {k: held for k, held in enumerate(holdings or []) if len(held) < most}
    if partial:
        lines.append(f"{len(partial)} of {len(sizes)} clients hold one modality: "
                     + ", ".join(f"client {k} {'+'.join(held)}" for k, held in partial.items()))
    return "\n".join(lines)


def heatmap(counts: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.35 * counts.shape[1]), min(10, 1.5 + 0.3 * counts.shape[0])),
                           dpi=120)
    image = ax.imshow(counts, aspect="auto", cmap="viridis")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="samples")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
