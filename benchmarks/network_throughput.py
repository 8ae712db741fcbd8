"""gRPC loopback vs in-process: samples/s of the same MPSL training, and bytes on the wire per sample.

Starts `mpsl server` and N `mpsl client` processes on 127.0.0.1 (one thread each, as edge devices
would have), reads the server's step events (its JSON log), and runs the same config through the
in-process runtime.
Run:

    .venv/bin/python benchmarks/network_throughput.py [--clients 1 4 16] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpsl.config import load_config
from mpsl.data import load_dataset
from mpsl.deploy.common import expected_shapes
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.models import build_split_model
from mpsl.runtime.network.events import Finished, Step, read_events

# a fixed small model: random ViT-Ti-like encoder (192 wide, 4 blocks), 10 tokens per sample, B = 64
SETTINGS = ["data.name=synthetic-av", "data.train_size=2048", "data.test_size=64", "model.encoder.source=random",
            "model.encoder.width=192", "model.encoder.depth=4", "model.encoder.heads=3",
            "model.encoder.trainable_blocks=4", "model.image.patch=[4,4]", "model.audio.patch=[4,6]",
            "model.audio.stride=null", "partition.kind=iid", "partition.min_size=1", "train.batch_size=64",
            "progress=false", "eval.personalized=false", "eval.ablations=false", "deploy.step_timeout=120"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback(clients: int, epochs: int, workdir: Path) -> dict[str, float]:
    overrides = [*SETTINGS, f"num_clients={clients}", f"train.epochs={epochs}", f"out_dir={workdir}",
                 f"deploy.min_participants={clients}", f"name=bench{clients}"]
    config = workdir / "bench.yaml"
    config.write_text("{}\n")
    port = _port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = workdir / f"server{clients}.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mpsl", "server", str(config), *overrides,
                                   "--listen", f"127.0.0.1:{port}", "--log-format", "json"], stdout=out,
                                  stderr=subprocess.STDOUT)
        time.sleep(1.0)
        procs = [subprocess.Popen([sys.executable, "-m", "mpsl", "client", str(config), *overrides,
                                   "privacy.client_seed=4242", "--server", f"127.0.0.1:{port}", "--client-id", str(k)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for k in range(clients)]  # the clients' shared seed, which `mpsl client` requires
        server.wait(timeout=1800)
        for p in procs:
            p.wait(timeout=60)
    text = log.read_text()
    events = read_events(text)
    finished = [e for e in events if isinstance(e, Finished)]
    if not finished:
        raise RuntimeError(f"the server did not finish:\n{text[-2000:]}")
    steps = [e for e in events if isinstance(e, Step)]
    samples = sum(s.samples for s in steps)
    return {"samples_per_s": finished[0].samples / finished[0].step_seconds,
            "up_per_sample": sum(s.bytes_up for s in steps) / samples,
            "down_per_sample": sum(s.bytes_down for s in steps) / samples}


def in_process(clients: int, epochs: int) -> float:
    cfg = load_config(None, [*SETTINGS, f"num_clients={clients}", f"train.epochs={epochs}"])
    method = Mpsl(cfg, load_dataset(cfg.data))
    start = time.perf_counter()
    for epoch in range(epochs):
        method.train_round(epoch, progress=False)
    return epochs * len(method.dataset.train) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(None, SETTINGS)
    template, _ = build_split_model(cfg.model, load_dataset(cfg.data).spec, cfg.seed)
    shapes = expected_shapes(template, load_dataset(cfg.data).spec, cfg.train.batch_size)
    # payload per sample each way: tokens of all modalities + one feature per modality, fp32
    payload = 4 * (sum(shapes.tokens.values()) + len(shapes.tokens)) * shapes.width
    print(f"payload per sample and direction (numel x 4 B): {payload} B")
    print("| clients | in-process samples/s | loopback samples/s | loopback / in-process "
          "| wire B/sample up | wire B/sample down | overhead vs payload |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            local = in_process(n, args.epochs)
            net = loopback(n, args.epochs, Path(tmp))
            overhead = (net["up_per_sample"] + net["down_per_sample"]) / (2 * payload) - 1
            print(f"| {n} | {local:.0f} | {net['samples_per_s']:.0f} | {net['samples_per_s'] / local:.2f}x "
                  f"| {net['up_per_sample']:.0f} | {net['down_per_sample']:.0f} | {100 * overhead:.2f} % |", flush=True)


if __name__ == "__main__":
    main()
