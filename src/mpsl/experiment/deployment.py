"""`mpsl server` and `mpsl client`: the MPSL step over real networks, with checkpoints and resume.

The server hosts the encoder and drives training through `mpsl_step` exactly as the simulation
does; each connected client is a RemoteHandle. Clients dial out, train their tokenizers (and head)
on local data and never send labels. Checkpoints are coordinated: every `deploy.checkpoint_every`
steps each connected client saves its state for that step, then the server saves its own, each
written to a temporary file and renamed. A resumed server tells clients the step it resumed from,
and they reload their checkpoint of that step.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import torch

from mpsl.config import Config, client_batch_size, client_batch_sizes
from mpsl.data import DatasetSpec, load_dataset
from mpsl.errors import ClientUnavailable, MpslError
from mpsl.experiment.checkpoints import save_module
from mpsl.experiment.files import write_atomically
from mpsl.experiment.methods.base import client_shards
from mpsl.experiment.methods.split_learning import split_client, split_server
from mpsl.models import ClientModel, build_split_model, example_inputs
from mpsl.protocol import Codec, SplitClient, SplitServer, mpsl_step
from mpsl.runtime.network import mpsl_pb2 as pb
from mpsl.runtime.network import mpsl_pb2_grpc as pb_grpc
from mpsl.runtime.network.client import run_edge_client
from mpsl.runtime.network.security import channel_credentials, load_tokens, read_secret, server_credentials
from mpsl.runtime.network.server import Hub, Limits, RemoteHandle, SplitLearningService, concurrent_map, grpc_options
from mpsl.runtime.network.validate import Expected
from mpsl.tasks import TASKS

log = logging.getLogger("mpsl.deploy")
HEADER_SLACK = 64 * 1024  # JSON header of one frame, generously
# The event loop (network) and the training thread share the GIL; at Python's default 5 ms switch
# interval every message hop can wait that long for the other thread, which dominates a small step.
SWITCH_INTERVAL = 1e-4


def _log_to_stderr() -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _write_atomic(obj: Any, path: Path) -> None:
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def _load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise MpslError(f"checkpoint {path} cannot be read: {str(exc).splitlines()[0]}") from None


def expected_shapes(client: ClientModel, spec: DatasetSpec, max_batch: int) -> Expected:
    """Token counts per modality from one meta-device pass of the client template (no compute, no memory)."""
    tokens = copy.deepcopy(client).to("meta").embed(example_inputs(spec))  # m -> [1, T_m, D]
    width = next(iter(tokens.values())).shape[2]
    return Expected({m: t.shape[1] for m, t in tokens.items()}, width, max_batch)


def limits(cfg: Config, expected: Expected) -> Limits:
    """Frame limit from the config: the largest tokens or feature-gradient message a client may send, fp32."""
    per_sample = sum(expected.tokens.values()) * expected.width
    features = len(expected.tokens) * expected.width
    largest = expected.max_batch * max(per_sample, features) * 4
    return Limits(cfg.deploy.step_timeout, int(cfg.deploy.chunk_mb * 2**20), largest + HEADER_SLACK)


def _checkpoint_dir(cfg: Config, role: str) -> Path:
    return Path(cfg.deploy.checkpoint_dir) if cfg.deploy.checkpoint_dir else Path(cfg.out_dir) / cfg.name / role


# ---------------------------------------------------------------------------------------------
# server


class Trainer:
    """The server's training loop (a worker thread): epochs of MPSL steps over the connected clients."""

    def __init__(self, cfg: Config, server: SplitServer, hub: Hub, loop: asyncio.AbstractEventLoop,
                 out_dir: Path, state: dict[str, Any] | None) -> None:
        self.cfg, self.server, self.hub, self.loop, self.out_dir = cfg, server, hub, loop, out_dir
        self.epoch = 0 if state is None else int(state["epoch"])
        self.step = 0 if state is None else int(state["step"])
        self.resumed_step = -1 if state is None else self.step
        self.stop = threading.Event()
        self.samples, self.busy = 0, 0.0  # trained samples and seconds spent in steps, for the final log line

    def welcome(self) -> pb.Welcome:
        resume = self.resumed_step if self.step == self.resumed_step else -1  # only until training moves on
        return pb.Welcome(epoch=self.epoch, step=self.step, resume_step=resume, wire_dtype=self.cfg.deploy.wire_dtype)

    def _handles(self) -> list[RemoteHandle]:
        return [RemoteHandle(c, self.loop) for c in self.hub.connected()]

    def progress(self, state: str) -> None:
        self.hub.progress = {"state": state, "epoch": self.epoch + 1, "epochs": self.cfg.train.epochs,
                             "step": self.step, "min_participants": self.cfg.deploy.min_participants}

    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=max(self.cfg.num_clients, 1)) as pool:
            fan_out = concurrent_map(pool)
            while self.epoch < self.cfg.train.epochs and not self.stop.is_set():
                self._epoch(fan_out)
                if self.stop.is_set():
                    return
                self.server.end_epoch()
                for h in self._handles():
                    try:
                        h.end_epoch()
                    except ClientUnavailable as exc:
                        log.info(f"event=dropped client={h.client_id} reason={exc}")
                log.info(f"event=epoch_end epoch={self.epoch + 1} step={self.step}")
                self.epoch += 1
                self._checkpoint(fan_out)
        self.progress("finished")
        save_module(self.server.model, self.out_dir / "server.safetensors")
        for h in self._handles():
            h.finish()
        log.info(f"event=finished step={self.step} samples={self.samples} step_seconds={self.busy:.3f} "
                 f"model={self.out_dir / 'server.safetensors'}")

    def _epoch(self, fan_out: Any) -> None:
        waiting = False
        while not self.stop.is_set():
            handles = self._handles()
            if len(handles) < self.cfg.deploy.min_participants:
                if not waiting:
                    log.info(f"event=waiting connected={len(handles)} min_participants="
                             f"{self.cfg.deploy.min_participants}")
                    waiting = True
                self.progress("waiting")
                time.sleep(0.2)
                continue
            waiting = False
            self.progress("training")
            for h in handles:
                if h.conn.epoch != self.epoch:
                    try:
                        h.start_epoch(self.epoch)
                    except ClientUnavailable as exc:
                        log.info(f"event=dropped client={h.client_id} reason={exc}")
            active = [h for h in handles if h.conn.epoch == self.epoch and not h.conn.exhausted]
            if not active:
                if all(h.conn.exhausted for h in handles):
                    return
                continue
            started = time.perf_counter()
            before = [(h.traffic.up, h.traffic.down) for h in active]
            result = mpsl_step(self.server, active, self.step, fan_out)
            if result is None:
                continue
            dropped = ",".join(map(str, result.dropped)) or "-"
            if not result.stepped:
                log.info(f"event=no_step step={self.step} dropped={dropped}")
                continue
            self.step += 1
            self.samples += result.count
            self.busy += time.perf_counter() - started
            log.info(f"event=step step={self.step} epoch={self.epoch + 1} "
                     f"participants={','.join(map(str, result.client_ids))} dropped={dropped} "
                     f"samples={result.count} loss={result.loss:.4f} "
                     f"bytes_up={sum(h.traffic.up - b[0] for h, b in zip(active, before, strict=True))} "
                     f"bytes_down={sum(h.traffic.down - b[1] for h, b in zip(active, before, strict=True))} "
                     f"seconds={time.perf_counter() - started:.3f}")
            if self.step % self.cfg.deploy.checkpoint_every == 0:
                self._checkpoint(fan_out)

    def _checkpoint(self, fan_out: Any) -> None:
        """Clients first, then the server: a resumed server always finds its step on the clients."""
        handles = self._handles()

        def save(h: RemoteHandle) -> None:
            try:
                h.checkpoint(self.step)
            except ClientUnavailable as exc:
                log.info(f"event=dropped client={h.client_id} reason={exc}")

        fan_out(save, handles)
        _write_atomic({"server": self.server.state_dict(), "epoch": self.epoch, "step": self.step,
                       "rng": torch.get_rng_state()}, self.out_dir / "server-state.pt")
        log.info(f"event=checkpoint step={self.step} epoch={self.epoch + 1} path={self.out_dir / 'server-state.pt'}")


