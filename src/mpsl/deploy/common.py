"""What both applications share: the shapes a client may send, frame limits, checkpoint files, the event
log, and the event-loop thread that carries gRPC."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from pathlib import Path
from typing import Any

import torch

from mpsl.config import Config
from mpsl.data import DatasetSpec
from mpsl.errors import MpslError
from mpsl.files import write_atomically
from mpsl.models import ClientModel, example_inputs
from mpsl.protocol.guard import Guard, finite_tensors
from mpsl.protocol.serde import element_bytes
from mpsl.runtime.network.events import LOG_FORMATS, Event, emit
from mpsl.runtime.network.service import Limits
from mpsl.runtime.network.validate import Expected

log = logging.getLogger("mpsl.deploy")
HEADER_SLACK = 64 * 1024  # JSON header of one frame, generously
# The event loop (network) and the training thread share the GIL; at Python's default 5 ms switch
# interval every message hop can wait that long for the other thread, which dominates a small step.
SWITCH_INTERVAL = 1e-4


def log_to_stderr(log_format: str = "text") -> None:
    """The applications' events on stderr, one line each: `event=step step=3 ...` or a JSON object."""
    if log_format not in LOG_FORMATS:
        raise MpslError(f"--log-format {log_format}: unknown (known: {', '.join(LOG_FORMATS)})")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(LOG_FORMATS[log_format]())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def report(event: Event) -> None:
    """Log one of the applications' events (also what the gRPC runtime reports through)."""
    emit(log, event)


def save_state(obj: Any, path: Path) -> None:
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise MpslError(f"checkpoint {path} cannot be read: {str(exc).splitlines()[0]}") from None


class Checkpoints:
    """One party's coordinated checkpoints, `state-<step>-<epoch>.pt`, the newest `keep` of them.

    A checkpoint is named by the step and the server's epoch counter together: the one written after an
    epoch's end has the same step as the one written just before it, but the learning-rate schedules have
    moved on; a resumed server names exactly the one it resumed from, so both sides agree on it."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory, self.keep = directory, keep

    def path(self, step: int, epoch: int) -> Path:
        return self.directory / f"state-{step:09d}-{epoch:04d}.pt"

    def save(self, state: dict[str, Any], step: int, epoch: int) -> Path:
        path = self.path(step, epoch)
        save_state(state, path)
        for old in self.newest()[self.keep:]:
            old.unlink()
        return path

    def newest(self) -> list[Path]:
        """Saved checkpoints, newest (highest step, then epoch) first; file names sort in that order."""
        return sorted(self.directory.glob("state-*-*.pt"), reverse=True)


def finite_state(obj: Any) -> bool:
    """Every floating-point tensor anywhere in a (nested) state dict is finite."""
    return finite_tensors([t for t in _tensors(obj) if t.is_floating_point()])


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def expected_shapes(client: ClientModel, spec: DatasetSpec, max_batch: int, guard: Guard | None = None) -> Expected:
    """Token counts per modality from one meta-device pass of the client template (no compute, no memory);
    the server passes its step guard, so values out of its bounds are refused as they arrive."""
    tokens = copy.deepcopy(client).to("meta").embed(example_inputs(spec))  # m -> [1, T_m, D]
    width = next(iter(tokens.values())).shape[2]
    return Expected({m: t.shape[1] for m, t in tokens.items()}, width, max_batch, guard)


def limits(cfg: Config, expected: Expected) -> Limits:
    """Frame limit from the config (the largest tokens or feature-gradient message a client may send, fp32)
    and the deploy section's bounds on streams, chunks and quarantine."""
    per_sample = sum(expected.tokens.values()) * expected.width
    features = len(expected.tokens) * expected.width
    largest = expected.max_batch * max(per_sample, features) * element_bytes("float32")
    dep = cfg.deploy
    return Limits(dep.step_timeout, int(dep.chunk_mb * 2**20), largest + HEADER_SLACK,
                  max_header_bytes=HEADER_SLACK, min_chunk_bytes=int(dep.min_chunk_kb * 1024),
                  join_timeout=dep.join_timeout, max_streams=dep.max_streams or 2 * cfg.num_clients,
                  max_streams_per_client=dep.max_streams_per_client, quarantine_after=dep.quarantine_after,
                  quarantine_s=dep.quarantine_s, quarantine_max_s=dep.quarantine_max_s)


def checkpoint_dir(cfg: Config, role: str) -> Path:
    return Path(cfg.deploy.checkpoint_dir) if cfg.deploy.checkpoint_dir else Path(cfg.out_dir) / cfg.name / role


class NetworkThread:
    """An asyncio event loop in a background thread: gRPC lives there, so the thread that calls torch for
    the model (the main thread) keeps torch's intra-op thread pool to itself; sharing it with a second
    torch-calling thread costs about a third of the compute on a small machine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="mpsl-network", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        torch.set_num_threads(1)  # per thread: decoding messages here must not wake a second thread pool
        self.loop.run_forever()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
