"""Clients that hold only some modalities: the step runs them on what they have, exactly, and counts them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mpsl.config import PartitionConfig
from mpsl.data import load_dataset
from mpsl.data.partition import modality_holdings
from mpsl.errors import ConfigError, ProtocolError
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.models import build_split_model
from mpsl.protocol import SplitServer, Tokens, mpsl_step
from mpsl.runtime import InProcessHandle
from mpsl.tasks import ClassificationTask
from tests.helpers import adam, split_parties, tiny_config

SIZES = [3, 2, 4]
HOLDS = [["image", "audio"], ["image"], ["audio"]]  # client 0 full, client 1 camera only, client 2 microphone only



@pytest.mark.parametrize("fusion", ["early", "late"])
@pytest.mark.parametrize("head", ["client", "server"])
def test_a_step_with_partial_clients_equals_the_unsplit_step_on_what_they_hold(head: str, fusion: str) -> None:
    # Prepare
    cfg = tiny_config(f"model.head={head}", f"model.fusion={fusion}", "model.encoder.trainable_blocks=1")
    data = load_dataset(cfg.data)
    template, server_model = build_split_model(cfg.model, data.spec, seed=0)
    shards = [data.train.subset(torch.arange(sum(SIZES[:k]), sum(SIZES[:k + 1]))).only(held)
              for k, held in enumerate(HOLDS)]
    refs = [copy.deepcopy(template) for _ in SIZES]
    ref_server = copy.deepcopy(server_model)
    clients, server = split_parties(template, server_model, shards, ClassificationTask())

    # Execute: the split step
    result = mpsl_step(server, [InProcessHandle(c) for c in clients], step=0)

    # Execute: the reference, each client's batch through the whole model on its own modalities
    opts = [adam(m) for m in [*refs, ref_server]]
    logits = [m.head(ref_server(m.embed(s.inputs))) for m, s in zip(refs, shards, strict=True)]  # [b_k, C]
    loss = F.cross_entropy(torch.cat(logits), torch.cat([s.labels for s in shards]))  # sum_k b_k/B L_k
    loss.backward()
    for opt in opts:
        opt.step()

    # Assert
    assert result is not None and result.batch_sizes == SIZES and result.count == sum(SIZES)
    assert result.loss == pytest.approx(loss.item(), rel=1e-5)
    for name, p in server.model.named_parameters():
        torch.testing.assert_close(p, dict(ref_server.named_parameters())[name], atol=1e-6, rtol=1e-5, msg=name)
    for k, (c, ref) in enumerate(zip(clients, refs, strict=True)):
        for name, p in c.model.named_parameters():
            torch.testing.assert_close(p, dict(ref.named_parameters())[name], atol=1e-6, rtol=1e-5,
                                       msg=f"client {k} {name}")
    image_only = clients[1].model.tokenizers
    assert all(torch.equal(p, q) for p, q in zip(image_only["audio"].parameters(), template.tokenizers["audio"]
                                                 .parameters(), strict=True)), "a missing modality must not train"


def test_holdings_are_seeded_and_honour_the_fraction_and_the_kept_modality() -> None:
    # Execute
    drawn = modality_holdings(["image", "audio"], 10, PartitionConfig(missing_fraction=0.3), seed=1)
    again = modality_holdings(["image", "audio"], 10, PartitionConfig(missing_fraction=0.3), seed=1)
    kept = modality_holdings(["image", "audio"], 10, PartitionConfig(missing_fraction=0.5, missing_keep="audio"), 1)
    # Assert
    assert drawn == again
    assert sum(len(h) == 1 for h in drawn) == 3 and sum(len(h) == 2 for h in drawn) == 7
    assert sorted(h for h in kept if len(h) == 1) == [["audio"]] * 5
    with pytest.raises(ConfigError, match="missing_keep"):
        modality_holdings(["image", "audio"], 4, PartitionConfig(missing_fraction=0.5, missing_keep="text"), 1)


def test_an_epoch_with_missing_modality_clients_trains_on_every_sample() -> None:
    # Prepare
    cfg = tiny_config("partition.missing_fraction=0.67", "partition.kind=iid")
    method = Mpsl(cfg, load_dataset(cfg.data))
    held = [c.data.modalities for c in method.clients]
    # Execute
    stats = method.train_round(0, progress=False)
    # Assert
    assert sorted(map(len, held)) == [1, 1, 2]
    assert stats.count == sum(len(c.data) for c in method.clients) == 96
    assert all(c.samples_seen == len(c.data) for c in method.clients)


def test_tokens_out_of_order_or_unknown_are_refused() -> None:
    # Prepare
    cfg = tiny_config()
    data = load_dataset(cfg.data)
    _, server_model = build_split_model(cfg.model, data.spec, seed=0)

    class Sends:
        client_id = 0

        def __init__(self, tokens: dict[str, torch.Tensor]) -> None:
            self.tokens = tokens

        def embed(self, step: int) -> Tokens:
            return Tokens(0, step, self.tokens)

    t = torch.zeros(2, 3, 32)
    # Execute / Assert
    for bad in ({"audio": t, "image": t}, {"video": t}):
        with pytest.raises(ProtocolError, match="non-empty part"):
            mpsl_step(SplitServer(server_model, None, None), [Sends(bad)], step=0)


@pytest.mark.parametrize("name", ["fedavg", "fedavg-adapter", "splitfed", "centralized"])
def test_every_baseline_trains_with_missing_modality_clients(name: str) -> None:
    # Prepare
    from mpsl.experiment.methods import METHODS

    cfg = METHODS.get(name).configure(tiny_config("partition.missing_fraction=0.67", "partition.kind=iid"))
    method = METHODS.get(name)(cfg, load_dataset(cfg.data))
    # Execute
    stats = method.train_round(0, progress=False)
    # Assert: every sample trained once (centralized pools the full training set)
    assert stats.count == 96 and np.isfinite(stats.loss)


def test_results_and_the_report_say_which_clients_held_one_modality(tmp_path) -> None:
    # Prepare
    from mpsl.experiment.run import run_experiment

    cfg = tiny_config("partition.missing_fraction=0.34", "partition.missing_keep=audio", "methods=[mpsl,fedavg]",
                      f"out_dir={tmp_path}", "name=miss", "eval.personalized=false")
    # Execute
    results = run_experiment(cfg)
    # Assert
    for r in results:
        assert sorted(r.modalities_per_client) == [("audio",), ("image", "audio"), ("image", "audio")]
        assert sum(r.samples_per_client) == 96 and r.history[0].steps >= 1
    assert "1 of 3 clients hold only some modalities" in (tmp_path / "miss" / "compare.md").read_text()
