"""`mpsl server`: the MPSL step over real networks, with coordinated checkpoints and resume.

The server hosts the encoder and drives training through `mpsl_step` exactly as the simulation
does; each connected client is a RemoteHandle. Checkpoints are coordinated: every
`deploy.checkpoint_every` steps and after every epoch's end each connected client saves its state for
that (step, epoch), then the server saves its own, each written to a temporary file, flushed and
renamed. The server never saves a non-finite state and keeps its newest `deploy.keep_checkpoints`. A
resumed server tells every client that joins the checkpoint it resumed from and its own session; a
client whose state comes from another session (it trained past that point with the server that
died, or restarted) reloads its checkpoint of that (step, epoch), so both sides continue from the same
point whenever the kill happened.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import torch

from mpsl.checkpoints import save_module
from mpsl.config import Config
from mpsl.data import load_dataset
from mpsl.deploy.common import (
    SWITCH_INTERVAL,
    Checkpoints,
    NetworkThread,
    checkpoint_dir,
    expected_shapes,
    finite_state,
    limits,
    load_state,
    log_to_stderr,
    report,
)
from mpsl.errors import ClientUnavailable, MpslError
from mpsl.models import build_split_model
from mpsl.parties import split_server
from mpsl.protocol import Codec, SplitServer, mpsl_step
from mpsl.registry import check_choices
from mpsl.runtime.network import mpsl_pb2 as pb
from mpsl.runtime.network import mpsl_pb2_grpc as pb_grpc
from mpsl.runtime.network.address import with_default_port, with_port
from mpsl.runtime.network.events import (
    Checkpoint,
    Contained,
    Dropped,
    EpochEnd,
    Finished,
    Insecure,
    Listening,
    NoStep,
    Resumed,
    Skipped,
    Step,
    Waiting,
)
from mpsl.runtime.network.security import AUTH_KEY, channel_credentials, load_tokens, server_credentials
from mpsl.runtime.network.service import Hub, RemoteHandle, SplitLearningService, concurrent_map, grpc_options


class TrainingLoop:
    """The server's training loop: epochs of MPSL steps over the connected clients."""

    def __init__(self, cfg: Config, server: SplitServer, hub: Hub, loop: asyncio.AbstractEventLoop,
                 out_dir: Path, state: dict[str, Any] | None) -> None:
        self.cfg, self.server, self.hub, self.loop, self.out_dir = cfg, server, hub, loop, out_dir
        self.epoch = 0 if state is None else int(state["epoch"])
        self.step = 0 if state is None else int(state["step"])
        self.resumed = (-1, 0) if state is None else (self.step, self.epoch)  # the checkpoint resumed from
        self.session = uuid.uuid4().hex  # this process: clients that trained with another one roll back
        self.checkpoints = Checkpoints(out_dir, cfg.deploy.keep_checkpoints)
        self.stop = threading.Event()
        self.samples, self.busy = 0, 0.0  # trained samples and seconds spent in steps, for the final log line

    def welcome(self) -> pb.Welcome:
        step, epoch = self.resumed
        return pb.Welcome(epoch=self.epoch, step=self.step, resume_step=step, resume_epoch=epoch,
                          wire_dtype=self.cfg.deploy.wire_dtype, session=self.session)

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
                loss_sum, correct, count = 0.0, 0, 0  # the clients' epoch metrics, summed
                for h in self._handles():
                    try:
                        metrics = h.end_epoch()
                    except ClientUnavailable as exc:
                        report(Dropped(h.client_id, str(exc)))
                        continue
                    loss_sum += metrics.loss_sum
                    correct += metrics.correct
                    count += metrics.count
                report(EpochEnd(self.epoch + 1, self.step, loss_sum / count if count else None,
                                correct / count if count else None))
                self.epoch += 1
                self._checkpoint(fan_out)
        if self.step == self.resumed[0] and self._participants() is None:  # resumed at the end: tell the clients
            return
        self.progress("finished")
        save_module(self.server.model, self.out_dir / "server.safetensors")
        for h in self._handles():
            h.finish()
        report(Finished(self.step, self.samples, self.busy, str(self.out_dir / "server.safetensors")))

    def _participants(self) -> list[RemoteHandle] | None:
        """The connected clients once there are deploy.min_participants of them; None if stopped meanwhile."""
        waiting = False
        while not self.stop.is_set():
            handles = self._handles()
            if len(handles) >= self.cfg.deploy.min_participants:
                return handles
            if not waiting:
                report(Waiting(len(handles), self.cfg.deploy.min_participants))
                waiting = True
            self.progress("waiting")
            time.sleep(0.2)
        return None

    def _epoch(self, fan_out: Any) -> None:
        while (handles := self._participants()) is not None:
            self.progress("training")
            for h in handles:
                if h.epoch != self.epoch:
                    try:
                        h.start_epoch(self.epoch)
                    except ClientUnavailable as exc:
                        report(Dropped(h.client_id, str(exc)))
            active = [h for h in handles if h.epoch == self.epoch and not h.exhausted]
            if not active:
                if all(h.exhausted for h in handles):
                    return
                continue
            started = time.perf_counter()
            before = [(h.traffic.up, h.traffic.down) for h in active]
            result = mpsl_step(self.server, active, self.step, fan_out)
            if result is None:
                continue
            for h in active:
                if (reason := result.contained.get(h.client_id)) is not None:
                    report(Contained(h.client_id, self.step, reason))
                    h.refuse(reason)
            if result.skipped is not None:
                report(Skipped(self.step, result.skipped))
                continue
            if not result.stepped:
                report(NoStep(self.step, tuple(result.dropped)))
                continue
            self.step += 1
            self.samples += result.count
            self.busy += time.perf_counter() - started
            report(Step(step=self.step, epoch=self.epoch + 1, participants=tuple(result.client_ids),
                        dropped=tuple(result.dropped), samples=result.count, loss=result.loss,
                        bytes_up=sum(h.traffic.up - b[0] for h, b in zip(active, before, strict=True)),
                        bytes_down=sum(h.traffic.down - b[1] for h, b in zip(active, before, strict=True)),
                        seconds=time.perf_counter() - started))
            if self.step % self.cfg.deploy.checkpoint_every == 0:
                self._checkpoint(fan_out)

    def _checkpoint(self, fan_out: Any) -> None:
        """Clients first, then the server: a resumed server always finds its (step, epoch) on the clients."""
        handles = self._handles()

        def save(h: RemoteHandle) -> None:
            try:
                h.checkpoint(self.step, self.epoch)
            except ClientUnavailable as exc:
                report(Dropped(h.client_id, str(exc)))

        fan_out(save, handles)
        state = {"server": self.server.state_dict(), "epoch": self.epoch, "step": self.step,
                 "rng": torch.get_rng_state()}
        if not finite_state(state):  # the guard should make this unreachable; never overwrite good state with it
            kept = self.checkpoints.newest()
            raise MpslError(f"the server's state is not finite at step {self.step}: not saved; its newest good "
                            f"checkpoint is {kept[0] if kept else 'none'} (restart with --resume)")
        path = self.checkpoints.save(state, self.step, self.epoch)
        report(Checkpoint(self.step, self.epoch + 1, str(path)))


