"""Cost of the split: one MPSL step over N in-process clients vs one plain centralized step on the same batch.

The centralized step is the whole model (one tokenizer copy + the encoder) trained by plain autograd: read the
batch, forward, loss, backward, one fused Adam step. The MPSL step is `mpsl_step` over N clients of
b = ceil(B / N) samples each (the same N * b samples), with the clients run one after another (`loop`) or
as one batched computation (`batched`). The two are timed interleaved, step for step, so that drift of a
shared machine hits both alike; a ratio is the median over those pairs of MPSL / centralized, in wall time
and in process CPU time (less sensitive to other processes on the machine). Each (N, clients) runs in a
fresh process, so its peak RSS is its own. Run:

    .venv/bin/python benchmarks/step_overhead.py --num-clients 10 100 1000 --clients loop batched \\
        [--batch 100] [--steps 10] [--preset vit-ti16]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from mpsl.config import load_config
from mpsl.data import Dataset, DatasetSpec, ModalitySpec, SplitData
from mpsl.experiment.methods.base import whole_model_adam
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.models import WholeModel
from mpsl.models.presets import PRESETS
from mpsl.protocol import mpsl_step

IMAGE, AUDIO = (1, 28, 28), (1, 32, 40)  # 7x7 patches: 1 + 16 tokens; 8x8 patches: 1 + 20 tokens -> 38 per sample


def _dataset(n: int) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    split = SplitData({"image": torch.randn(n, *IMAGE, generator=gen), "audio": torch.randn(n, *AUDIO, generator=gen)},
                      torch.randint(0, 10, (n,), generator=gen))
    spec = DatasetSpec("bench", {"image": ModalitySpec("image", IMAGE), "audio": ModalitySpec("audio", AUDIO)}, 10)
    return Dataset(spec, split, split)


def measure(clients: int, execution: str, batch: int, steps: int, preset: str) -> dict[str, float]:
    """Seconds per centralized and per MPSL step (medians over `steps` interleaved pairs, after one warm-up)."""
    b = -(-batch // clients)  # ceil(B / N)
    total = clients * b  # the samples of one MPSL step, and of the centralized step it is compared with
    n = total * (steps + 1)
    half = PRESETS.get(preset).depth // 2  # the paper's policy: the last half of the blocks trains
    cfg = load_config(None, [f"num_clients={clients}", f"train.batch_size={batch}", "partition.kind=iid",
                             "partition.min_size=1", "model.image.patch=[7,7]", "model.audio.patch=[8,8]",
                             "model.audio.stride=null", f"data.train_size={n}", f"runtime.clients={execution}",
                             "model.encoder.source=vit", f"model.encoder.preset={preset}",
                             f"model.encoder.trainable_blocks={half}", "progress=false"])
    data = _dataset(n)
    sim = Mpsl(cfg, data)
    assert sim.batched == (execution == "batched"), sim.fallback
    whole = WholeModel(copy.deepcopy(sim.client_template), copy.deepcopy(sim.server_template))  # as MPSL starts
    opt = whole_model_adam(whole, cfg)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))  # [n]

    def central(i: int) -> None:
        batch_data = data.train.subset(order[(i % (steps + 1)) * total:][:total])  # [total]
        whole.train()
        loss = sim.task.loss(whole(batch_data.inputs), batch_data.labels)
        loss.backward()
        opt.step()
        whole.zero_grad(set_to_none=True)

    sim.group.start_epoch(0)
    central(0)  # warm-up both
    mpsl_step(sim.server, sim.group, 0)
    wall: dict[str, list[float]] = {"central": [], "mpsl": []}
    cpu: dict[str, list[float]] = {"central": [], "mpsl": []}  # process CPU seconds: robust to a busy machine
    for step in range(1, steps + 1):
        for kind in ("central", "mpsl"):
            start, start_cpu = time.perf_counter(), time.process_time()
            if kind == "central":
                central(step)
            else:
                result = mpsl_step(sim.server, sim.group, step)
                assert result is not None and result.count == total, "every client must take part in every step"
            wall[kind].append(time.perf_counter() - start)
            cpu[kind].append(time.process_time() - start_cpu)
    def ratio(times: dict[str, list[float]]) -> float:  # per adjacent pair, so slow drift cancels; then the median
        return statistics.median(m / c for m, c in zip(times["mpsl"], times["central"], strict=True))

    return {"clients": clients, "execution": execution, "samples": total,
            "central_s": statistics.median(wall["central"]), "mpsl_s": statistics.median(wall["mpsl"]),
            "ratio": ratio(wall), "cpu_ratio": ratio(cpu),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--clients", choices=["loop", "batched"], nargs="+", default=["batched"],
                        help="how the simulation runs its clients (runtime.clients)")
    parser.add_argument("--batch", type=int, default=100, help="global batch B; N > B clients send 1 sample each")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind")
    parser.add_argument("--preset", default="vit-ti16", help="random-init ViT encoder of this shape")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single measurement, as JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.num_clients[0], args.clients[0], args.batch, args.steps, args.preset)))
        return
    print("| clients | execution | samples/step | centralized s/step | MPSL s/step | MPSL / centralized "
          "| same, CPU time | peak RSS |\n|---|---|---|---|---|---|---|---|", flush=True)
    for n in args.num_clients:
        for execution in args.clients:
            out = subprocess.run([sys.executable, __file__, "--one", "--num-clients", str(n), "--clients", execution,
                                  "--batch", str(args.batch), "--steps", str(args.steps), "--preset", args.preset],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"| {n} | {execution} | {r['samples']} | {r['central_s']:.3f} | {r['mpsl_s']:.3f} | "
                  f"{r['ratio']:.3f}x | {r['cpu_ratio']:.3f}x | {r['peak_rss_mb']:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
