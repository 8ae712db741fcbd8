"""What the server accepts from a client, derived from the config before any client connects.

Every incoming message is decoded by the codec (dtype allow-list, byte length = numel x element
size, finite values) and then checked here against the shapes the configured model produces, so a
malformed or hostile message is refused before it can reach the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpsl.errors import ProtocolError
from mpsl.protocol import EpochMetrics, FeatureGrad, Tokens
from mpsl.protocol.guard import Guard
from mpsl.protocol.messages import fits_modalities


@dataclass(frozen=True)
class Expected:
    tokens: dict[str, int]  # modality -> T_m, in the server's modality order
    width: int
    max_batch: int
    guard: Guard | None = None  # value bounds (the server's step guard): refused here, before the step sees them

    def check_tokens(self, msg: Tokens, client_id: int, step: int) -> None:
        if msg.client_id != client_id:
            raise ProtocolError(f"tokens claim client {msg.client_id}, the connection is client {client_id}")
        if msg.step != step:
            raise ProtocolError(f"tokens for step {msg.step}, the server asked for step {step}")
        if not fits_modalities(msg.tokens, list(self.tokens)):
            raise ProtocolError(f"modalities {list(msg.tokens)}, expected {list(self.tokens)} "
                                "or a non-empty part of them (a client lacking a modality) in that order")
        sizes = set()
        for m, t in msg.tokens.items():
            if t.dim() != 3 or t.shape[1] != self.tokens[m] or t.shape[2] != self.width:
                raise ProtocolError(f"tokens.{m}: shape {tuple(t.shape)}, expected [batch, {self.tokens[m]}, "
                                    f"{self.width}]")
            sizes.add(t.shape[0])
        if len(sizes) != 1:
            raise ProtocolError(f"modalities disagree on the batch size: {sorted(sizes)}")
        batch = sizes.pop()
        if not 1 <= batch <= self.max_batch:
            raise ProtocolError(f"batch of {batch} samples, allowed 1..{self.max_batch} (deploy.max_client_batch)")
        if self.guard is not None and (reason := self.guard.check_tokens(msg)) is not None:
            raise ProtocolError(reason)

    def check_grad(self, msg: FeatureGrad, step: int, shape: tuple[int, ...]) -> None:
        if msg.step != step:
            raise ProtocolError(f"feature gradient for step {msg.step}, the open step is {step}")
        if tuple(msg.grad.shape) != shape:
            raise ProtocolError(f"feature gradient of shape {tuple(msg.grad.shape)}, the features were {shape}")
        batch = shape[0] if shape else 0
        if (msg.loss is None) != (msg.correct is None):
            raise ProtocolError("step metrics: a loss without a correct count, or the other way round")
        correct = 0 if msg.correct is None else msg.correct
        if msg.count != batch or not 0 <= correct <= msg.count:  # they add up in the server's logged totals
            raise ProtocolError(f"metrics out of range: correct {msg.correct} of {msg.count}, the batch is "
                                f"{batch} samples")
        if self.guard is not None and (reason := self.guard.check_grad(msg)) is not None:
            raise ProtocolError(reason)

    @staticmethod
    def check_metrics(msg: EpochMetrics) -> None:
        if not 0 <= msg.correct <= msg.count:
            raise ProtocolError(f"epoch metrics out of range: correct {msg.correct} of {msg.count}, "
                                f"loss sum {msg.loss_sum}")