class ServerRuntime:
    """Everything `mpsl server` runs: the SplitServer, the gRPC service and the training thread."""

    def __init__(self, cfg: Config, listen: str, resume: bool, tokens_file: str | None,
                 tls: tuple[str, str] | None) -> None:
        dataset = load_dataset(cfg.data)  # for the model's input shapes; the server trains on no data
        client_template, server_model = build_split_model(cfg.model, dataset.spec, cfg.seed)
        self.server = split_server(server_model, cfg)
        self.out_dir = _checkpoint_dir(cfg, "server")
        state = self._resume_state() if resume else None
        if state is not None:
            self.server.load_state_dict(state["server"])
            torch.set_rng_state(state["rng"])
            log.info(f"event=resumed step={state['step']} epoch={state['epoch'] + 1}")
        max_batch = cfg.deploy.max_client_batch or cfg.train.batch_size
        self.expected = expected_shapes(client_template, dataset.spec, max_batch)
        self.limits = limits(cfg, self.expected)
        self.cfg, self.listen, self.state, self.tls = cfg, listen, state, tls
        self.tokens = load_tokens(tokens_file) if tokens_file else None
        self.hub = Hub()

    def _resume_state(self) -> dict[str, Any]:
        path = self.out_dir / "server-state.pt"
        if not path.is_file():
            raise MpslError(f"--resume: no checkpoint at {path}")
        return _load(path)

    async def start(self) -> None:
        self.trainer = Trainer(self.cfg, self.server, self.hub, asyncio.get_running_loop(), self.out_dir, self.state)
        self.trainer.progress("waiting")
        service = SplitLearningService(self.hub, self.tokens, self.cfg.num_clients, Codec(self.cfg.deploy.wire_dtype),
                                       self.expected, self.limits, self.trainer.welcome,
                                       lambda line: log.info(f"event={line}"))
        self.grpc_server = grpc.aio.server(options=grpc_options(self.limits))
        pb_grpc.add_SplitLearningServicer_to_server(service, self.grpc_server)
        port = (self.grpc_server.add_secure_port(self.listen, server_credentials(*self.tls)) if self.tls
                else self.grpc_server.add_insecure_port(self.listen))
        if port == 0:
            raise MpslError(f"--listen {self.listen}: cannot bind that address")
        await self.grpc_server.start()
        log.info(f"event=listening address={self.listen} tls={'on' if self.tls else 'off'} "
                 f"auth={'tokens' if self.tokens else 'none (any client may join)'} clients={self.cfg.num_clients} "
                 f"max_frame_bytes={self.limits.max_frame_bytes}")

    async def stop(self) -> None:
        self.trainer.stop.set()
        await self.grpc_server.stop(grace=1.0)


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


