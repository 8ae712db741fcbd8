"""What every training method shares: the same model builder, data, partition, seed and task.

A method owns how training is spread over parties and what crosses the network; the run loop
(experiment.run) evaluates, accounts and saves every method the same way.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from mpsl.config import Config
from mpsl.data import Dataset
from mpsl.devices import compile_module, resolve_device
from mpsl.models import ClientModel, ServerModel, WholeModel, build_split_model
from mpsl.parties import adam, client_init_seed
from mpsl.progress import Progress
from mpsl.progress import progress_bar as stage_bar
from mpsl.registry import Registry
from mpsl.runtime import Traffic
from mpsl.runtime.ray_actors import RayParties, check_capacity, connect, slices
from mpsl.tasks import TASKS, Task


@dataclass
class RoundStats:
    """Training loss and accuracy over the samples one epoch (or FL round) actually used."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    steps: int = 0

    def add(self, loss: float, correct: int, count: int, steps: int = 1) -> None:
        self.loss_sum += loss * count
        self.correct += correct
        self.count += count
        self.steps += steps

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.count, 1)


class Method(ABC):
    """One way to train the split model; a round is an epoch (MPSL, centralized) or an FL round."""

    name: ClassVar[str]  # the registry name, also used in file names and tables
    # True when a client runs the whole model (FL, centralized): client compute counts the encoder
    client_runs_encoder: ClassVar[bool] = False
    round_word: ClassVar[str] = "epoch"  # what one train_round is called in logs
    schedule: ClassVar[str] = "steps"  # what a round waits for, for simulated time (mpsl.analysis.wallclock)
    # True when the method takes `world=` and splits its step over server replicas (torchrun); any other method
    # runs whole on every replica, from the same seed to the same result, and only rank 0 writes it
    replicated: ClassVar[bool] = False

    def __init__(self, cfg: Config, dataset: Dataset) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.task: Task = TASKS.get(dataset.spec.task)()
        self.client_template, self.server_template = build_split_model(cfg.model, dataset.spec, cfg.seed,
                                                                         client_init_seed(cfg))

    @classmethod
    def configure(cls, cfg: Config) -> Config:
        """The config this method really trains with (e.g. fedavg-adapter freezes the encoder)."""
        return cfg

    @classmethod
    def grid(cls, cfg: Config) -> list[dict[str, Any]]:
        """The settings `--tune` tries (dotted overrides): one whole model, so both rates scale together."""
        return [{"train.server_lr": cfg.train.server_lr * f, "train.client_lr": cfg.train.client_lr * f}
                for f in cfg.tune.lr_factors]

    clients: Sequence[Any]  # each has .data and .batch_size; methods without clients override the three below

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def samples_per_client(self) -> list[int]:
        return [len(c.data) for c in self.clients]

    def client_batch_size(self) -> int:
        return self.clients[0].batch_size

    def modalities_per_client(self) -> list[list[str]]:
        """What each client holds (fewer than the dataset's with partition.missing_fraction)."""
        return [c.data.modalities for c in self.clients]

    @abstractmethod
    def train_round(self, epoch: int, progress: bool) -> RoundStats: ...

    @abstractmethod
    def global_model(self) -> WholeModel:
        """The one model that is evaluated and checkpointed."""

    def personal_models(self) -> list[ClientModel]:
        """Client models that are never averaged (MPSL's clients); empty where clients are synchronized."""
        return []

    @abstractmethod
    def traffic(self) -> list[Traffic]:
        """Encoded bytes per client so far; empty for a method with no network."""

    def close(self) -> None:
        """Release what the method holds outside this process (Ray actors); called once training is done."""
        return None  # in-process methods hold nothing outside


METHODS: Registry[type[Method]] = Registry("method", config_keys=("methods", "tune.chosen"))
MethodT = TypeVar("MethodT", bound=Method)


def register(cls: type[MethodT]) -> type[MethodT]:
    """Class decorator: register a method under its `name`."""
    METHODS.register(cls.name)(cls)
    return cls


def progress_bar(label: str, total: int, progress: bool) -> Progress:
    """One bar per method and epoch (or round), gone when it is done (the run loop prints the epoch's line)."""
    return stage_bar(desc=label, total=total, unit="step", enabled=progress, transient=True)


def whole_model(method: Method) -> WholeModel:
    """A trainable copy of the unsplit model on the configured device (the templates stay on the host,
    where the cost accounting reads them)."""
    return whole_model_of(method.client_template, method.server_template, method.cfg)


def whole_model_of(client_template: ClientModel, server_template: ServerModel, cfg: Config) -> WholeModel:
    """whole_model from the templates alone: what a Ray actor builds where it runs."""
    model = WholeModel(copy.deepcopy(client_template), copy.deepcopy(server_template))
    model.to(resolve_device(cfg.runtime.device))
    compile_module(model.server.encoder, cfg.runtime.compile)
    return model


def client_actors(cfg: Config, num_clients: int, build: Callable[[list[int]], Callable[[], Any]],
                  server_gpus: float = 0.0) -> tuple[RayParties, list[list[int]]]:
    """runtime.kind=ray: connect, then `ray.actors` actors, actor i holding what build(ids_i) builds for its
    contiguous slice ids_i of the clients (after checking that a server actor on `server_gpus` fits too)."""
    connect(cfg.ray)
    ids = slices(num_clients, cfg.ray.actors)
    check_capacity(cfg.ray, len(ids), server_gpus)
    labels = [f"client actor {i} (clients {s[0]}-{s[-1]})" for i, s in enumerate(ids)]
    return RayParties([build(s) for s in ids], labels, cfg.ray.actor_cpus, 0, cfg.ray.timeout_s), ids


def whole_model_adam(model: WholeModel, cfg: Config) -> torch.optim.Optimizer | None:
    """One optimizer for both halves, each half at the learning rate it has under MPSL."""
    return adam([(model.client.parameters(), cfg.train.client_lr), (model.server.parameters(), cfg.train.server_lr)],
                cfg.train.weight_decay)

