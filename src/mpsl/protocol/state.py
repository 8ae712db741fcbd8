"""Checkpointable training state of one side: its model, optimizer and learning-rate schedule."""

from __future__ import annotations

from typing import Any

import torch


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> dict[str, Any]:
    return {"model": model.state_dict(),
            "optimizer": None if optimizer is None else optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict()}


def load_training_state(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                        scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> None:
    model.load_state_dict(state["model"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
