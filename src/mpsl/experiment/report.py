"""Human-facing output of a run: the results table (printed and saved) and the accuracy plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _mb(value: float) -> str:
    return f"{value / 1e6:.1f}"


def results_table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table, one row per method; single-modality columns appear when the task has them."""
    ablation_keys = sorted({k for r in results for k in r["final"] if k.endswith("_only")})
    header = ["method", "clients", "test acc %", *[k.removeprefix("test_accuracy_").replace("_", "-") + " %"
                                                   for k in ablation_keys],
              "personalized %", "client MFLOP/sample", "server MFLOP/sample", "MB up/client", "MB down/client",
              "wall s"]
    rows = []
    for r in results:
        f = r["final"]
        rows.append([
            r["method"], str(r["num_clients"]), _pct(f["test_accuracy"]), *[_pct(f.get(k)) for k in ablation_keys],
            _pct(f.get("test_accuracy_personalized_mean")),
            f"{r['flops']['client_per_sample'] / 1e6:.1f}", f"{r['flops']['server_per_sample'] / 1e6:.1f}",
            _mb(r["comm"]["bytes_up_per_client"]), _mb(r["comm"]["bytes_down_per_client"]),
            f"{r['wall_seconds']:.0f}",
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(row) for row in rows)]) + "\n"


def accuracy_plot(results: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Test accuracy per epoch, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in results:
        epochs = [h["epoch"] for h in r["history"]]
        acc = [100 * h["test_accuracy"] for h in r["history"]]
        n = r["num_clients"]
        label = f"{r['method']} ({n} clients)" if n > 1 else f"{r['method']} (pooled data)"
        ax.plot(epochs, acc, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.set_xticks(sorted({h["epoch"] for r in results for h in r["history"]}))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
