"""The attack x setting tables of docs/privacy.md: one `mpsl privacy` audit per setting, the last epoch's scores.

Each row is the audit `mpsl privacy <config> <base overrides> <setting>` prints (the command is written beside
it); this script only runs the rows and lays the last epoch out as one table. Rows run one after another in
this process; to use more cores, start one process per row subset with its own --out, then --markdown them all:

    .venv/bin/python benchmarks/privacy_table.py --dataset avdigits --rows 0-6 --out a.json
    .venv/bin/python benchmarks/privacy_table.py --dataset avdigits --rows 7-13 --out b.json
    .venv/bin/python benchmarks/privacy_table.py --markdown a.json b.json
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time
from pathlib import Path

import torch

from mpsl.config import load_config
from mpsl.data import load_dataset
from mpsl.experiment.privacy import PrivacyAudit, audit

BASE = {  # what every row of a dataset shares: a short run the machine finishes in minutes
    "avdigits": ["train.epochs=2", "data.train_size=2000", "data.test_size=500", "progress=false"],
    "clipart": ["train.epochs=2", "data.train_size=2000", "data.test_size=500", "progress=false"],
}
ROWS = {  # the settings measured, defaults first
    "avdigits": [
        "", "model.head=server privacy.step_metrics=true",
        "model.head=server privacy.grad_clip=1 privacy.grad_noise=0.2",
        "model.head=server privacy.grad_clip=1 privacy.grad_noise=1",
        "privacy.step_metrics=true", "privacy.grad_clip=0.3 privacy.grad_noise=0.05",
        "privacy.grad_clip=1 privacy.grad_noise=0.2", "privacy.grad_clip=1 privacy.grad_noise=1",
        "privacy.token_clip=80 privacy.token_noise=0.002", "privacy.token_clip=80 privacy.token_noise=0.05",
        "privacy.token_clip=80 privacy.token_noise=1", "privacy.nopeek=1",
        "model.client_blocks=1", "model.client_blocks=3",
    ],
    "clipart": ["", "model.client_blocks=1", "privacy.grad_clip=1 privacy.grad_noise=0.2", "privacy.nopeek=1"],
}
COLUMNS = [  # (header, attack (a glob over the modality's name), metric); the scores of the last epoch
    ("logit sign", "logit-gradient sign", "label accuracy"),
    ("head proj. (server's seed)", "known-initial-head projection (server's template)", "label accuracy"),
    ("head proj. (leaked seed)", "known-initial-head projection (leaked client seed)", "label accuracy"),
    ("clustering", "direction clustering", "label accuracy"),
    ("norm AUC", "gradient norm", "AUC"),
    ("scalars", "loss/correct scalars", "label accuracy"),
    ("image LSQ PSNR (leaked seed)", "known-tokenizer inversion, image (leaked client seed)", "PSNR dB"),
    ("image learned PSNR", "learned inversion, image (query access to client 0)", "PSNR dB"),
    ("image learned SSIM", "learned inversion, image (query access to client 0)", "SSIM"),
    ("audio learned PSNR", "learned inversion, audio (query access to client 0)", "PSNR dB"),
    ("text words (server's seed)", "known-embedding reading, * (server's template)", "word accuracy"),
    ("text words (leaked seed)", "known-embedding reading, * (leaked client seed)", "word accuracy"),
]


def run_row(dataset: str, setting: str) -> dict:
    torch.set_num_threads(1)  # rows run side by side in separate processes
    overrides = [*BASE[dataset], *setting.split()]
    cfg = load_config(dataset, overrides)
    start = time.perf_counter()
    result: PrivacyAudit = audit(cfg, load_dataset(cfg.data, cfg.progress))
    last = max(s.epoch for s in result.scores)
    return {
        "dataset": dataset, "setting": setting, "command": f"mpsl privacy {dataset} {' '.join(overrides)}",
        "scores": [{"attack": s.attack, "metric": s.metric, "value": s.value, "chance": s.chance}
                   for s in result.scores if s.epoch == last],
        "epoch": last, "test_accuracy": result.test_accuracy, "client_gflops": result.client_flops_per_sample / 1e9,
        "epsilon_tokens": result.epsilon_tokens, "epsilon_labels": result.epsilon_labels,
        "seconds": time.perf_counter() - start,
    }


def _cell(row: dict, attack: str, metric: str, field: str = "value") -> str:
    found = [s for s in row["scores"] if fnmatch.fnmatchcase(s["attack"], attack) and s["metric"] == metric]
    if not found:
        return "–"
    value = found[0][field]
    if value is None:
        return "not sent"
    return f"{value:.3f}" if metric != "PSNR dB" else f"{value:.2f}"


def markdown(rows: list[dict]) -> str:
    """One table per dataset: a chance row, then each setting's last-epoch scores, accuracy, cost and epsilon."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        columns = [c for c in COLUMNS if any(_cell(r, c[1], c[2]) != "–" for r in mine)]  # attacks that applied
        head = ["setting", *(c[0] for c in columns), "test acc.", "client GFLOPs/sample", "ε tokens / labels", "s"]
        out += [f"**{dataset}** (`{' '.join(BASE[dataset])}`, epoch {mine[0]['epoch']})", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        chance = ["chance (no messages)"]
        for _, attack, metric in columns:  # the same for every row: a label prior, or the mean public input
            cells = [_cell(r, attack, metric, "chance") for r in mine]
            chance.append(next((c for c in cells if c not in ("–", "not sent")), "–"))
        out.append("| " + " | ".join([*chance, "", "", "", ""]) + " |")
        for r in mine:
            eps = " / ".join("off" if e is None else f"{e:.2f}" for e in (r["epsilon_tokens"], r["epsilon_labels"]))
            cells = [f"`{r['setting']}`" if r["setting"] else "defaults",
                     *(_cell(r, attack, metric) for _, attack, metric in columns),
                     f"{r['test_accuracy']:.3f}", f"{r['client_gflops']:.4f}", eps, f"{r['seconds']:.0f}"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _indices(spec: str, n: int) -> list[int]:
    if spec == "all":
        return list(range(n))
    picked: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        picked += list(range(int(lo), int(hi or lo) + 1))
    return [i for i in picked if i < n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(ROWS), default="avdigits")
    parser.add_argument("--rows", default="all", help="indices into the dataset's settings, e.g. 0-6 or 1,3")
    parser.add_argument("--out", type=Path, help="write (and extend) the rows' JSON here")
    parser.add_argument("--markdown", nargs="+", type=Path, metavar="JSON", help="print the table of these files")
    args = parser.parse_args()
    if args.markdown:
        print(markdown([row for path in args.markdown for row in json.loads(path.read_text())]))
        return
    rows = json.loads(args.out.read_text()) if args.out and args.out.is_file() else []
    for i in _indices(args.rows, len(ROWS[args.dataset])):
        rows.append(run_row(args.dataset, ROWS[args.dataset][i]))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "scores"}), flush=True)
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))
    print(markdown(rows))


if __name__ == "__main__":
    main()
