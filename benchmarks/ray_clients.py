"""Simulated clients on Ray against in-process: wall time per epoch (MPSL) or round (FedAvg) and peak memory.

A tiny model on the in-memory synthetic-av data, so the numbers show what the runtime itself costs (process
start-up, one Ray call per actor for each of the step's three verbs, copying weights back), not the model:
random-init encoder of width 32 and depth 2, 8x8 image and 8x12 spectrogram in 4x4 patches (4 + 6 tokens and
a CLS each), IID partition, batch B = num_clients (one sample per client and step), `samples` training samples.

Each case runs in a fresh process: it trains `epochs` rounds and reports the time of each (`train_round` only:
building the parties and starting Ray are reported apart as set-up) and the peak RSS of every process: the
driver, and on Ray each client actor and the server actor. Run:

    .venv/bin/python benchmarks/ray_clients.py --case mpsl:100 mpsl:1000 fedavg:100 [--actors 2] [--epochs 2] \\
        [--runtimes inprocess ray] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from mpsl.config import load_config
from mpsl.data import load_dataset
from mpsl.experiment.methods import METHODS

RUNTIMES = ("inprocess", "ray")


def _peak_mb(_party: object = None) -> float:
    """Peak resident memory of the calling process, in MB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, clients: int, runtime: str, actors: int, epochs: int, samples: int) -> dict:
    cfg = METHODS.get(method).configure(load_config(None, [
        "data.name=synthetic-av", f"data.train_size={samples}", "data.test_size=8", "model.encoder.source=random",
        "model.encoder.width=32", "model.encoder.depth=2", "model.encoder.heads=2", "model.image.patch=[4,4]",
        "model.audio.patch=[4,4]", "model.audio.stride=null", f"num_clients={clients}",
        f"train.batch_size={clients}", "partition.kind=iid", "partition.min_size=1", "progress=false",
        f"runtime.kind={runtime}", f"ray.actors={actors}", f"ray.local_cpus={actors}"]))
    data = load_dataset(cfg.data)
    t0 = time.perf_counter()
    trainer = METHODS.get(method)(cfg, data)
    setup = time.perf_counter() - t0
    seconds = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        trainer.train_round(epoch, progress=False)
        seconds.append(time.perf_counter() - t0)
    row = {"method": method, "clients": clients, "runtime": runtime, "threads": torch.get_num_threads(),
           "setup_s": setup, "round_s": seconds,
           "driver_peak_mb": _peak_mb()}
    if runtime == "ray":
        client_actors = getattr(trainer, "remote", None)
        client_actors = getattr(client_actors, "clients", client_actors)  # Mpsl keeps its client actors apart
        row["client_actor_peak_mb"] = client_actors.call(_peak_mb)
        server = getattr(trainer.remote, "server", None)
        if server is not None:
            row["server_actor_peak_mb"] = server.call(_peak_mb)[0]
    trainer.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", default=["mpsl:100", "mpsl:1000", "fedavg:100"],
                        help="method:num_clients")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples-per-client", type=int, default=2)
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--threads", type=int, help="torch threads of the driver (default: torch's, one per core); "
                        "each Ray actor computes on as many threads as it reserves CPUs")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # method:clients:runtime, in this process
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        method, clients, runtime = args.one.split(":")
        n = int(clients)
        print(json.dumps(measure(method, n, runtime, args.actors, args.epochs, n * args.samples_per_client)))
        return
    print("| method | clients | runtime | driver threads | set-up s | s per epoch/round | driver peak MB | "
          "client actor peak MB | server actor peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    threads = ["--threads", str(args.threads)] if args.threads else []
    for case in args.case:
        for runtime in args.runtimes:
            done = subprocess.run([sys.executable, __file__, "--one", f"{case}:{runtime}", "--actors",
                                   str(args.actors), "--epochs", str(args.epochs), "--samples-per-client",
                                   str(args.samples_per_client), *threads], capture_output=True, text=True,
                                  check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            actors = ", ".join(f"{m:.0f}" for m in row.get("client_actor_peak_mb", [])) or "-"
            server = f"{row['server_actor_peak_mb']:.0f}" if "server_actor_peak_mb" in row else "-"
            print(f"| {row['method']} | {row['clients']} | {runtime} | {row['threads']} | {row['setup_s']:.1f} | "
                  f"{' / '.join(f'{s:.2f}' for s in row['round_s'])} | {row['driver_peak_mb']:.0f} | {actors} | "
                  f"{server} |", flush=True)


if __name__ == "__main__":
    main()
