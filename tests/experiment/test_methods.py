"""Every registered method trains through the shared loop; the baselines are the algorithms they claim."""

from __future__ import annotations

import copy

import pytest
import torch

from mpsl.data import load_dataset
from mpsl.experiment.averaging import trainable_state
from mpsl.experiment.methods import METHODS
from mpsl.experiment.methods.base import whole_model_adam
from mpsl.experiment.methods.federated import FedAvg
from mpsl.experiment.methods.local import Centralized, local_epoch
from mpsl.experiment.methods.split_learning import Mpsl, SplitFed
from mpsl.models import WholeModel
from tests.helpers import tiny_config


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _assert_same(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], atol=atol, rtol=0.0 if atol == 0 else 1e-5, msg=k)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_on_every_sample_and_changes_only_trainable_weights(name: str) -> None:
    # Prepare
    cfg = METHODS.get(name).configure(tiny_config("train.server_lr=1e-3", "train.client_lr=1e-3"))
    data = load_dataset(cfg.data)
    method = METHODS.get(name)(cfg, data)
    before = _params(WholeModel(method.client_template, method.server_template))
    trainable = set(trainable_state(WholeModel(method.client_template, method.server_template)))

    # Execute
    stats = method.train_round(0, progress=False)

    # Assert
    assert stats.count == len(data.train) * (cfg.fl.local_epochs if method.client_runs_encoder else 1)
    assert sum(method.samples_per_client()) == len(data.train)
    after = _params(method.global_model())
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and changed <= trainable, f"{name}: frozen weights changed: {sorted(changed - trainable)[:3]}"


def test_fedavg_of_two_identical_clients_equals_local_training() -> None:
    # Prepare: both clients hold the same shard and shuffle it the same way
    cfg = tiny_config("num_clients=2", "train.batch_size=8", "train.server_lr=1e-3", "train.client_lr=1e-3")
    fl = FedAvg(cfg, load_dataset(cfg.data))
    shard, b = fl.clients[0].data, fl.clients[0].batch_size
    for c in fl.clients:
        c.data, c.order = shard, torch.Generator().manual_seed(7)
    reference = copy.deepcopy(fl.model)
    opt, order = whole_model_adam(reference, cfg), torch.Generator().manual_seed(7)

    # Execute: two rounds (each client keeps its Adam state) vs two local epochs with one optimizer
    for r in range(2):
        fl.train_round(r, progress=False)
        local_epoch(reference, opt, shard, b, order, fl.task, cfg.runtime, cfg.model.precision)

    # Assert
    _assert_same(fl.model, reference)


def test_fedavg_weights_clients_by_their_sample_counts() -> None:
    # Prepare: clients of 60 and 36 samples, each trained separately for the reference
    cfg = tiny_config("num_clients=2", "train.batch_size=8", "train.server_lr=1e-3", "train.client_lr=1e-3")
    data = load_dataset(cfg.data)
    fl = FedAvg(cfg, data)
    fl.clients[0].data = data.train.subset(torch.arange(60))
    fl.clients[1].data = data.train.subset(torch.arange(60, 96))
    locals_ = []
    for c in fl.clients:
        model = copy.deepcopy(fl.model)
        order = torch.Generator().set_state(c.order.get_state())
        local_epoch(model, whole_model_adam(model, cfg), c.data, c.batch_size, order, fl.task, cfg.runtime,
                        cfg.model.precision)
        locals_.append(trainable_state(model))

    # Execute
    fl.train_round(0, progress=False)

    # Assert: 60/96 and 36/96, visibly different from an unweighted mean
    got = trainable_state(fl.model)
    for name, value in got.items():
        weighted = (60 * locals_[0][name].double() + 36 * locals_[1][name].double()) / 96
        torch.testing.assert_close(value, weighted.float(), atol=1e-6, rtol=0)
    name = "client.head.fc.weight"
    assert not torch.allclose(got[name], (locals_[0][name] + locals_[1][name]) / 2, atol=1e-6)


def test_fedavg_traffic_is_the_trainable_model_each_way_per_round() -> None:
    cfg = tiny_config("methods=[fedavg]")
    fl = FedAvg(cfg, load_dataset(cfg.data))
    trainable = sum(t.numel() for t in trainable_state(fl.model).values())

    fl.train_round(0, progress=False)
    fl.train_round(1, progress=False)

    for t in fl.traffic():
        assert t.payload_down == t.payload_up == 2 * 4 * trainable
        assert t.messages == 4