def serve(cfg: Config, listen: str, resume: bool, tokens_file: str | None, tls: tuple[str, str] | None) -> None:
    """Blocks until training is finished: gRPC on a network thread, the training loop on this one."""
    _log_to_stderr()
    sys.setswitchinterval(SWITCH_INTERVAL)
    runtime = ServerRuntime(cfg, listen, resume, tokens_file, tls)
    network = NetworkThread()
    try:
        network.run(runtime.start())
        runtime.trainer.run()
        time.sleep(0.5)  # let the Finish messages go out
    finally:
        network.run(runtime.stop())
        network.close()


async def status(target: str, ca: str | None) -> dict[str, Any]:
    import json

    channel = grpc.aio.secure_channel(target, channel_credentials(ca)) if ca else grpc.aio.insecure_channel(target)
    try:
        reply = await pb_grpc.SplitLearningStub(channel).Status(pb.StatusRequest(), timeout=10)
    except grpc.aio.AioRpcError as exc:
        raise MpslError(f"no status from {target}: {exc.code().name}: {exc.details()}") from None
    finally:
        await channel.close()
    return json.loads(reply.json)


# ---------------------------------------------------------------------------------------------
# client


class DeviceClient:
    """A SplitClient with its own checkpoints: the last two coordinated steps, and its final model."""

    def __init__(self, client: SplitClient, out_dir: Path) -> None:
        self.client = client
        self.client_id = client.client_id
        self.out_dir = out_dir

    @property
    def epoch(self) -> int | None:
        return self.client.epoch

    def start_epoch(self, epoch: int) -> None:
        self.client.start_epoch(epoch)

    def embed(self, step: int):
        return self.client.embed(step)

    def features(self, msg):
        return self.client.features(msg)

    def cut_grad(self, msg) -> None:
        self.client.cut_grad(msg)

    def end_epoch(self) -> None:
        self.client.end_epoch()

    def samples(self) -> int:
        return len(self.client.data)

    def _path(self, step: int) -> Path:
        return self.out_dir / f"state-{step:09d}.pt"

    def save(self, step: int) -> None:
        _write_atomic({"step": step, **self.client.state_dict()}, self._path(step))
        for old in sorted(self.out_dir.glob("state-*.pt"))[:-2]:  # keep the last two
            old.unlink()

    def restore(self, step: int) -> bool:
        path = self._path(step)
        if not path.is_file():
            return False
        self.client.load_state_dict(_load(path))
        log.info(f"event=restored client={self.client_id} step={step}")
        return True

    def restore_latest(self) -> int | None:
        saved = sorted(self.out_dir.glob("state-*.pt"))
        if not saved:
            return None
        state = _load(saved[-1])
        self.client.load_state_dict(state)
        return int(state["step"])

    def finish(self) -> None:
        save_module(self.client.model, self.out_dir / "client.safetensors")


