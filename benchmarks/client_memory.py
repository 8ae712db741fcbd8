"""Memory of many simulated clients in one process: each its own ViT-B/16-sized tokenizers, head and Adam.

Builds N MPSL clients of the paper's COCO-QA shapes (image patch embedding 16x16x3 -> 768 + CLS +
197 positions + pre-norm, a sentence token, the 430-class head on the client), gives each client's
Adam its state by taking one step on zero gradients, and reports the process's peak RSS and the
bytes each idle client adds.

    python benchmarks/client_memory.py --clients 100 1000
"""

from __future__ import annotations

import argparse
import copy
import gc
import resource

import torch

from mpsl.analysis.costs import COST_TASKS, task_config
from mpsl.data import DatasetSpec
from mpsl.models import build_split_model
from mpsl.parties import adam


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def build_clients(n: int) -> tuple[list, int]:
    task = COST_TASKS.get("coco-qa")
    cfg = task_config("vit-b16", task)
    spec = DatasetSpec("coco-qa", task.modalities, task.num_classes)
    template, server = build_split_model(cfg.model, spec, cfg.seed)
    del server
    gc.collect()
    before = rss_bytes()
    clients = []
    for _ in range(n):
        model = copy.deepcopy(template)
        opt = adam([(model.parameters(), 1e-4)], 0.0)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()  # allocates exp_avg and exp_avg_sq
        model.zero_grad(set_to_none=True)
        clients.append((model, opt))
    return clients, rss_bytes() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    print("| clients | trainable params/client | added RSS | bytes per idle client | peak RSS of the process |")
    print("|---|---|---|---|---|")
    for n in args.clients:
        clients, added = build_clients(n)
        params = sum(p.numel() for p in clients[0][0].parameters() if p.requires_grad)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"| {n} | {params / 1e6:.2f} M | {added / 2**30:.2f} GiB | {added / n / 2**20:.1f} MiB | "
              f"{peak / 2**30:.2f} GiB |", flush=True)
        del clients
        gc.collect()


if __name__ == "__main__":
    main()
