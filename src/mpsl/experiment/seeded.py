"""The comparison over several seeds: each method's mean ± std, every seed's value, and the spread per epoch.

`mpsl compare --seeds N` trains the whole comparison once per seed (seed, seed + 1, ...) in
runs/<name>/seed-<s>/, each a complete run folder with its own reports; this module writes the summary
beside them: compare.md, compare.csv and accuracy.png with a band from the lowest to the highest seed.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mpsl.experiment.report import (
    COLORS,
    NETWORK,
    pct,
    pyplot,
    rows_csv,
    save_figure,
    score_label,
    simulated_seconds,
)
from mpsl.experiment.results import RunResult

BySeed = Mapping[int, Sequence[RunResult]]  # seed -> that seed's results, one per method in the same order


def _methods(by_seed: BySeed) -> list[str]:
    return [r.method for r in next(iter(by_seed.values()))]


def _of(by_seed: BySeed, method: str) -> list[RunResult]:
    """The method's result of every seed, in seed order."""
    return [next(r for r in results if r.method == method) for _, results in sorted(by_seed.items())]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_rows(by_seed: BySeed) -> list[dict[str, Any]]:
    """One record per method: the headline over seeds, each seed's value, bytes and simulated time."""
    rows = []
    for method in _methods(by_seed):
        runs = _of(by_seed, method)
        scores = [r.headline for r in runs]
        mean, std = mean_std(scores)
        rows.append({"method": method, "seeds": len(runs), "metric": runs[0].metric, "mean": mean, "std": std,
                     **{f"seed_{r.seed}": r.headline for r in runs},
                     "mb_per_client": statistics.fmean((r.comm.bytes_up_per_client + r.comm.bytes_down_per_client)
                                                       / 1e6 for r in runs),
                     f"simulated_seconds_{NETWORK}": statistics.fmean(simulated_seconds(r)[-1] for r in runs)})
    return rows


def seeded_markdown(title: str, by_seed: BySeed) -> str:
    rows = seed_rows(by_seed)
    label = score_label(rows[0]["metric"])
    seeds = sorted(by_seed)
    lines = [f"| method | {label} % (mean ± std) | " + " | ".join(f"seed {s}" for s in seeds)
             + f" | MB/client | simulated min ({NETWORK}) |",
             "|---|---|" + "---|" * len(seeds) + "---|---|"]
    for row in rows:
        per_seed = " | ".join(pct(row[f"seed_{s}"]) for s in seeds)
        lines.append(f"| {row['method']} | {100 * row['mean']:.1f} ± {100 * row['std']:.1f} | {per_seed} | "
                     f"{row['mb_per_client']:.1f} | {row[f'simulated_seconds_{NETWORK}'] / 60:.3g} |")
    note = (f"{len(seeds)} seeds ({', '.join(map(str, seeds))}): the whole comparison trained once per seed "
            "(model initialization, partition, shuffling); std is the sample standard deviation. Each seed's "
            "own report is in seed-<s>/.")
    return f"# {title}\n\n" + "\n".join(lines) + f"\n\n- {note}\n\n![accuracy](accuracy.png)\n"


def seeded_csv(by_seed: BySeed) -> str:
    return rows_csv(seed_rows(by_seed))


def spread_plot(by_seed: BySeed, path: Path, title: str) -> Path:
    """Per method: the mean headline after each epoch (FL: round), and a band from the lowest to the highest seed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method in _methods(by_seed):
        runs = _of(by_seed, method)
        epochs = [h.epoch for h in runs[0].history]
        per_epoch = [[100 * r.history[i].test[r.metric] for r in runs] for i in range(len(epochs))]  # [E][seeds]
        color = COLORS.get(method)
        ax.plot(epochs, [statistics.fmean(v) for v in per_epoch], marker="o", label=f"{method} ({len(runs)} seeds)",
                color=color)
        ax.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch], alpha=0.2, color=color)
    ax.set_xlabel("epoch (FL: round)")
    ax.set_ylabel(f"test {score_label(next(iter(by_seed.values()))[0].metric)} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def write_seeded_reports(run_dir: Path, by_seed: BySeed) -> list[Path]:
    """compare.md, compare.csv and accuracy.png over the seeds, in run_dir; the table is printed too."""
    first = next(iter(by_seed.values()))[0]
    title = f"{run_dir.name}: {first.dataset}, {first.config.num_clients} clients, {len(by_seed)} seeds"
    markdown = seeded_markdown(title, by_seed)
    (run_dir / "compare.md").write_text(markdown)
    (run_dir / "compare.csv").write_text(seeded_csv(by_seed))
    written = [run_dir / "compare.md", run_dir / "compare.csv",
               spread_plot(by_seed, run_dir / "accuracy.png", title)]
    print(f"\n{markdown}\nwrote {', '.join(p.name for p in written)} in {run_dir}")
    return written
