"""The validation split is carved from train only, by seed, and never overlaps train or test."""

from __future__ import annotations

import pytest
import torch

from mpsl.data import load_dataset
from mpsl.data.spec import Dataset, DatasetSpec, ModalitySpec, SplitData
from mpsl.errors import DataError
from tests.helpers import tiny_config


def _numbered(n_train: int, n_test: int) -> Dataset:
    """Every sample's input is its own number, so a sample can be followed into any split."""
    spec = DatasetSpec("numbered", {"image": ModalitySpec("image", (1,))}, num_classes=2)
    train = SplitData({"image": torch.arange(n_train, dtype=torch.float32)[:, None]}, torch.arange(n_train) % 2)
    test = SplitData({"image": -1 - torch.arange(n_test, dtype=torch.float32)[:, None]}, torch.arange(n_test) % 2)
    return Dataset(spec, train, test)


def _ids(split: SplitData) -> set[int]:
    return {int(v) for v in split.inputs["image"][:, 0]}


def test_validation_is_disjoint_from_train_and_test_and_together_they_are_the_old_train() -> None:
    dataset = _numbered(50, 20)

    carved = dataset.with_validation(12, seed=3)

    val, train, test = _ids(carved.val), _ids(carved.train), _ids(carved.test)
    assert len(val) == 12 and len(train) == 38
    assert not val & train and not val & test and not train & test
    assert val | train == _ids(dataset.train) and carved.test is dataset.test


def test_the_seed_chooses_the_validation_samples() -> None:
    dataset = _numbered(50, 20)

    a, b, c = (_ids(dataset.with_validation(10, seed=s).val) for s in (1, 1, 2))

    assert a == b != c


@pytest.mark.parametrize("size", [50, 80])
def test_a_validation_split_that_leaves_no_training_data_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="data.val_size"):
        _numbered(50, 20).with_validation(size, seed=0)


def test_load_dataset_holds_out_data_val_size_and_names_the_key_when_too_large() -> None:
    plain = load_dataset(tiny_config().data)

    carved = load_dataset(tiny_config("data.val_size=16").data)

    assert len(carved.val) == 16 and len(carved.train) == len(plain.train) - 16 and plain.val is None
    with pytest.raises(DataError, match="data.val_size=96"):
        load_dataset(tiny_config("data.val_size=96").data)
