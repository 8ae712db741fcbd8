"""Server replicas with torch.distributed: K processes, one server copy each, one step together.

`torchrun --nproc-per-node K -m mpsl run ...` starts K processes; torchrun tells each its RANK, WORLD_SIZE
and LOCAL_RANK. Each rank builds the same clients and server from the same seeds, runs the MPSL step for its
share of the clients (client k belongs to rank k mod K) and joins two sums per step (mpsl.protocol.world): the
step's totals (B, B', loss, hits: a few floats) and the encoder's gradients (one message per dtype, the size
of the trainable parameters). Every rank then takes the same optimizer step, so the replicas stay equal.

The control messages (config check, totals) go through gloo on the host; gradients and client weights go
through NCCL on CUDA (runtime.backend=nccl, or auto with a CUDA device) or gloo on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mpsl.config import Config, to_dict
from mpsl.devices import resolve_device
from mpsl.errors import ConfigError

LAUNCHER = "torchrun --nproc-per-node K"  # named in errors: how replicas are started


def replica_count() -> int:
    """How many server replicas this process was started as one of (torchrun's WORLD_SIZE; 1 without it)."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"WORLD_SIZE={value!r}: expected a positive integer (set by {LAUNCHER})")
    return int(value)


def replica_share(rank: int, size: int, num_clients: int) -> list[int]:
    """The client indices rank `rank` of `size` runs: k with k mod size == rank (round robin, so ranks get
    clients of every partition size)."""
    return list(range(rank, num_clients, size))


def owner(client: int, size: int) -> int:
    """The rank that runs client index `client`."""
    return client % size


def backend_for(backend: str, device: torch.device) -> str:
    """runtime.backend resolved for this rank's device: nccl needs CUDA; auto is nccl on CUDA, else gloo."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"runtime.backend: nccl needs a CUDA device, but runtime.device resolves to {device}; "
                          "use runtime.backend=gloo (or auto) on the CPU")
    return backend


def refuse_replicas(command: str) -> None:
    """Commands that run as one process only: under torchrun with several ranks, one clear error."""
    size = replica_count()
    if size > 1:
        raise ConfigError(f"{command} runs as one process, but {LAUNCHER} started {size}: the gRPC server has no "
                          "replicas yet (README: Scaling out); start it with plain `mpsl server`")


def check_replicas(cfg: Config, size: int) -> None:
    """Setups that cannot run as `size` replicas, refused before any process group is started."""
    if size > cfg.num_clients:
        raise ConfigError(f"{LAUNCHER}: {size} server replicas but num_clients={cfg.num_clients}; every replica "
                          "runs a share of each step's clients, so start at most num_clients replicas")
    if size > 1 and cfg.runtime.device.startswith("cuda:"):
        raise ConfigError(f"runtime.device: {cfg.runtime.device} would put all {size} replicas on one GPU; use cuda "
                          "or auto (rank r then uses the GPU of its LOCAL_RANK)")
    if size > 1 and cfg.runtime.device == "mps":
        raise ConfigError("runtime.device: mps has no torch.distributed backend; server replicas run on cpu or cuda")


def config_digest(cfg: Config, backend: str, device: torch.device) -> int:
    """A 63-bit hash of the resolved config, the backend and the device type: equal on every rank, or the ranks
    would train different things."""
    text = json.dumps({"config": to_dict(cfg), "backend": backend, "device": device.type}, sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


@dataclass
class TorchWorld:
    """This process's place among the server replicas, and the sums the step needs (mpsl.protocol.world)."""

    rank: int
    size: int
    device: torch.device
    backend: str  # of gradient and weight messages; control messages always go through gloo on the host
    data_group: Any = None  # the NCCL group on CUDA; None: the default (gloo) group

    @property
    def is_main(self) -> bool:
        """Rank 0 writes results, checkpoints and logs; the others stay quiet."""
        return self.rank == 0

    def sum(self, values: Sequence[float]) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)  # [n] on the host
        dist.all_reduce(t)
        return t.tolist()

    def sum_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Sum, not mean: each rank's loss already carries the global weights b_k / B."""
        params = list(params)
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.float64)  # [P]
        dist.all_reduce(present)  # which gradients exist on some rank (Adam skips a parameter without one)
        for p, has in zip(params, present.tolist(), strict=True):
            if has and p.grad is None:
                p.grad = torch.zeros_like(p)
        self._in_buckets([p.grad for p, has in zip(params, present.tolist(), strict=True) if has],
                         lambda flat, group: dist.all_reduce(flat, group=group))

    def broadcast(self, tensors: Sequence[torch.Tensor], src: int) -> None:
        """Every rank's `tensors` take rank `src`'s values, in place."""
        self._in_buckets(list(tensors), lambda flat, group: dist.broadcast(flat, src, group=group))

    def _in_buckets(self, tensors: list[torch.Tensor], op: Any) -> None:
        """One message per (dtype, device): the tensors flattened into one buffer, `op` on it, copied back."""
        buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for t in tensors:
            buckets.setdefault((t.dtype, t.device), []).append(t)
        for (_, device), ts in buckets.items():
            flat = torch.cat([t.detach().reshape(-1) for t in ts])  # [sum numel]
            op(flat, self.data_group if device.type == "cuda" else None)
            for t, piece in zip(ts, flat.split([t.numel() for t in ts]), strict=True):
                t.detach().copy_(piece.view_as(t))  # [numel] -> t's shape

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def start(rank: int, size: int, backend: str, device: torch.device, init_method: str = "env://") -> TorchWorld:
    """Join the process group: gloo for control messages, plus an NCCL group for the tensors on CUDA."""
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=size)
    return TorchWorld(rank, size, device, backend)


def check_same_config(world: TorchWorld, cfg: Config) -> None:
    """All-gather each rank's config digest; any difference is one error on every rank (torchrun ends them all)."""
    mine = torch.tensor([config_digest(cfg, world.backend, world.device)], dtype=torch.int64)
    digests = [torch.zeros_like(mine) for _ in range(world.size)]
    dist.all_gather(digests, mine)
    differ = [r for r, d in enumerate(digests) if int(d) != int(digests[0])]
    if differ:
        raise ConfigError(f"{LAUNCHER}: rank(s) {differ} resolved another config, runtime.backend or device type "
                          f"than rank 0 (this is rank {world.rank}, using {world.backend} on {world.device.type}); "
                          "start every rank with the same config file, overrides and kind of device")


def join(cfg: Config) -> TorchWorld | None:
    """This process's replica world under torchrun (None when it runs alone), checked to agree with the others."""
    size = replica_count()
    if size == 1:
        return None
    check_replicas(cfg, size)
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.runtime.device in ("auto", "cuda") and torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise ConfigError(f"{LAUNCHER}: LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} "
                              "CUDA device(s); start at most one replica per GPU")
        torch.cuda.set_device(local)  # `cuda` and `auto` now mean this rank's GPU
    device = resolve_device(cfg.runtime.device)
    world = start(rank, size, backend_for(cfg.runtime.backend, device), device)
    check_same_config(world, cfg)
    if world.backend == "nccl":
        world.data_group = dist.new_group(backend="nccl")
    return world