class ServerApp:
    """Everything `mpsl server` runs: the SplitServer, the gRPC service and the training loop."""

    def __init__(self, cfg: Config, listen: str, resume: bool, tokens_file: str | None,
                 tls: tuple[str, str] | None, client_ca: str | None = None, public_status: bool = False) -> None:
        check_choices(cfg)
        dataset = load_dataset(cfg.data, cfg.progress)  # for the model's input shapes; the server trains on no data
        client_template, server_model = build_split_model(cfg.model, dataset.spec, cfg.seed)
        self.server = split_server(server_model, cfg)
        self.out_dir = checkpoint_dir(cfg, "server")
        self.cfg = cfg
        state = self._resume_state() if resume else None
        if state is not None:
            self.server.load_state_dict(state["server"])
            torch.set_rng_state(state["rng"])
            report(Resumed(int(state["step"]), int(state["epoch"]) + 1))
        max_batch = cfg.deploy.max_client_batch or cfg.train.batch_size
        self.expected = expected_shapes(client_template, dataset.spec, max_batch, self.server.guard)
        self.limits = limits(cfg, self.expected)
        self.cfg, self.listen, self.state, self.tls = cfg, with_default_port(listen), state, tls
        if client_ca and not tls:
            raise MpslError("--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked in TLS")
        self.client_ca, self.public_status = client_ca, public_status
        self.tokens = load_tokens(tokens_file) if tokens_file else None
        self.hub = Hub()

    def _resume_state(self) -> dict[str, Any]:
        """The newest checkpoint that loads and is finite (an older one if the newest is damaged)."""
        saved = Checkpoints(self.out_dir, self.cfg.deploy.keep_checkpoints).newest()
        if not saved:
            raise MpslError(f"--resume: no checkpoint (state-<step>-<epoch>.pt) in {self.out_dir}")
        problems = []
        for path in saved:
            try:
                state = load_state(path)
            except MpslError as exc:
                problems.append(str(exc))
                continue
            if finite_state(state):
                return state
            problems.append(f"{path} holds non-finite values")
        raise MpslError(f"--resume: no usable checkpoint in {self.out_dir}: {'; '.join(problems)}")

    async def start(self) -> None:
        self.trainer = TrainingLoop(self.cfg, self.server, self.hub, asyncio.get_running_loop(), self.out_dir,
                                    self.state)
        self.trainer.progress("waiting")
        service = SplitLearningService(self.hub, self.tokens, self.cfg.num_clients, Codec(self.cfg.deploy.wire_dtype),
                                       self.expected, self.limits, self.trainer.welcome, report,
                                       public_status=self.public_status)
        self.service = service
        self.grpc_server = grpc.aio.server(options=grpc_options(self.limits))
        pb_grpc.add_SplitLearningServicer_to_server(service, self.grpc_server)
        port = (self.grpc_server.add_secure_port(self.listen, server_credentials(*self.tls, self.client_ca))
                if self.tls else self.grpc_server.add_insecure_port(self.listen))
        if port == 0:
            raise MpslError(f"--listen {self.listen}: cannot bind that address")
        self.address = with_port(self.listen, port)  # the real port, also when --listen asked for port 0
        await self.grpc_server.start()
        report(Listening(address=self.address, tls="mutual" if self.client_ca else "on" if self.tls else "off",
                         auth="tokens" if self.tokens else "none (any client may join)", clients=self.cfg.num_clients,
                         max_frame_bytes=self.limits.max_frame_bytes))
        if self.tokens is None:
            report(Insecure("no --tokens: any peer that reaches this port can join as any free client id, send it "
                            "data and read Status; use --tokens (and TLS) outside a trusted network"))

    async def stop(self) -> None:
        self.trainer.stop.set()
        await self.grpc_server.stop(grace=1.0)


