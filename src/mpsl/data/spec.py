"""What a dataset declares about itself, and the tensors it hands out."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModalitySpec:
    kind: str  # a key of mpsl.models.TOKENIZERS: image | audio | text
    shape: tuple[int, ...]  # one sample's input shape, e.g. (1, 28, 28) or (1, mels, frames)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    modalities: dict[str, ModalitySpec]  # ordered: this order is the token order in early fusion
    num_classes: int
    task: str = "classification"  # a key of mpsl.tasks.TASKS


@dataclass
class SplitData:
    """One split held in memory: modality -> [N, *shape] inputs and [N] labels."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    def __post_init__(self) -> None:
        sizes = {m: len(x) for m, x in self.inputs.items()}
        if any(n != len(self.labels) for n in sizes.values()):
            raise ValueError(f"inputs and labels disagree in length: {sizes}, labels {len(self.labels)}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> SplitData:
        return SplitData({m: x[index] for m, x in self.inputs.items()}, self.labels[index])

    def blank(self, modality: str) -> SplitData:
        """The same samples with one modality zeroed: inputs are standardized, so zero means no signal."""
        inputs = dict(self.inputs)
        inputs[modality] = torch.zeros_like(inputs[modality])
        return SplitData(inputs, self.labels)


@dataclass
class Dataset:
    spec: DatasetSpec
    train: SplitData
    test: SplitData
