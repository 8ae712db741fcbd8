"""The server side of MPSL: one shared encoder copy, one optimizer, for all clients at once."""

from __future__ import annotations

from typing import Any

import torch

from mpsl.models.split import ServerModel
from mpsl.protocol.state import load_training_state, training_state


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
        return training_state(self.model, self.optimizer, self.scheduler)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_training_state(state, self.model, self.optimizer, self.scheduler)
