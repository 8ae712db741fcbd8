from __future__ import annotations

import pytest
import torch

from mpsl.data import load_dataset
from mpsl.experiment.evaluate import headline, modality_ablations
from mpsl.models import build_split_model
from mpsl.tasks import ClassificationTask
from tests.helpers import tiny_config


def _models():
    cfg = tiny_config()
    data = load_dataset(cfg.data)
    client, server = build_split_model(cfg.model, data.spec, seed=0)
    return data, client, server


def test_accuracy_counts_every_sample_once_across_batches() -> None:
    data, client, server = _models()
    with torch.no_grad():
        full = client.head(server(client.embed(data.test.inputs))).argmax(dim=1)
    expected = (full == data.test.labels).float().mean().item()

    got = headline(client, server, data.test, ClassificationTask(), batch_size=7)

    assert got == pytest.approx(expected)


def test_ablations_blank_all_but_one_modality() -> None:
    data, client, server = _models()

    result = modality_ablations(client, server, data.test, ClassificationTask(), batch_size=16)

    assert set(result) == {"test_accuracy_image_only", "test_accuracy_audio_only"}
    blank_both = data.test.blank("image").blank("audio")
    assert torch.count_nonzero(blank_both.inputs["image"]) == 0
    assert torch.count_nonzero(data.test.inputs["image"]) > 0  # blanking copies, never mutates
