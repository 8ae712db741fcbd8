"""The four wire messages of one MPSL step, per client. Labels appear in none of them.

    up    Tokens       cut-layer tokens           m -> [b, T_m, D]
    down  Features     CLS features or logits     [b, M, D] (head on client) or [b, C] (head on server)
    up    FeatureGrad  d(w_k L_k)/d features      same shape as the features (loss and hits only with
                                                  privacy.step_metrics: they reveal labels)
    down  CutGrad      dL/dz, this client's slice m -> [b, T_m, D]

Once per epoch each client reports its training loss and accuracy summed over the epoch's samples:

    up    EpochMetrics loss sum, correct, count   (answers the end of an epoch)

The federated baselines (FedAvg, SplitFed) also move model weights, as one more message type, so
their traffic is encoded and counted by the same codec:

    both  Weights      parameter name -> tensor (trainable parameters only)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Tokens:
    client_id: int
    step: int
    tokens: dict[str, torch.Tensor]  # modality -> [b, T_m, D]

    @property
    def batch_size(self) -> int:
        return next(iter(self.tokens.values())).shape[0]


@dataclass
class Features:
    step: int
    features: torch.Tensor  # [b, M, D] or [b, C]
    loss_weight: float  # b_k / B: this client's share of the server-side aggregate loss


@dataclass
class FeatureGrad:
    step: int
    grad: torch.Tensor  # gradient of loss_weight * L_k w.r.t. the features it received
    loss: float | None  # L_k: mean loss over the client's b_k samples; None unless privacy.step_metrics
    correct: int | None  # None unless privacy.step_metrics
    count: int


@dataclass
class EpochMetrics:
    """A client's training metrics over the steps of one epoch it completed: what results.json reports."""

    epoch: int
    loss_sum: float  # sum over the samples of each sample's loss (b_k L_k summed over the steps)
    correct: int
    count: int


@dataclass
class CutGrad:
    step: int
    grads: dict[str, torch.Tensor]  # modality -> [b, T_m, D]
    loss_weight: float  # the client's final share b_k / B; differs from Features' if a client dropped out


@dataclass
class Weights:
    round: int
    num_samples: int  # samples the sender trained on this round: the FedAvg weight (0 from the server)
    tensors: dict[str, torch.Tensor]  # parameter name -> tensor


def fits_modalities(sent: Iterable[str], expected: Sequence[str]) -> bool:
    """A client sends every modality or, lacking some, a non-empty part of them, in the model's order."""
    names = list(sent)
    return bool(names) and names == [m for m in expected if m in names]


MESSAGE_TYPES: dict[str, type] = {cls.__name__: cls
                                  for cls in (Tokens, Features, FeatureGrad, CutGrad, Weights, EpochMetrics)}
