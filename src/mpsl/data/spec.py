"""What a dataset declares about itself, and the tensors it hands out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
    fusion: str = "early"  # the paper's fusion for this dataset, used when model.fusion is null


Reader = Callable[[torch.Tensor], torch.Tensor]  # stored rows -> model inputs (e.g. uint8 -> normalized float)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class SplitData:
    """One split: modality -> stored [N, *shape] arrays (in memory or memory-mapped) and [N] labels.

    `subset` only composes row indices, so client partitions of a memory-mapped dataset cost no
    memory; `inputs` reads the rows of a (small) view and turns them into model inputs.
    """

    def __init__(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, rows: torch.Tensor | None = None,
                 readers: dict[str, Reader] | None = None) -> None:
        self._arrays = dict(inputs)
        self.labels = labels
        self._rows = rows
        self._readers = {m: (readers or {}).get(m, _identity) for m in self._arrays}
        n = len(labels) if rows is None else len(rows)
        sizes = {m: len(x) for m, x in self._arrays.items()}
        if rows is None and any(size != n for size in sizes.values()):
            raise ValueError(f"inputs and labels disagree in length: {sizes}, labels {len(labels)}")
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} rows")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def modalities(self) -> list[str]:
        return list(self._arrays)

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """modality -> [n, *shape] model inputs of the samples in this view (read now, so keep views small)."""
        return {m: self._readers[m](x if self._rows is None else x[self._rows]) for m, x in self._arrays.items()}

    def subset(self, index: torch.Tensor) -> SplitData:
        rows = index if self._rows is None else self._rows[index]
        return SplitData(self._arrays, self.labels[index], rows, self._readers)

    def only(self, modalities: list[str]) -> SplitData:
        """The same samples holding only some modalities (a client whose device lacks the others)."""
        unknown = set(modalities) - set(self._arrays)
        if unknown:
            raise ValueError(f"no modality {sorted(unknown)} in {self.modalities}")
        return SplitData({m: self._arrays[m] for m in modalities}, self.labels, self._rows,
                         {m: self._readers[m] for m in modalities})

    def blank(self, modality: str) -> SplitData:
        """The same samples with one modality zeroed: inputs are standardized, so zero means no signal."""
        readers = dict(self._readers)
        readers[modality] = lambda x, read=self._readers[modality]: torch.zeros_like(read(x))
        return SplitData(self._arrays, self.labels, self._rows, readers)


@dataclass
class Dataset:
    spec: DatasetSpec
    train: SplitData
    test: SplitData
    classes: list[str] = field(default_factory=list)  # label names where the dataset has them
    val: SplitData | None = None  # held out of train (data.val_size) for every selection; test is only reported

    def with_validation(self, size: int, seed: int) -> Dataset:
        """`size` training samples, drawn by `seed`, become the validation split; the rest stay in train, in
        their order. Nothing of test is touched."""
        if size == 0:
            return self
        if not 0 < size < len(self.train):
            raise ValueError(f"data.val_size={size} must leave training samples: train has {len(self.train)}")
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))  # [n]
        val, train = order[:size].sort().values, order[size:].sort().values  # [size], [n - size]
        return Dataset(self.spec, self.train.subset(train), self.test, self.classes, self.train.subset(val))
