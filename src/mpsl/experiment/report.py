"""The comparison people look at: compare.md, compare.csv and three plots, from saved results only.

`mpsl report RUN_DIR` calls the same function on the saved files, so it reproduces them exactly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpsl.analysis.wallclock import PROFILES, Workload, round_seconds
from mpsl.config import client_batch_sizes
from mpsl.experiment.methods import METHODS
from mpsl.experiment.results import RunResult

Results = Sequence[RunResult]
COLORS = {"mpsl": "#1f77b4", "fedavg": "#d62728", "fedavg-adapter": "#ff7f0e", "splitfed": "#9467bd",
          "centralized": "#2ca02c"}


NETWORK = "mix"  # the profile compare.md's simulated-time column and plot use (mpsl.analysis.wallclock.PROFILES)
SERVER_TFLOPS = 100.0  # the server's sustained training speed assumed there (a data-centre GPU)


def workload(r: RunResult) -> Workload:
    """One round of `r` as the time model sees it: each client's share of the measured bytes and FLOPs.

    Split methods move bytes in proportion to the samples a client trains on; FL clients each move the
    model (with `fl.clients_per_round`, every client is counted as a participant: an upper bound)."""
    samples = list(r.samples_per_client)
    n = len(samples)
    per_round = [r.comm.bytes_up_per_client_per_round, r.comm.bytes_down_per_client_per_round]
    schedule = METHODS.get(r.method).schedule
    if schedule == "rounds":
        participants = r.config.fl.clients_per_round or n
        up, down = ([b * n / participants] * n for b in per_round)
    else:
        mean = sum(samples) / n
        up, down = ([b * s / mean for s in samples] for b in per_round)
    flops = r.cost.flops
    server = flops.model_per_sample if schedule == "central" else flops.server_per_sample
    return Workload(samples, client_batch_sizes(r.config, samples), up, down,
                    [r.comm.messages_per_client / r.epochs] * n, flops.client_per_sample, server,
                    r.config.fl.local_epochs if schedule == "rounds" else 1)


def simulated_seconds(r: RunResult, network: str = NETWORK, server_tflops: float = SERVER_TFLOPS) -> list[float]:
    """Simulated seconds from the start of training to the end of each round (epoch), on `network`."""
    per_round = round_seconds(METHODS.get(r.method).schedule, workload(r), network, server_tflops)
    return [per_round * (e + 1) for e in range(len(r.history))]


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _ablation_keys(results: Results) -> list[str]:
    return sorted({k for r in results for k in r.final if k.endswith("_only")})


def _score_keys(results: Results) -> list[str]:
    """The task's test metrics, in the order the task reports them (accuracy; or Recall@K both ways + mean)."""
    final = results[0].final
    return [k for k in final if k.startswith("test_") and not k.endswith("_only") and "personalized" not in k]


def score_label(key: str) -> str:
    """test_accuracy -> 'test acc', test_i2t_r5 -> 'i2t R@5', test_recall_mean -> 'mean R@K'."""
    name = key.removeprefix("test_")
    if name == "accuracy":
        return "test acc"
    if name == "recall_mean":
        return "mean R@K"
    direction, _, k = name.partition("_r")
    return f"{direction} R@{k}"


def _rows(results: Results) -> list[dict[str, Any]]:
    """One flat record per method: the numbers behind both the Markdown table and the CSV."""
    rows = []
    for r in results:
        row: dict[str, Any] = {"method": r.method, "clients": r.num_clients}
        row.update({k: r.final.get(k) for k in _score_keys(results)})
        row.update({k.removeprefix("test_"): r.final.get(k) for k in _ablation_keys(results)})
        row.update({
            f"personalized_{r.metric.removeprefix('test_')}": r.personalized_mean,
            "client_gflop_per_sample": r.cost.flops.client_per_sample / 1e9,
            "server_gflop_per_sample": r.cost.flops.server_per_sample / 1e9,
            "client_trainable_params": r.cost.params.client_trainable,
            "client_memory_mb": r.cost.client_memory_bytes.total / 1e6,
            "mb_up_per_client": r.comm.bytes_up_per_client / 1e6,
            "mb_down_per_client": r.comm.bytes_down_per_client / 1e6,
            "wall_seconds": r.wall_seconds,
            f"simulated_seconds_{NETWORK}": simulated_seconds(r)[-1],
        })
        rows.append(row)
    return rows


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def compare_table(results: Results) -> str:
    """Markdown table, one row per method; single-modality columns appear when the task has them."""
    ablations = [k.removeprefix("test_") for k in _ablation_keys(results)]
    scores = _score_keys(results)
    header = ["method", "clients", *[score_label(k) + " %" for k in scores],
              *[a.removeprefix("accuracy_").replace("_", "-") + " %" for a in ablations],
              "client GFLOP/sample", "client trainable", "client memory MB", "MB up/client", "MB down/client",
              "wall s", f"simulated min ({NETWORK})"]
    body = [[row["method"], str(row["clients"]), *[pct(row[k]) for k in scores], *[pct(row[a]) for a in ablations],
             f"{row['client_gflop_per_sample']:.3g}", _count(row["client_trainable_params"]),
             f"{row['client_memory_mb']:.3g}", f"{row['mb_up_per_client']:.1f}", f"{row['mb_down_per_client']:.1f}",
             f"{row['wall_seconds']:.0f}", f"{row[f'simulated_seconds_{NETWORK}'] / 60:.3g}"] for row in _rows(results)]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(b) for b in body)]) + "\n"


