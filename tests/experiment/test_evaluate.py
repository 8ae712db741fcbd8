from __future__ import annotations

import copy

import pytest
import torch

from mpsl.data import load_dataset
from mpsl.experiment.evaluate import accuracy, fedavg, modality_ablations
from mpsl.models import build_split_model
from mpsl.tasks import ClassificationTask
from tests.helpers import tiny_config


def _models():
    cfg = tiny_config()
    data = load_dataset(cfg.data)
    client, server = build_split_model(cfg.model, data.spec, seed=0)
    return data, client, server


def test_fedavg_is_the_sample_weighted_parameter_mean() -> None:
    _, client, _ = _models()
    a, b = copy.deepcopy(client), copy.deepcopy(client)
    with torch.no_grad():
        for p in a.parameters():
            p.fill_(1.0)
        for p in b.parameters():
            p.fill_(4.0)

    merged = fedavg([a, b], weights=[30, 10])

    assert all(torch.allclose(p, torch.full_like(p, 1.75)) for p in merged.parameters())
    assert all(torch.equal(p, torch.ones_like(p)) for p in a.parameters())  # inputs untouched


def test_fedavg_of_identical_models_is_that_model() -> None:
    _, client, _ = _models()

    merged = fedavg([client, copy.deepcopy(client)], weights=[3, 5])

    for p, q in zip(merged.parameters(), client.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_accuracy_counts_every_sample_once_across_batches() -> None:
    data, client, server = _models()
    with torch.no_grad():
        full = client.head(server(client.embed(data.test.inputs))).argmax(dim=1)
    expected = (full == data.test.labels).float().mean().item()

    got = accuracy(client, server, data.test, ClassificationTask(), batch_size=7)

    assert got == pytest.approx(expected)


def test_ablations_blank_all_but_one_modality() -> None:
    data, client, server = _models()

    result = modality_ablations(client, server, data.test, ClassificationTask(), batch_size=16)

    assert set(result) == {"test_accuracy_image_only", "test_accuracy_audio_only"}
    blank_both = data.test.blank("image").blank("audio")
    assert torch.count_nonzero(blank_both.inputs["image"]) == 0
    assert torch.count_nonzero(data.test.inputs["image"]) > 0  # blanking copies, never mutates