def test_clients_per_round_trains_only_the_drawn_clients() -> None:
    cfg = tiny_config("fl.clients_per_round=1")
    fl = FedAvg(cfg, load_dataset(cfg.data))

    stats = fl.train_round(0, progress=False)

    talked = [t.messages for t in fl.traffic()]
    assert sorted(talked) == [0, 0, 2]
    assert stats.count == len(fl.clients[talked.index(2)].data)


def test_splitfed_with_one_client_equals_vanilla_split_learning() -> None:
    # bit for bit: both run their client as a SplitClient (batched clients agree to float rounding, test_batched)
    cfg = tiny_config("num_clients=1", "train.server_lr=1e-3", "train.client_lr=1e-3", "runtime.clients=loop")
    data = load_dataset(cfg.data)
    splitfed, vanilla = SplitFed(cfg, data), Mpsl(cfg, data)

    for r in range(2):
        splitfed.train_round(r, progress=False)
        vanilla.train_round(r, progress=False)

    _assert_same(splitfed.global_model(), vanilla.global_model())


def test_splitfed_keeps_one_server_copy_per_client_and_synchronizes_them() -> None:
    cfg = tiny_config("train.server_lr=1e-3")
    sf = SplitFed(cfg, load_dataset(cfg.data))

    sf.train_round(0, progress=False)

    assert len({id(s.model) for s in sf.servers}) == cfg.num_clients
    for server in sf.servers[1:]:
        _assert_same(server.model, sf.servers[0].model)
    for client in sf.clients[1:]:
        _assert_same(client.model, sf.clients[0].model)


def test_centralized_equals_mpsl_with_a_single_client() -> None:
    cfg = tiny_config("num_clients=1", "train.server_lr=1e-3", "train.client_lr=1e-3")
    data = load_dataset(cfg.data)
    central, split = Centralized(cfg, data), Mpsl(cfg, data)

    central.train_round(0, progress=False)
    split.train_round(0, progress=False)

    _assert_same(central.global_model(), split.global_model(), atol=1e-5)


def test_fedavg_adapter_trains_adapters_on_a_frozen_encoder() -> None:
    cfg = METHODS.get("fedavg-adapter").configure(tiny_config("train.server_lr=1e-3"))
    fl = METHODS.get("fedavg-adapter")(cfg, load_dataset(cfg.data))
    encoder_before = _params(fl.model.server.encoder)
    adapter_before = _params(fl.model.server.adapter)

    fl.train_round(0, progress=False)

    assert all(torch.equal(p, encoder_before[k]) for k, p in fl.model.server.encoder.named_parameters())
    assert len(adapter_before) == 4 * 2  # two modalities x (2 Linear x (weight, bias))
    assert any(not torch.equal(p, adapter_before[k]) for k, p in fl.model.server.adapter.named_parameters())


def test_a_deeper_cut_moves_blocks_and_their_compute_to_the_clients(capsys) -> None:
    # Prepare
    from mpsl.analysis.accounting import training_flops
    from mpsl.errors import ConfigError

    train_all = ("partition.kind=iid", "model.encoder.trainable_blocks=2")
    shallow, deep = tiny_config(*train_all), tiny_config(*train_all, "model.client_blocks=1")
    data = load_dataset(shallow.data)
    probe = data.train.subset(torch.arange(4))  # [4]
    # Execute
    cut = [Mpsl(cfg, data) for cfg in (shallow, deep)]
    stats = cut[1].train_round(0, progress=False)
    flops = [training_flops(m.client_template, m.server_template, probe, m.task) for m in cut]
    # Assert: one block changed sides, with its compute; the clients run it in the per-client loop and train it
    assert [len(m.server_template.encoder.blocks) for m in cut] == [2, 1]
    assert cut[0].client_template.blocks is None and cut[1].client_template.blocks.depth == 1
    assert flops[1].client_per_sample > 2 * flops[0].client_per_sample
    assert flops[1].server_per_sample < flops[0].server_per_sample
    assert not cut[1].batched and "model.client_blocks" in cut[1].fallback
    assert stats.count == 96
    moved = [not torch.equal(p, q) for p, q in zip(cut[1].clients[0].model.blocks.parameters(),
                                                     cut[1].client_template.blocks.parameters(), strict=True)]
    assert any(moved), "the clients' blocks did not train"
    with pytest.raises(ConfigError, match="model.client_blocks: 2 is outside 0..1"):
        Mpsl(tiny_config("model.client_blocks=2"), data)
    with pytest.raises(ConfigError, match="model.client_blocks"):
        tiny_config("model.client_blocks=-1")
