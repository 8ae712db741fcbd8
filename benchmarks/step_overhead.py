"""Cost of the split: one MPSL step over N in-process clients vs one centralized step, same batch.

Both go through the same `mpsl_step`; the difference is the per-client work (N tokenizer passes,
N optimizers, message encoding and decoding). Run:

    .venv/bin/python benchmarks/step_overhead.py [--clients 1 8 32] [--batch 64] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from mpsl.config import load_config
from mpsl.data import Dataset, DatasetSpec, ModalitySpec, SplitData
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.protocol import mpsl_step

IMAGE, AUDIO = (1, 28, 28), (1, 32, 40)


def _dataset(n: int) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    split = SplitData({"image": torch.randn(n, *IMAGE, generator=gen), "audio": torch.randn(n, *AUDIO, generator=gen)},
                      torch.randint(0, 10, (n,), generator=gen))
    spec = DatasetSpec("bench", {"image": ModalitySpec("image", IMAGE), "audio": ModalitySpec("audio", AUDIO)}, 10)
    return Dataset(spec, split, split)


def seconds_per_step(clients: int, batch: int, steps: int, encoder: str) -> float:
    cfg = load_config(None, [f"num_clients={max(clients, 1)}", f"train.batch_size={batch}", "partition.kind=iid",
                             "model.image.patch=[14,14]", "model.audio.patch=[16,8]", "model.audio.stride=null",
                             f"model.encoder.source={encoder}", "model.encoder.trainable_blocks=6",
                             f"data.train_size={batch * (steps + 2)}", "partition.min_size=1"])
    sim = Mpsl(cfg, _dataset(batch * (steps + 2)))  # one client: centralized through the same step
    for h in sim.handles:
        h.start_epoch(0)
    mpsl_step(sim.server, sim.handles, 0)  # warm-up
    start = time.perf_counter()
    for step in range(1, steps + 1):
        mpsl_step(sim.server, sim.handles, step)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--encoder", default="minilm")
    args = parser.parse_args()
    base = seconds_per_step(1, args.batch, args.steps, args.encoder)
    print("| clients | s/step | samples/s | time vs centralized |\n|---|---|---|---|")
    print(f"| centralized | {base:.3f} | {args.batch / base:.0f} | 1.00x |", flush=True)
    for n in args.clients:
        sec = seconds_per_step(n, args.batch, args.steps, args.encoder)
        print(f"| {n} | {sec:.3f} | {args.batch / sec:.0f} | {sec / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