async def run_client(cfg: Config, target: str, client_id: int, resume: bool, token_file: str | None,
                     ca: str | None, retry_for: float, whole_split: bool = False) -> None:
    _log_to_stderr()
    sys.setswitchinterval(SWITCH_INTERVAL)
    if not 0 <= client_id < cfg.num_clients:
        raise MpslError(f"--client-id {client_id}: must be in 0..{cfg.num_clients - 1} (num_clients)")
    dataset = load_dataset(cfg.data)
    if whole_split:  # the device's own data: everything its loader returns, batch ceil(B / N)
        shard, batch = dataset.train, client_batch_size(cfg)
    else:  # simulating num_clients devices on one dataset: this client's partition of it
        shards = client_shards(cfg, dataset)
        shard, batch = shards[client_id], client_batch_sizes(cfg, [len(s) for s in shards])[client_id]
    template, _ = build_split_model(cfg.model, dataset.spec, cfg.seed)
    task = TASKS.get(dataset.spec.task)()
    device = DeviceClient(split_client(cfg, client_id, shard, batch, template, task),
                          _checkpoint_dir(cfg, f"client-{client_id}"))
    if resume:
        step = device.restore_latest()
        log.info(f"event=resumed client={client_id} step={step if step is not None else 'none (no checkpoint)'}")
    expected = expected_shapes(template, dataset.spec, cfg.deploy.max_client_batch or cfg.train.batch_size)
    await run_edge_client(device, target, read_secret(token_file) if token_file else None,
                          channel_credentials(ca) if ca else None, Codec(cfg.deploy.wire_dtype),
                          limits(cfg, expected), retry_for, lambda line: log.info(f"client={client_id} {line}"))