def serve(cfg: Config, listen: str, resume: bool, tokens_file: str | None, tls: tuple[str, str] | None,
          client_ca: str | None = None, public_status: bool = False, log_format: str = "text") -> None:
    """Blocks until training is finished: gRPC on a network thread, the training loop on this one."""
    log_to_stderr(log_format)
    sys.setswitchinterval(SWITCH_INTERVAL)
    runtime = ServerApp(cfg, listen, resume, tokens_file, tls, client_ca, public_status)
    network = NetworkThread()
    try:
        network.run(runtime.start())
        runtime.trainer.run()
        time.sleep(0.5)  # let the Finish messages go out
    finally:
        network.run(runtime.stop())
        network.close()


async def status(target: str, ca: str | None, token: str | None = None,
                 client_cert: tuple[str, str] | None = None) -> dict[str, Any]:
    """The server's progress and connected clients, as `mpsl status` prints them; a server with tokens
    answers only a caller presenting one of them, unless it runs with --public-status."""
    if client_cert and not ca:
        raise MpslError("--tls-cert and --tls-key need --tls-ca: client certificates are presented in TLS")
    target = with_default_port(target)
    channel = (grpc.aio.secure_channel(target, channel_credentials(ca, *(client_cert or (None, None)))) if ca
               else grpc.aio.insecure_channel(target))
    metadata = [(AUTH_KEY, f"Bearer {token}")] if token else []
    try:
        reply = await pb_grpc.SplitLearningStub(channel).Status(pb.StatusRequest(), timeout=10, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        raise MpslError(f"no status from {target}: {exc.code().name}: {exc.details()}") from None
    finally:
        await channel.close()
    return json.loads(reply.json)
