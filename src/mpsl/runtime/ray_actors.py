"""Ray runtime: simulated parties live in Ray actors and the step's messages travel as Ray calls.

A `PartyHost` actor builds one object where it runs (a slice of clients, a server loop) from a function it is
sent, then runs calls on it. Many clients share one actor, so 1,000 clients are `ray.actors` processes, not
1,000. `RayClientGroup` is the ClientGroup the step talks to: each verb is one call per client actor, made
concurrently, the answers merged in client order. The math stays in the parties the actors hold and in
mpsl_step; bytes are counted by those parties as in-process (from shapes), so the numbers do not change.

Ray is optional (`pip install 'mpsl[ray]'`): this module imports it only when a Ray run starts.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

from mpsl.config import RayConfig
from mpsl.errors import ClientUnavailable, ConfigError, MpslError
from mpsl.protocol.group import Offer
from mpsl.protocol.messages import CutGrad, FeatureGrad, Features

RAY_EXTRA = "pip install 'mpsl[ray]'"
R = TypeVar("R")


def import_ray() -> Any:
    """The ray module, or one clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise MpslError(f"runtime.kind=ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def connect(cfg: RayConfig) -> None:
    """Join the cluster at ray.address, or start a Ray instance in this process when it is null; a process
    already connected (a test, a notebook) keeps its connection."""
    ray = import_ray()
    if ray.is_initialized():
        return
    try:
        if cfg.address is None:
            ray.init(num_cpus=cfg.local_cpus, include_dashboard=False, log_to_driver=True)
        else:
            _reachable(cfg.address)  # Ray itself retries an unreachable host:port for minutes
            ray.init(address=cfg.address, log_to_driver=True)
    except ConnectionError as exc:
        raise ConfigError(f"ray.address={cfg.address}: no Ray cluster there ({_first_line(exc)}); start one with "
                          "`ray start --head`, or set ray.address=null to start Ray in this process") from None


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError unless a host:port address accepts a TCP connection (auto: Ray looks it up)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port}: {exc.strerror or exc}") from None


def check_capacity(cfg: RayConfig, actors: int, server_gpus: float = 0.0) -> None:
    """Refuse, before any actor waits forever to be placed, what the cluster cannot hold: `actors` client
    actors and a server actor on `server_gpus` GPUs."""
    have = import_ray().cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if actors * cfg.actor_cpus > cpus:
        raise ConfigError(f"ray.actors: {actors} client actors x ray.actor_cpus={cfg.actor_cpus:g} need "
                          f"{actors * cfg.actor_cpus:g} CPUs, the Ray cluster has {cpus:g}")
    if server_gpus > gpus:
        raise ConfigError(f"ray.server_gpus: the server actor asks for {server_gpus:g} GPUs, "
                          f"the Ray cluster has {gpus:g}")


