"""Plain whole-model training on one party's data, and the `centralized` baseline built on it."""

from __future__ import annotations

import torch

from mpsl.config import Config, RuntimeConfig
from mpsl.data import Dataset, SplitData
from mpsl.data.loader import batches
from mpsl.devices import autocast, grad_scaler, module_device
from mpsl.experiment.methods.base import (
    Method,
    RoundStats,
    progress_bar,
    register,
    whole_model,
    whole_model_adam,
)
from mpsl.models import WholeModel
from mpsl.parties import client_seed, step_lr
from mpsl.progress import Progress
from mpsl.runtime import Traffic
from mpsl.tasks import Task


def local_epoch(model: WholeModel, opt: torch.optim.Optimizer | None, data: SplitData, batch_size: int,
                order: torch.Generator, task: Task, runtime: RuntimeConfig, precision: str,
                bar: Progress | None = None) -> RoundStats:
    """One pass over `data` in mini-batches: forward, mean loss, backward, step. No cut, no network.

    The same precision as the MPSL server (`model.precision`), so the comparison stays fair; fp16 gets a
    gradient scaler for this pass.
    """
    stats = RoundStats()
    model.train()
    device = module_device(model)
    scaler = grad_scaler(device, precision) if opt is not None else None
    permutation = torch.randperm(len(data), generator=order)  # [n]
    for batch in batches(data, permutation, batch_size, device, runtime.prefetch):  # [b] of the shuffled order
        with autocast(device, precision):
            predictions = model(batch.inputs).float()  # [b, C]
            loss = task.loss(predictions, batch.labels)
        if scaler is None:
            loss.backward()
            if opt is not None:
                opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        model.zero_grad(set_to_none=True)
        stats.add(float(loss.detach()), task.correct(predictions.detach(), batch.labels), len(batch))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss:.3f}")
    return stats


@register
class Centralized(Method):
    """The same model fine-tuned by one party holding all training data, global batch B."""

    name = "centralized"
    schedule = "central"

    client_runs_encoder = True

    def __init__(self, cfg: Config, dataset: Dataset) -> None:
        super().__init__(cfg, dataset)
        self.model = whole_model(self)
        self.optimizer = whole_model_adam(self.model, cfg)
        self.scheduler = step_lr(self.optimizer, cfg)
        self.order = torch.Generator().manual_seed(client_seed(cfg, 0))

    @property
    def num_clients(self) -> int:
        return 1

    def train_round(self, epoch: int, progress: bool) -> RoundStats:
        data, b = self.dataset.train, self.cfg.train.batch_size
        with progress_bar(f"centralized epoch {epoch + 1}", -(-len(data) // b), progress) as bar:
            stats = local_epoch(self.model, self.optimizer, data, b, self.order, self.task, self.cfg.runtime,
                                self.cfg.model.precision, bar)
        if self.scheduler is not None:
            self.scheduler.step()
        return stats

    def global_model(self) -> WholeModel:
        return self.model

    def traffic(self) -> list[Traffic]:
        return []

    def samples_per_client(self) -> list[int]:
        return [len(self.dataset.train)]

    def modalities_per_client(self) -> list[list[str]]:
        return [self.dataset.train.modalities]

    def client_batch_size(self) -> int:
        return self.cfg.train.batch_size
