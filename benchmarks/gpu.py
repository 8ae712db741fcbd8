"""The paper's workload on one accelerator: centralized vs MPSL samples/s, peak memory, MFU.

ViT-B/16 (random weights of the real shape; the last 6 of 12 blocks train), the paper's COCO-QA
(224 px image + one CLIP sentence token: 198 tokens, 430 classes) and MELD (7.68 s of 128-bin fbank
+ one sentence token: 914 tokens, 7 classes) shapes, global batch B = 500 over 100 clients, bf16
autocast. The two are timed interleaved, in windows, on the same inputs:

    centralized  one WholeModel forward/backward/Adam step on the global batch (no cut, no codec)
    mpsl         one `mpsl_step` over the 100 clients (tokenizers, heads and Adam per client)

The share outside the encoder is 1 - (server-only step time / MPSL step time): what the clients'
work and the protocol add. MFU counts the model FLOPs of a training sample (forward, the backward's
input gradients through every block, weight gradients through the trained blocks) against the
device's dense peak (`--peak-tflops`, H200 bf16: 989).

    python benchmarks/gpu.py                          # on a CUDA machine, under 5 minutes
    python benchmarks/gpu.py --device cpu --small     # a smoke run of the same code (tests do this)
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mpsl.analysis.costs import COST_TASKS, task_config
from mpsl.analysis.flops import count_flops
from mpsl.data import Dataset, DatasetSpec, ModalitySpec, SplitData
from mpsl.devices import autocast, resolve_device
from mpsl.experiment.methods.base import whole_model_adam
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.models import WholeModel, build_split_model, example_inputs
from mpsl.protocol import mpsl_step


@dataclass(frozen=True)
class Row:
    task: str
    tokens: int
    clients: int
    batch: int
    centralized_samples_s: float
    mpsl_samples_s: float
    ratio: float  # MPSL step time / centralized step time
    outside_encoder_share: float
    peak_memory_gib: float
    model_gflop_per_sample: float
    mfu_centralized: float
    mfu_mpsl: float


def _dataset(spec: DatasetSpec, n: int) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    inputs = {m: torch.randn(n, *s.shape, generator=gen) for m, s in spec.modalities.items()}  # m -> [n, *shape]
    split = SplitData(inputs, torch.randint(0, spec.num_classes, (n,), generator=gen))
    return Dataset(spec, split, split)


def _training_flops(cfg, spec: DatasetSpec) -> tuple[float, int]:
    """Model FLOPs of one training sample, and its tokens: forward x (2 + trained share of the blocks)."""
    with torch.device("meta"):
        client, server = build_split_model(cfg.model, spec, cfg.seed)
        tokens, c = count_flops(lambda: client.embed(example_inputs(spec)))  # m -> [1, T_m, D]
        _, s = count_flops(lambda: client.head(server(tokens)))
    blocks = list(server.encoder.blocks)
    trained = sum(any(p.requires_grad for p in b.parameters()) for b in blocks) / len(blocks)
    return (c.total + s.total) * (2 + trained), sum(t.shape[1] for t in tokens.values())


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(task: str, args: argparse.Namespace) -> Row:
    device = resolve_device(args.device)
    cost_task = COST_TASKS.get(task)
    base = task_config(args.preset, cost_task)
    modalities = cost_task.modalities
    if args.small:  # the same model and code on small inputs: 32 px images, 0.48 s of audio
        small = {"image": (3, 32, 32), "audio": (1, 128, 48)}
        modalities = {m: ModalitySpec(s.kind, small.get(m, s.shape)) for m, s in modalities.items()}
    spec = DatasetSpec(task, modalities, cost_task.num_classes or 1)
    steps = args.windows * args.steps_per_window + 1
    cfg = base.replace(**{
        "num_clients": args.clients, "train.batch_size": args.batch, "partition.kind": "iid",
        "partition.min_size": 1, "model.precision": args.precision, "runtime.device": args.device,
        "runtime.compile": args.compile, "model.encoder.trainable_blocks": args.trainable_blocks,
        "data.train_size": args.batch * steps, "eval.personalized": False,
    })
    data = _dataset(spec, args.batch * steps)
    flops, tokens = _training_flops(cfg, spec)

    sim = Mpsl(cfg, data)
    for h in sim.handles:
        h.start_epoch(0)
    whole = WholeModel(copy.deepcopy(sim.client_template), copy.deepcopy(sim.server_template)).to(device)
    opt = whole_model_adam(whole, cfg)
    batch = {m: x[:args.batch].to(device) for m, x in data.train.inputs.items()}  # m -> [B, *shape]
    labels = data.train.labels[:args.batch].to(device)  # [B]

    def centralized() -> None:
        with autocast(device, args.precision):
            loss = sim.task.loss(whole(batch).float(), labels)
        loss.backward()
        opt.step()
        whole.zero_grad(set_to_none=True)

    step = 0

    def mpsl() -> None:
        nonlocal step
        mpsl_step(sim.server, sim.handles, step)
        step += 1

    with torch.no_grad():
        cut = {m: t.detach() for m, t in sim.client_template.to(device).embed(batch).items()}  # m -> [B, T_m, D]
    sim.client_template.cpu()

    def server_only() -> None:
        tokens_in = {m: t.clone().requires_grad_(True) for m, t in cut.items()}
        out = sim.server.forward(tokens_in)
        sim.server.backward_and_step([out], [torch.ones_like(out) / out.numel()], list(tokens_in.values()))

    for fn in (centralized, mpsl, server_only):  # warm-up (and compilation)
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {"centralized": 0.0, "mpsl": 0.0, "server": 0.0}
    for _ in range(args.windows):
        times["centralized"] += _timed(lambda: [centralized() for _ in range(args.steps_per_window)], device)
        times["mpsl"] += _timed(lambda: [mpsl() for _ in range(args.steps_per_window)], device)
        times["server"] += _timed(lambda: [server_only() for _ in range(args.steps_per_window)], device)
    n = args.windows * args.steps_per_window
    per_step = {k: v / n for k, v in times.items()}
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    achieved = {k: args.batch * flops / per_step[k] for k in ("centralized", "mpsl")}  # FLOP/s
    return Row(task, tokens, args.clients, args.batch, args.batch / per_step["centralized"],
               args.batch / per_step["mpsl"], per_step["mpsl"] / per_step["centralized"],
               max(0.0, 1 - per_step["server"] / per_step["mpsl"]), peak, flops / 1e9,
               achieved["centralized"] / (args.peak_tflops * 1e12), achieved["mpsl"] / (args.peak_tflops * 1e12))


def table(rows: list[Row]) -> str:
    lines = ["| task | tokens | clients | B | centralized samples/s | MPSL samples/s | MPSL / centralized time "
             "| outside encoder | peak GiB | GFLOP/sample | MFU centralized | MFU MPSL |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.task} | {r.tokens} | {r.clients} | {r.batch} | {r.centralized_samples_s:.1f} | "
              f"{r.mpsl_samples_s:.1f} | {r.ratio:.3f} | {r.outside_encoder_share:.1%} | {r.peak_memory_gib:.1f} | "
              f"{r.model_gflop_per_sample:.1f} | {r.mfu_centralized:.1%} | {r.mfu_mpsl:.1%} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="ViT-Ti, small inputs, 4 clients, B = 8: a smoke run")
    parser.add_argument("--tasks", nargs="+", default=["coco-qa", "meld"])
    parser.add_argument("--preset", default="vit-b16")
    parser.add_argument("--trainable-blocks", type=int, default=6)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--steps-per-window", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.small:
        args.preset, args.trainable_blocks, args.clients, args.batch = "vit-ti16", 6, 4, 8
        args.windows, args.steps_per_window, args.precision = 1, 1, "fp32" if args.device == "cpu" else "bf16"
    rows = []
    for task in args.tasks:
        rows.append(measure(task, args))
        print(table(rows[-1:]).splitlines()[-1] if len(rows) > 1 else table(rows), flush=True)
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return rows


if __name__ == "__main__":
    main()
