"""The server side of MPSL: one shared encoder copy, one optimizer, for all clients at once."""

from __future__ import annotations

from typing import Any

import torch

from mpsl.models.split import ServerModel


class SplitServer:
    def __init__(
        self,
        model: ServerModel,
        optimizer: torch.optim.Optimizer | None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        self.model.train()
        return self.model(tokens)  # [B, M, D] or [B, C]

    def backward_and_step(self, outputs: torch.Tensor, grad: torch.Tensor) -> None:
        """One backward through the encoder for the whole concatenated batch, one optimizer step."""
        outputs.backward(grad)
        if self.optimizer is not None:
            self.optimizer.step()
        self.model.zero_grad(set_to_none=True)

    def end_epoch(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
