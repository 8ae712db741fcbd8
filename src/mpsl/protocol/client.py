"""The client side of MPSL: private data and labels, tokenizers, optional head, its own optimizer."""

from __future__ import annotations

from typing import Any

import torch

from mpsl.data.loader import Batch, Lookahead, read_batch
from mpsl.data.spec import SplitData
from mpsl.devices import module_device
from mpsl.errors import ProtocolError
from mpsl.models.split import ClientModel
from mpsl.protocol.messages import CutGrad, EpochMetrics, FeatureGrad, Features, Tokens
from mpsl.protocol.privacy import ClientPrivacy, distance_correlation, protect_grad, protect_tokens
from mpsl.protocol.state import load_training_state, training_state
from mpsl.tasks import Task


class SplitClient:
    """Holds everything that never leaves the device; exchanges only cut-layer tensors."""

    def __init__(
        self,
        client_id: int,
        model: ClientModel,
        data: SplitData,
        task: Task,
        batch_size: int,
        optimizer: torch.optim.Optimizer | None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        seed: int,
        prefetch: int = 0,
        privacy: ClientPrivacy | None = None,
    ) -> None:
        self.client_id = client_id
        self.model = model
        self.data = data
        self.task = task
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.scheduler = scheduler
        self._shuffle = torch.Generator().manual_seed(seed)
        self._order = torch.arange(len(data))
        self._cursor = 0
        self.prefetch = prefetch  # batches read ahead on a background thread
        self._ahead: Lookahead[Batch] | None = None  # this epoch's reads, begun at the cursor
        self._pending: tuple[int, dict[str, torch.Tensor], torch.Tensor] | None = None  # step, tokens, labels
        self._loss_weight: float | None = None  # the share the head's gradient was computed with
        self.samples_seen = 0
        self.epoch: int | None = None
        self.privacy = privacy or ClientPrivacy()
        self.noise = torch.Generator().manual_seed(self.privacy.noise_seed)  # the mechanisms' noise, on the host
        self._inputs: dict[str, torch.Tensor] | None = None  # the open step's raw inputs (NoPeek only)
        self._step_metrics: tuple[float, int, int] | None = None  # the open step's loss sum, correct, count
        self.metrics = [0.0, 0, 0]  # this epoch's loss sum, correct, count over the steps completed

    def start_epoch(self, epoch: int) -> None:
        self._order = torch.randperm(len(self.data), generator=self._shuffle)
        self._cursor = 0
        self._ahead = None
        self.epoch = epoch
        self.metrics = [0.0, 0, 0]

    def next_batch(self) -> Batch | None:
        """The next mini-batch of this epoch's order, None once the data is exhausted; also what a batched
        simulation of many clients draws, so every client's batches are the same however it runs."""
        if self._cursor >= len(self.data):
            return None
        batch = self._read_ahead()
        self._cursor += len(batch)
        return batch

    def embed(self, step: int) -> Tokens | None:
        batch = self.next_batch()
        if batch is None:
            return None
        self.model.train()
        self.model.zero_grad(set_to_none=True)  # a step that ended without a cut gradient (skipped) leaves nothing
        tokens = self.model.embed(batch.inputs)  # m -> [b, T_m, D], graph kept until cut_grad
        self._inputs = batch.inputs if self.privacy.nopeek else None
        tokens = protect_tokens(tokens, self.privacy, self.noise)  # what leaves the client, still in the graph
        self._pending = (step, tokens, batch.labels)
        self._loss_weight = None
        return Tokens(self.client_id, step, {m: t.detach() for m, t in tokens.items()})

    def _read_ahead(self) -> Batch:
        """The batch at the cursor, on the model's device; the next ones are already being read."""
        device = module_device(self.model)
        if self._ahead is None:
            b, order = self.batch_size, self._order
            count = -(-len(self.data) // b)
            self._ahead = Lookahead(lambda i: read_batch(self.data, order[i * b:(i + 1) * b], device),  # [b]
                                    self._cursor // b, count, self.prefetch)
        return self._ahead.take().to(device)

    def features(self, msg: Features) -> FeatureGrad:
        step, _, labels = self._expect(msg.step)
        if msg.features.shape[0] != len(labels):
            raise ProtocolError(f"client {self.client_id}: features for {msg.features.shape[0]} samples, "
                                f"batch has {len(labels)}")
        features = msg.features.detach().to(labels.device, non_blocking=True).requires_grad_(True)
        predictions = self.model.head(features)  # [b, C]
        loss = self.task.loss(predictions, labels)
        (msg.loss_weight * loss).backward()  # head grads (if any) accumulate until cut_grad steps them
        self._loss_weight = msg.loss_weight
        value, correct = float(loss.detach()), self.task.correct(predictions, labels)
        self._step_metrics = (value * len(labels), correct, len(labels))
        grad = protect_grad(features.grad, msg.loss_weight, self.privacy, self.noise)
        if self.privacy.step_metrics:
            return FeatureGrad(step, grad, value, correct, len(labels))
        return FeatureGrad(step, grad, None, None, len(labels))

    def cut_grad(self, msg: CutGrad) -> None:
        _, tokens, labels = self._expect(msg.step)
        if self._loss_weight is None:
            raise ProtocolError(f"client {self.client_id}: cut gradient for step {msg.step} before its features")
        if set(msg.grads) != set(tokens):
            raise ProtocolError(f"client {self.client_id}: gradient for {sorted(msg.grads)}, sent {sorted(tokens)}")
        if msg.loss_weight != self._loss_weight:  # another client dropped out: shares were renormalized
            for p in self.model.head.parameters():
                if p.grad is not None:
                    p.grad.mul_(msg.loss_weight / self._loss_weight)
        outputs = [tokens[m] for m in tokens]
        upstream = [msg.grads[m].to(tokens[m].device, non_blocking=True) for m in tokens]
        if self.privacy.nopeek and self._inputs is not None:  # the client's own term: decorrelate tokens from inputs
            outputs.append(self.privacy.nopeek * nopeek_term(self._inputs, tokens))
            upstream.append(torch.ones((), device=outputs[-1].device))
        torch.autograd.backward(outputs, upstream)
        if self.optimizer is not None:
            self.optimizer.step()
        self.model.zero_grad(set_to_none=True)
        self.samples_seen += len(labels)
        if self._step_metrics is not None:  # the step completed: its metrics count towards the epoch's
            self.metrics = [a + b for a, b in zip(self.metrics, self._step_metrics, strict=True)]
        self._pending, self._step_metrics, self._inputs = None, None, None

    def end_epoch(self) -> EpochMetrics:
        """Advance the schedule; report the epoch's training metrics (summed, not per step)."""
        if self.scheduler is not None:
            self.scheduler.step()
        loss_sum, correct, count = self.metrics
        return EpochMetrics(-1 if self.epoch is None else self.epoch, float(loss_sum), int(correct), int(count))

    def _expect(self, step: int) -> tuple[int, dict[str, torch.Tensor], torch.Tensor]:
        if self._pending is None or self._pending[0] != step:
            held = None if self._pending is None else self._pending[0]
            raise ProtocolError(f"client {self.client_id}: message for step {step}, but the open step is {held}")
        return self._pending

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this client is between two steps."""
        return {
            **training_state(self.model, self.optimizer, self.scheduler),
            "shuffle": self._shuffle.get_state(), "order": self._order, "cursor": self._cursor,
            "samples_seen": self.samples_seen, "epoch": -1 if self.epoch is None else self.epoch,
            "noise": self.noise.get_state(), "metrics": list(self.metrics),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_training_state(state, self.model, self.optimizer, self.scheduler)
        self._shuffle.set_state(state["shuffle"])
        self._order, self._cursor = state["order"], int(state["cursor"])
        self.samples_seen = int(state["samples_seen"])
        self.epoch = None if state["epoch"] < 0 else int(state["epoch"])
        if "noise" in state:  # states saved before the privacy mechanisms have none
            self.noise.set_state(state["noise"])
            self.metrics = list(state["metrics"])
        self._pending, self._loss_weight, self._ahead = None, None, None
        self._step_metrics, self._inputs = None, None


def nopeek_term(inputs: dict[str, torch.Tensor], tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the modalities of distance correlation(raw inputs, their tokens): NoPeek's penalty."""
    terms = [distance_correlation(inputs[m].to(t.device), t) for m, t in tokens.items()]
    return torch.stack(terms).mean()
