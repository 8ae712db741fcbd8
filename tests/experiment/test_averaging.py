from __future__ import annotations

import copy

import pytest
import torch

from mpsl.data import load_dataset
from mpsl.errors import ProtocolError
from mpsl.experiment.averaging import WeightedAverage, fedavg, load_trainable, trainable_state
from mpsl.models import build_split_model
from tests.helpers import tiny_config


def _client():
    cfg = tiny_config()
    client, _ = build_split_model(cfg.model, load_dataset(cfg.data).spec, seed=0)
    return client


def test_fedavg_is_the_sample_weighted_parameter_mean() -> None:
    # Prepare
    client = _client()
    a, b = copy.deepcopy(client), copy.deepcopy(client)
    with torch.no_grad():
        for p in a.parameters():
            p.fill_(1.0)
        for p in b.parameters():
            p.fill_(4.0)

    # Execute
    merged = fedavg([a, b], weights=[30, 10])

    # Assert: (30 * 1 + 10 * 4) / 40
    assert all(torch.allclose(p, torch.full_like(p, 1.75)) for p in merged.parameters())
    assert all(torch.equal(p, torch.ones_like(p)) for p in a.parameters())  # inputs untouched


def test_fedavg_of_identical_models_is_exactly_that_model() -> None:
    client = _client()

    merged = fedavg([client, copy.deepcopy(client)], weights=[3, 5])

    for p, q in zip(merged.parameters(), client.parameters(), strict=True):
        assert torch.equal(p, q)


def test_frozen_parameters_are_neither_sent_nor_averaged() -> None:
    client = _client()
    client.head.requires_grad_(False)

    state = trainable_state(client)

    assert state and not any(name.startswith("head.") for name in state)


def test_mismatched_weights_are_refused_without_touching_the_model() -> None:
    client = _client()
    before = {k: v.clone() for k, v in client.state_dict().items()}
    state = trainable_state(copy.deepcopy(client))
    name = next(iter(state))

    with pytest.raises(ProtocolError, match="missing"):
        load_trainable(client, {k: v for k, v in state.items() if k != name})
    with pytest.raises(ProtocolError, match="shape"):
        load_trainable(client, {**state, name: torch.zeros(3)})

    assert all(torch.equal(before[k], v) for k, v in client.state_dict().items())


def test_weighted_average_refuses_states_with_different_names() -> None:
    average = WeightedAverage()
    average.add({"a": torch.ones(2)}, 1.0)

    with pytest.raises(ProtocolError, match="unexpected"):
        average.add({"b": torch.ones(2)}, 1.0)
    with pytest.raises(ValueError):
        WeightedAverage().result()
