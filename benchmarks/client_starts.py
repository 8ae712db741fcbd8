"""Clients that start from one shared seed vs each from a seed of its own (docs/benchmarks.md).

Either hides the clients' start from the server; this measures what starting apart costs, which is why
`mpsl client` requires the clients' shared `privacy.client_seed` rather than drawing its own. It trains the
same MPSL run both ways and reports the averaged client model's test accuracy (the paper's evaluation,
which presumes one start) and each client's own model's. Run:

    .venv/bin/python benchmarks/client_starts.py [key=value ...]   # default: the demo config's MPSL
"""

from __future__ import annotations

import json
import sys
import time

import torch

from mpsl.config import load_config
from mpsl.data import load_dataset
from mpsl.experiment.evaluate import headline
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.models import build_split_model


def train(overrides: list[str], apart: bool) -> dict:
    cfg = load_config("avdigits", ["progress=false", *overrides])
    dataset = load_dataset(cfg.data)
    method = Mpsl(cfg, dataset)
    if apart:  # client k's weights from its own seed, written into its parameters before any step
        for k, c in enumerate(method.clients):
            own, _ = build_split_model(cfg.model, dataset.spec, cfg.seed, client_seed=10_000 + k)
            with torch.no_grad():
                for p, q in zip(c.model.parameters(), own.parameters(), strict=True):
                    p.copy_(q)
    start = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        method.train_round(epoch, progress=False)
    model = method.global_model()
    score = [headline(model.client, model.server, dataset.test, method.task, cfg.eval.batch_size)]
    own = [headline(c.model, model.server, dataset.test, method.task, cfg.eval.batch_size) for c in method.clients]
    return {"starts": "apart" if apart else "shared", "averaged_model": score[0],
            "own_models_mean": sum(own) / len(own), "own_models": own, "seconds": time.perf_counter() - start}


def main() -> None:
    for apart in (False, True):
        print(json.dumps(train(sys.argv[1:], apart)), flush=True)


if __name__ == "__main__":
    main()
