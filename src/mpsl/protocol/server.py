"""The server side of MPSL: one shared encoder copy, one optimizer, for all clients at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mpsl.models.split import ServerModel
from mpsl.protocol.state import load_training_state, training_state
from mpsl.registry import Registry

# model.precision: the autocast dtype of the server encoder (None: plain fp32)
PRECISIONS: Registry[torch.dtype | None] = Registry("precision", config_keys=("model.precision",))
PRECISIONS.register("fp32")(None)
PRECISIONS.register("bf16")(torch.bfloat16)
PRECISIONS.register("fp16")(torch.float16)


class SplitServer:
    """`precision` runs the encoder under autocast; fp16 adds a gradient scaler. Every tensor that leaves
    the server (features, cut-layer gradients) is fp32 and unscaled."""

    def __init__(
        self,
        model: ServerModel,
        optimizer: torch.optim.Optimizer | None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        precision: str = "fp32",
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.dtype = PRECISIONS.get(precision)
        self.device = next(model.parameters()).device.type
        self.scaler = torch.amp.GradScaler(self.device) if precision == "fp16" and optimizer is not None else None

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        self.model.train()
        with torch.autocast(self.device, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return self.model(tokens).float()  # [B, M, D] or [B, C]

    def backward_and_step(self, outputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                          inputs: Sequence[torch.Tensor] = ()) -> None:
        """One backward through the encoder for the whole concatenated batch, one optimizer step.

        `outputs` are the step's forwards (one per group of clients holding the same modalities) and
        `grads` their upstream gradients; they add up before the single step. With a gradient scaler the
        input gradients (`inputs`, the clients' cut-layer tokens) are unscaled here; on an overflow
        (in the encoder's or the inputs' gradients) the server skips its update and the inputs'
        gradients are zeroed, so no client steps on it either.
        """
        if self.scaler is None:
            torch.autograd.backward(outputs, grads)
            if self.optimizer is not None:
                self.optimizer.step()
        else:
            torch.autograd.backward(outputs, [self.scaler.scale(g) for g in grads])
            scale = self.scaler.get_scale()
            params = [g for g in (*(p.grad for p in self.model.parameters()), *(t.grad for t in inputs))
                      if g is not None]
            if all(torch.isfinite(g).all() for g in params):
                for t in inputs:
                    t.grad.div_(scale)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:  # overflow: nobody steps, the scale backs off
                for t in inputs:
                    t.grad.zero_()
                self.scaler.update(scale * self.scaler.get_backoff_factor())
        self.model.zero_grad(set_to_none=True)

    def end_epoch(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        state = training_state(self.model, self.optimizer, self.scheduler)
        return {**state, "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_training_state(state, self.model, self.optimizer, self.scheduler)
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
