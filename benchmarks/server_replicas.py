"""Server replicas on one machine: MPSL steps/s with 1 process vs K gloo ranks, and the gradient sum's share.

The same MPSL training (N in-process batched clients, B samples per step, a random-init ViT preset with the
last half of its blocks training) runs as one process with T torch threads, and as K torch.distributed ranks
(gloo, file rendezvous) with T / K threads each, so both use the same cores. Each rank times its steps; inside
a step it times the gradient sum in two parts: the wait for the slowest rank (a barrier put just before it,
for this measurement only) and the all-reduce itself. Rows report medians over the timed steps (after one
warm-up step) of rank 0. Run:

    .venv/bin/python benchmarks/server_replicas.py --ranks 1 2 [--threads 2] [--num-clients 10] [--batch 100] \\
        [--steps 10] [--preset vit-ti16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from step_overhead import _dataset  # the same random avdigits-shaped data (a sibling script)

from mpsl.config import load_config
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.models.presets import PRESETS
from mpsl.protocol import mpsl_step
from mpsl.runtime.distributed import TorchWorld


@dataclass
class TimedWorld(TorchWorld):
    """A TorchWorld that times its gradient sums: the wait for the other ranks, then the all-reduce."""

    wait: list[float] = field(default_factory=list)
    reduce: list[float] = field(default_factory=list)

    def sum_grads(self, params: Sequence[torch.Tensor]) -> None:
        t0 = time.perf_counter()
        dist.barrier()
        t1 = time.perf_counter()
        super().sum_grads(params)
        self.wait.append(t1 - t0)
        self.reduce.append(time.perf_counter() - t1)


def _run(rank: int, size: int, threads: int, args: argparse.Namespace, rendezvous: str, out: str) -> None:
    torch.set_num_threads(threads)
    b = -(-args.batch // args.num_clients)
    n = args.num_clients * b * (args.steps + 1)  # one epoch = the warm-up step + the timed steps
    half = PRESETS.get(args.preset).depth // 2
    cfg = load_config(None, [f"num_clients={args.num_clients}", f"train.batch_size={args.batch}",
                             "partition.kind=iid", "partition.min_size=1", "model.image.patch=[7,7]",
                             "model.audio.patch=[8,8]", "model.audio.stride=null", f"data.train_size={n}",
                             "model.encoder.source=vit", f"model.encoder.preset={args.preset}",
                             f"model.encoder.trainable_blocks={half}", "progress=false"])
    world = None
    if size > 1:
        dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=size)
        world = TimedWorld(rank, size, torch.device("cpu"), "gloo")
    sim = Mpsl(cfg, _dataset(n), world)
    sim.group.start_epoch(0)
    times = []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        mpsl_step(sim.server, sim.group, step)
        times.append(time.perf_counter() - t0)
    grad_numel = sum(p.numel() for p in sim.server.model.parameters() if p.requires_grad)
    row = {"ranks": size, "threads_per_rank": threads, "samples_per_step": args.num_clients * b,
           "s_per_step": statistics.median(times[1:]), "grad_mb": grad_numel * 4 / 1e6}
    if world is not None:
        row["wait_s"] = statistics.median(world.wait[1:])
        row["allreduce_s"] = statistics.median(world.reduce[1:])
        world.close()
    row["samples_per_s"] = row["samples_per_step"] / row["s_per_step"]
    if rank == 0:
        Path(out).write_text(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all, split evenly over the ranks")
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--preset", default="vit-ti16")
    args = parser.parse_args()
    print("| ranks | threads/rank | samples/step | s/step | samples/s | grad MB | wait s | all-reduce s | "
          "all-reduce share |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.ranks:
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/row.json"
            threads = max(1, args.threads // size)
            if size == 1:
                _run(0, 1, threads, args, "", out)
            else:
                mp.spawn(_run, args=(size, threads, args, f"file://{tmp}/rendezvous", out), nprocs=size, join=True)
            r = json.loads(Path(out).read_text())
        wait, reduce = r.get("wait_s"), r.get("allreduce_s")
        print(f"| {r['ranks']} | {r['threads_per_rank']} | {r['samples_per_step']} | {r['s_per_step']:.3f} | "
              f"{r['samples_per_s']:.1f} | {r['grad_mb']:.1f} | "
              + ("- | - | - |" if wait is None else
                 f"{wait:.3f} | {reduce:.3f} | {reduce / r['s_per_step']:.1%} |"), flush=True)


if __name__ == "__main__":
    main()
