"""The one builder of the protocol's parties from a config, shared by the simulation and the deployment.

A client built here for a simulation and the same client built on a device by `mpsl client` hold the
same data partition, start from the same weights and draw the same batches.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

from mpsl.config import Config
from mpsl.data import Dataset, SplitData, partition
from mpsl.data.partition import modality_holdings
from mpsl.data.spec import DatasetSpec
from mpsl.devices import compile_module, resolve_device
from mpsl.models import ClientModel, ServerModel, build_split_model
from mpsl.protocol import SplitClient, SplitServer
from mpsl.protocol.guard import Guard, derived_token_bound
from mpsl.protocol.privacy import ClientPrivacy
from mpsl.protocol.world import World
from mpsl.tasks import Task

ParamGroup = tuple[Iterable[torch.nn.Parameter], float]  # parameters and their learning rate


def client_shards(cfg: Config, dataset: Dataset) -> list[SplitData]:
    """Each of num_clients clients holds one partition of the training set, of the modalities it has
    (the same for every method)."""
    parts = partition(dataset.train.labels.numpy(), cfg.num_clients, cfg.partition, cfg.seed)
    holdings = modality_holdings(list(dataset.spec.modalities), cfg.num_clients, cfg.partition, cfg.seed)
    return [dataset.train.subset(torch.from_numpy(p)).only(held) for p, held in zip(parts, holdings, strict=True)]


def client_seed(cfg: Config, k: int) -> int:
    """Client k's data-order seed: the same for client k under every method."""
    return cfg.seed * 1009 + k


def client_init_seed(cfg: Config) -> int:
    """The seed of the clients' starting weights (privacy.client_seed): never part of what the server builds."""
    return cfg.privacy.client_seed if cfg.privacy.client_seed is not None else cfg.seed * 7919 + 104729


def templates(cfg: Config, spec: DatasetSpec) -> tuple[ClientModel, ServerModel]:
    """The client template every client copies (from the client seed) and the server's model (from `seed`)."""
    return build_split_model(cfg.model, spec, cfg.seed, client_init_seed(cfg))


def adam(groups: Iterable[ParamGroup], weight_decay: float) -> torch.optim.Optimizer | None:
    """Adam over the trainable parameters, one learning rate per group; None if nothing trains.

    The fused kernel: an FL client steps its whole trainable model every mini-batch of ceil(B/N)
    samples, where the unfused update costs about as much as the forward and backward.
    """
    param_groups = [{"params": trainable, "lr": lr}
                    for params, lr in groups if (trainable := [p for p in params if p.requires_grad])]
    return torch.optim.Adam(param_groups, weight_decay=weight_decay, fused=True) if param_groups else None


def step_lr(opt: torch.optim.Optimizer | None, cfg: Config) -> torch.optim.lr_scheduler.LRScheduler | None:
    if opt is None:
        return None
    return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.train.lr_step, gamma=cfg.train.lr_gamma)


def split_client(cfg: Config, k: int, shard: SplitData, batch: int, template: ClientModel, task: Task,
                 optimizer: bool = True) -> SplitClient:
    """Client k as every runtime builds it: a copy of the template on the configured device, its own Adam, its
    own data order (without the Adam when batched clients step every client's parameters at once)."""
    model = copy.deepcopy(template).to(resolve_device(cfg.runtime.device))
    opt = adam([(model.parameters(), cfg.train.client_lr)], cfg.train.weight_decay) if optimizer else None
    return SplitClient(k, model, shard, task, batch, opt, step_lr(opt, cfg), client_seed(cfg, k), cfg.runtime.prefetch,
                       client_privacy(cfg, k))


def client_privacy(cfg: Config, k: int) -> ClientPrivacy:
    """What client k does to its messages (the config's `privacy` section); its noise is seeded from the
    clients' seed, which the server does not need, not from `seed`, which it has."""
    p = cfg.privacy
    return ClientPrivacy(p.step_metrics, p.grad_clip, p.grad_noise, p.token_clip, p.token_noise, p.nopeek,
                         noise_seed=client_init_seed(cfg) * 1013 + k)


def split_server(model: ServerModel, cfg: Config, world: World | None = None) -> SplitServer:
    """The one server party: the encoder side on the configured device, one Adam, the configured precision;
    with `world`, one of its replicas."""
    model = model.to(resolve_device(cfg.runtime.device))
    compile_module(model.encoder, cfg.runtime.compile)
    opt = adam([(model.parameters(), cfg.train.server_lr)], cfg.train.weight_decay)
    return SplitServer(model, opt, step_lr(opt, cfg), cfg.model.precision, guard(cfg, model.encoder.width), world)


def guard(cfg: Config, width: int) -> Guard:
    """The server's bounds on what one client may put into a step (config `guard`)."""
    g = cfg.guard
    return Guard(g.max_token_abs if g.max_token_abs is not None else derived_token_bound(width), g.max_grad_abs,
                 g.clip_to_median)
