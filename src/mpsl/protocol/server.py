"""The server side of MPSL: one shared encoder copy, one optimizer, for all clients at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mpsl.devices import autocast, grad_scaler, module_device, to_device
from mpsl.models.split import ServerModel
from mpsl.protocol.guard import DEFAULT_MAX_GRAD_ABS, Guard, derived_token_bound, finite_tensors
from mpsl.protocol.state import load_training_state, training_state
from mpsl.protocol.world import World


class SplitServer:
    """`precision` runs the encoder under autocast; fp16 adds a gradient scaler. Every tensor that leaves
    the server (features, cut-layer gradients) is fp32 and unscaled. With `world` this is one of several server
    replicas (mpsl.protocol.world): every replica sums its gradients with the others' before the same step."""

    def __init__(
        self,
        model: ServerModel,
        optimizer: torch.optim.Optimizer | None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        precision: str = "fp32",
        guard: Guard | None = None,
        world: World | None = None,
    ) -> None:
        self.model = model
        self.world = world
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.precision = precision
        self.device = module_device(model)
        self.scaler = grad_scaler(self.device, precision) if optimizer is not None else None
        self.guard = guard or Guard(derived_token_bound(model.encoder.width), DEFAULT_MAX_GRAD_ABS)
        self.skip_reason: str | None = None  # why the last backward_and_step took no update

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokens arrive wherever the runtime put them and are computed on the server's device."""
        self.model.train()
        with autocast(self.device, self.precision):
            return self.model(to_device(tokens, self.device)).float()  # [B, M, D] or [B, C]

    def backward_and_step(self, outputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                          inputs: Sequence[torch.Tensor] = ()) -> bool:
        """One backward through the encoder for the whole concatenated batch, one optimizer step; False when
        the server skipped its update (see `skip_reason`).

        `outputs` are the step's forwards (one per group of clients holding the same modalities) and
        `grads` their upstream gradients; they add up before the single step. With a gradient scaler the
        input gradients (`inputs`, the clients' cut-layer tokens) are unscaled here. If any gradient (the
        encoder's or the inputs') is not finite, after an fp16 overflow or from input no check caught, the
        server skips its update, so parameters and optimizer state stay as they were, and the inputs'
        gradients are zeroed.
        """
        grads = [g.to(o.device, non_blocking=True) for o, g in zip(outputs, grads, strict=True)]
        scale = self.scaler.get_scale() if self.scaler is not None else None
        if outputs:  # a replica whose clients all sat this step out has no forward, only the sums below
            torch.autograd.backward(outputs, grads if scale is None else [self.scaler.scale(g) for g in grads])
        if self.world is not None:
            self.world.sum_grads([p for p in self.model.parameters() if p.requires_grad])
        computed = [g for g in (*(p.grad for p in self.model.parameters()), *(t.grad for t in inputs))
                    if g is not None]
        finite = finite_tensors(computed)
        if self.world is not None:  # non-finite on any replica (its clients' gradients too) skips every one
            finite = self.world.sum([0.0 if finite else 1.0])[0] == 0
        self.skip_reason = None if finite else (
            "fp16 gradient overflow (the scale backs off)" if scale is not None else "non-finite encoder gradients")
        if finite and scale is not None:
            for t in inputs:
                t.grad.div_(scale)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif finite and self.optimizer is not None:
            self.optimizer.step()
        elif not finite:
            for t in inputs:
                if t.grad is not None:
                    t.grad.zero_()
            if scale is not None:
                self.scaler.update(scale * self.scaler.get_backoff_factor())
        self.model.zero_grad(set_to_none=True)
        return finite

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