def slices(n: int, actors: int) -> list[list[int]]:
    """Clients 0..n-1 cut into at most `actors` contiguous, near-equal slices (so merging the actors' answers
    in actor order keeps client order)."""
    k = max(1, min(actors, n))
    bounds = [n * i // k for i in range(k + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(k)]


class PartyHost:
    """The actor: one object built in place, and calls run on it (fn(party, *args))."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self.party = build()

    def call(self, fn: Callable[..., R], *args: Any) -> R:
        return compact(fn(self.party, *args))


def invoke(party: Any, verb: str, *args: Any) -> Any:
    """A method of the party by name: how a ClientGroup verb reaches the group an actor holds."""
    return getattr(party, verb)(*args)


def compact(value: Any) -> Any:
    """`value` as it travels between actors: every tensor detached, on the host (as on the wire: an actor
    without a GPU cannot unpickle a CUDA tensor; each receiver moves it to its device) and, when it views a
    larger storage, copied to just its elements.

    Pickling a view sends its whole storage: a client's slice of a stacked [N, b, T, D] batch would carry all N
    clients' tokens, N times per step. Dicts, lists, tuples and (message) dataclasses are rebuilt, anything
    else kept.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        own = value.numel() * value.element_size()
        return value.clone() if value.untyped_storage().nbytes() > own else value
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, list | tuple) and type(value) in (list, tuple):
        return type(value)(compact(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: compact(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value


class RayParties:
    """Actors hosting one party each, and the one place their answers are awaited (with a timeout, and a clear
    error when an actor died instead of a hang)."""

    def __init__(self, builds: Sequence[Callable[[], Any]], labels: Sequence[str], cpus: float, gpus: float,
                 timeout: float) -> None:
        ray = import_ray()
        remote = ray.remote(PartyHost)
        self.labels = list(labels)
        self.timeout = timeout
        self.actors = [remote.options(num_cpus=cpus, num_gpus=gpus, max_restarts=0).remote(build)
                       for build in builds]
        self.gather([a.call.remote(_ready) for a in self.actors], self.labels)  # surface a failed build here

    def call(self, fn: Callable[..., R], *args: Any) -> list[R]:
        """fn(party, *args) in every actor concurrently; the answers in actor order."""
        return self.call_each(fn, {i: args for i in range(len(self.actors))})

    def call_each(self, fn: Callable[..., R], args: Mapping[int, tuple[Any, ...]]) -> list[R]:
        """fn(party, *args[i]) in actor i, for the actors in `args`, concurrently; the answers in that order."""
        refs = [self.actors[i].call.remote(fn, *compact(a)) for i, a in args.items()]
        return self.gather(refs, [self.labels[i] for i in args])

    def gather(self, refs: list[Any], labels: list[str]) -> list[Any]:
        ray = import_ray()
        try:
            return ray.get(refs, timeout=self.timeout)
        except ray.exceptions.GetTimeoutError:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            late = [label for ref, label in zip(refs, labels, strict=True) if ref not in ready]
            raise MpslError(f"{', '.join(late)}: no answer within ray.timeout_s={self.timeout:g} s") from None
        except ray.exceptions.RayActorError as exc:
            raise MpslError(f"a Ray actor of {', '.join(labels)} died: {_first_line(exc)}") from None
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, MpslError):  # the party's own one-line error (a ProtocolError...), as in-process
                raise exc.cause from None
            raise  # a bug: Ray's error carries the actor's traceback

    def close(self) -> None:
        ray = import_ray()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


class RayClientGroup:
    """The ClientGroup verbs over client actors, each holding a ClientGroup of a contiguous slice of clients."""

    def __init__(self, parties: RayParties, ids: Sequence[Sequence[int]]) -> None:
        self.parties = parties
        self.ids = [list(s) for s in ids]
        self._owner = {cid: i for i, s in enumerate(self.ids) for cid in s}

    def start_epoch(self, epoch: int) -> None:
        self.parties.call(invoke, "start_epoch", epoch)

    def embed(self, step: int) -> dict[int, Offer]:
        merged: dict[int, Offer] = {}
        for offers in self.parties.call(invoke, "embed", step):
            merged.update(offers)  # actor order = client order
        return merged

    def features(self, msgs: Mapping[int, Features]) -> dict[int, FeatureGrad | ClientUnavailable]:
        return self._addressed("features", msgs)

    def cut_grad(self, msgs: Mapping[int, CutGrad]) -> dict[int, ClientUnavailable | None]:
        return self._addressed("cut_grad", msgs)

    def end_epoch(self) -> dict[int, Any]:
        """Every actor's clients step their schedules; their epoch reports (EpochMetrics), keyed by client."""
        return {cid: report for part in self.parties.call(invoke, "end_epoch") for cid, report in part.items()}

    def _addressed(self, verb: str, msgs: Mapping[int, Any]) -> dict[int, Any]:
        """One call per actor with the messages of its clients; the answers keyed as the messages were."""
        per_actor: dict[int, dict[int, Any]] = {}
        for cid, msg in msgs.items():
            if cid not in self._owner:
                raise MpslError(f"no client actor holds client {cid}")
            per_actor.setdefault(self._owner[cid], {})[cid] = msg
        answers: dict[int, Any] = {}
        for reply in self.parties.call_each(invoke, {i: (verb, per_actor[i]) for i in sorted(per_actor)}):
            answers.update(reply)
        return {cid: answers[cid] for cid in msgs}


def _ready(party: Any) -> None:
    """Nothing: answering at all means the party was built."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