def compare_markdown(title: str, results: Results) -> str:
    first = results[0]
    cfg = first.config
    notes = [f"Dataset `{first.dataset}`, {cfg.num_clients} clients ({cfg.partition.kind} partition), "
             f"{cfg.train.epochs} epochs or FL rounds, global batch {cfg.train.batch_size}, seed {first.seed}."]
    all_modalities = max((len(m) for r in results for m in r.modalities_per_client), default=0)
    for r in results:
        partial = sum(len(m) < all_modalities for m in r.modalities_per_client)
        if partial:
            notes.append(f"{r.method}: {partial} of {r.num_clients} clients hold only some modalities "
                         f"(partition.missing_fraction).")
    for r in results:
        if r.tuning is not None:
            t = r.tuning
            kept = ", ".join(f"{k}={v:g}" for k, v in t.trials[t.chosen].overrides.items())
            notes.append(f"{r.method}: tuned over {len(t.trials)} settings (same budget) by final {t.metric}; "
                         f"kept {kept} ({pct(t.trials[t.chosen].val)} %).")
    for r in results:
        chosen = r.config.tune.chosen.get(r.method)
        if r.tuning is None and chosen:
            kept = ", ".join(f"{k}={v:g}" for k, v in chosen.items())
            notes.append(f"{r.method}: trained at the setting a recorded tuning kept (tune.chosen): {kept}.")
    for r in results:
        if r.personalized_mean is not None:
            notes.append(f"{r.method}: the clients' own, never-averaged models reach "
                         f"{pct(r.personalized_mean)} % {score_label(r.metric)} on average.")
    notes.append("Client GFLOP/sample: forward + backward of what runs on a client, per training sample "
                 "(FlopCounterMode). Client memory: parameters + Adam state + saved activations of one "
                 "client mini-batch. MB up/down: bytes per client over the whole run, as encoded on the wire.")
    links = ", ".join(f"{link.uplink_mbps:g}/{link.downlink_mbps:g} Mbit/s up/down, {link.latency_ms:g} ms, "
                      f"{link.device_tflops:g} TFLOP/s" for link in PROFILES.get(NETWORK))
    notes.append(f"Simulated min: the run's measured bytes and FLOPs timed on assumed links, clients taking in turn "
                 f"{links}; server {SERVER_TFLOPS:g} TFLOP/s. MPSL waits for the slowest client every step, FedAvg "
                 f"for the slowest local round (mpsl.analysis.wallclock).")
    plots = "\n".join(f"![{name}]({name}.png)" for name in ("accuracy", "time_to_accuracy", "client_compute",
                                                            "communication"))
    return f"# {title}\n\n{compare_table(results)}\n" + "\n".join(f"- {n}" for n in notes) + f"\n\n{plots}\n"


def compare_csv(results: Results) -> str:
    return rows_csv(_rows(results))


def rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Flat records as CSV, one column per key of the first."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: float | None = None) -> Path:
    """Lay out, write and close a report figure (closed so a long comparison does not keep them all)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def _label(r: RunResult) -> str:
    return f"{r.method} ({r.num_clients} clients)" if r.num_clients > 1 else f"{r.method} (pooled data)"


def accuracy_plot(results: Results, path: Path, title: str) -> Path:
    """The headline test score (accuracy, or mean Recall@K) after every epoch (FL: round), one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in results:
        epochs = [h.epoch for h in r.history]
        acc = [100 * h.test[r.metric] for h in r.history]
        ax.plot(epochs, acc, marker="o", label=_label(r), color=COLORS.get(r.method))
    ax.set_xlabel("epoch (FL: round)")
    ax.set_ylabel("test accuracy (%)" if results[0].metric == "test_accuracy"
                  else f"test {score_label(results[0].metric)} (%)")
    ax.set_title(title)
    ax.set_xticks(sorted({h.epoch for r in results for h in r.history}))
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def time_to_accuracy_plot(results: Results, path: Path, title: str) -> Path:
    """The headline metric after each round against simulated time on the default network."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        minutes = [t / 60 for t in simulated_seconds(r)]
        ax.plot(minutes, [100 * h.test[r.metric] for h in r.history], marker="o", label=_label(r),
                color=COLORS.get(r.method))
    ax.set_xlabel(f"simulated minutes ({NETWORK} network, server {SERVER_TFLOPS:g} TFLOP/s)")
    ax.set_ylabel(f"{score_label(results[0].metric)} %")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=120)


def compute_plot(results: Results, path: Path, title: str) -> Path:
    """Client FLOPs per training sample, log scale, with how many times less than the whole model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.6 * len(results) + 1.6), dpi=120)
    names = [r.method for r in results]
    flops = [r.cost.flops.client_per_sample / 1e6 for r in results]
    ax.barh(names, flops, color=[COLORS.get(n, "gray") for n in names])
    ax.set_xscale("log")
    ax.invert_yaxis()
    for y, r in enumerate(results):
        whole = r.cost.flops.model_per_sample / 1e6
        share = r.cost.flops.client_per_sample / r.cost.flops.model_per_sample
        note = "whole model" if share > 0.999 else f"1/{1 / share:.0f} of the model"
        value = f"{flops[y]:,.0f}" if flops[y] >= 100 else f"{flops[y]:.3g}"
        ax.text(flops[y], y, f"  {value} MFLOP ({note})", va="center", fontsize=8)
        ax.set_xlim(right=max(ax.get_xlim()[1], whole * 30))
    ax.set_xlabel("client MFLOP per training sample (forward + backward, log scale)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3, which="both")
    return save_figure(fig, path)


def communication_plot(results: Results, scaling: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Per-client traffic vs encoder size: MPSL per epoch and FedAvg per round, over the backbone presets
    (computed from shapes) with this run's measured values on top."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    table = sorted(scaling, key=lambda s: s["encoder_parameters"])
    if table:
        x = [s["encoder_parameters"] / 1e6 for s in table]
        ax.plot(x, [s["mpsl_bytes_per_client_epoch"] / 1e6 for s in table], marker="o", color=COLORS["mpsl"],
                label="MPSL, per epoch (computed; half of the blocks train)")
        ax.plot(x, [s["fedavg_bytes_per_client_round"] / 1e6 for s in table], marker="s", color=COLORS["fedavg"],
                label="FedAvg, per round (computed; half of the blocks train)")
        for xi, s in zip(x, table, strict=True):
            ax.annotate(s["preset"], (xi, s["fedavg_bytes_per_client_round"] / 1e6), textcoords="offset points",
                        xytext=(0, 7), ha="center", fontsize=7)
    for r in results:
        if r.method in ("mpsl", "fedavg") and r.comm.bytes_up_per_client:
            per_round = r.comm.bytes_up_per_client_per_round + r.comm.bytes_down_per_client_per_round
            ax.scatter([r.cost.params.encoder_total / 1e6], [per_round / 1e6], marker="*", s=160, zorder=3,
                       color=COLORS[r.method], edgecolor="black", label=f"{r.method}, this run (measured)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("encoder parameters (millions, log scale)")
    ax.set_ylabel("MB per client, up + down (log scale)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_reports(run_dir: Path, results: Results, scaling: Sequence[dict[str, Any]]) -> list[Path]:
    """compare.md, compare.csv and the three PNGs; the table is printed too."""
    first = results[0]
    setup = f"{first.dataset}, {first.config.num_clients} clients"
    title = f"{run_dir.name}: {setup}"
    (run_dir / "compare.md").write_text(compare_markdown(title, results))
    (run_dir / "compare.csv").write_text(compare_csv(results))
    samples = sum(first.samples_per_client) / first.config.num_clients
    written = [
        run_dir / "compare.md", run_dir / "compare.csv",
        accuracy_plot(results, run_dir / "accuracy.png", f"{setup}: {score_label(first.metric)}"),
        time_to_accuracy_plot(results, run_dir / "time_to_accuracy.png", f"{setup}: time to accuracy"),
        compute_plot(results, run_dir / "client_compute.png", "Compute on one client per training sample"),
        communication_plot(results, scaling, run_dir / "communication.png",
                           f"Traffic per client vs backbone ({samples:.0f} samples per client)"),
    ]
    print(f"\n{compare_table(results)}\nwrote {', '.join(p.name for p in written)} in {run_dir}")
    return written
