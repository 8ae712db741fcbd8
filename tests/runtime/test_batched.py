"""Batched clients train exactly what the per-client loop trains: the same weights on every client and on the
server, the same step results and the same bytes, whatever the head, fusion, batch sizes, exhaustion, drop-outs,
missing modalities or learning-rate schedule."""

from __future__ import annotations

import copy

import pytest
import torch

from mpsl.config import Config
from mpsl.data import Dataset, DatasetSpec, ModalitySpec, SplitData, load_dataset
from mpsl.errors import ModelError
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.protocol import ClientGroup, StepResult, mpsl_step
from mpsl.runtime.batched import BatchedClients, unsupported
from mpsl.tasks import ClassificationTask
from tests.helpers import Vanishes, tiny_config

ATOL = 1e-6
KEY_BIAS_ATOL = 1e-4


def _twins(cfg: Config, data: Dataset | None = None) -> tuple[Mpsl, Mpsl]:
    """The same experiment twice from the same seed: clients in a loop, and batched."""
    data = data if data is not None else load_dataset(cfg.data)
    cfg = cfg.replace(**{"privacy.step_metrics": True})  # each step's loss and hits are compared too
    loop = Mpsl(cfg.replace(**{"runtime.clients": "loop"}), data)
    batched = Mpsl(cfg.replace(**{"runtime.clients": "batched"}), data)
    assert isinstance(batched.group, BatchedClients) and not loop.batched
    return loop, batched


def _steps(method: Mpsl, epoch: int, steps: int | None = None, group: ClientGroup | None = None) -> list[StepResult]:
    """Up to `steps` global steps of one epoch (all of it when None), as Mpsl.train_round runs them."""
    method.group.start_epoch(epoch)
    results: list[StepResult] = []
    while steps is None or len(results) < steps:
        result = mpsl_step(method.server, group or method.group, method.step)
        if result is None:
            break
        results.append(result)
        method.step += 1
    return results


def _weights(method: Mpsl) -> dict[str, torch.Tensor]:
    named = {f"server.{n}": p for n, p in method.server.model.named_parameters()}
    for c in method.clients:
        named |= {f"client{c.client_id}.{n}": p for n, p in c.model.named_parameters()}
    return {n: p.detach().clone() for n, p in named.items()}


def _assert_same_training(loop: Mpsl, batched: Mpsl, got: list[StepResult], want: list[StepResult],
                          start: dict[str, torch.Tensor]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert (g.client_ids, g.batch_sizes, g.count, g.correct, g.dropped) == (
            w.client_ids, w.batch_sizes, w.count, w.correct, w.dropped)
        assert g.loss == pytest.approx(w.loss, abs=ATOL)
    after, reference = _weights(batched), _weights(loop)
    for name, p in after.items():
        # an attention key bias has zero gradient in exact arithmetic (softmax ignores a shift shared by a query's
        # scores), so Adam steps it by float rounding divided by that rounding's own root: equal to ~1e-5 only
        atol = KEY_BIAS_ATOL if name.endswith("key.bias") else ATOL
        torch.testing.assert_close(p, reference[name], atol=atol, rtol=0.0, msg=name)
    assert any(not torch.equal(p, start[n]) for n, p in after.items() if n.startswith("client")), \
        "no client weight moved: the comparison would be vacuous"
    assert [c.samples_seen for c in batched.clients] == [c.samples_seen for c in loop.clients]


def _train_both(cfg: Config, steps: int | None = None, epochs: int = 1, data: Dataset | None = None):
    loop, batched = _twins(cfg, data)
    start = _weights(batched)
    got, want = [], []
    for epoch in range(epochs):
        want += _steps(loop, epoch, steps)
        got += _steps(batched, epoch, steps)
        for m in (loop, batched):
            m.server.end_epoch()
            m.group.end_epoch()
    return loop, batched, got, want, start


@pytest.mark.parametrize("head", ["client", "server"])
def test_batched_clients_take_the_same_steps_as_the_loop_with_the_head_on_either_side(head: str) -> None:
    # Prepare
    cfg = tiny_config(f"model.head={head}", "partition.kind=iid")
    # Execute
    loop, batched, got, want, start = _train_both(cfg, steps=4)
    # Assert
    _assert_same_training(loop, batched, got, want, start)


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_batched_clients_take_the_same_steps_as_the_loop_under_early_and_late_fusion(fusion: str) -> None:
    cfg = tiny_config(f"model.fusion={fusion}", "partition.kind=iid", "model.head=client")
    loop, batched, got, want, start = _train_both(cfg, steps=3)
    _assert_same_training(loop, batched, got, want, start)


def _retrieval_data(n: int = 48, captions: int = 3, dim: int = 20) -> Dataset:
    """Images and `captions` sentence vectors per sample, in memory: the shape of Flickr30k under dual fusion."""
    gen = torch.Generator().manual_seed(0)

    def split(size: int) -> SplitData:
        inputs = {"image": torch.randn(size, 1, 8, 8, generator=gen),
                  "captions": torch.randn(size, captions, dim, generator=gen)}
        return SplitData(inputs, torch.zeros(size, dtype=torch.long))  # no labels: each image's own captions match

    spec = DatasetSpec("tiny-retrieval", {"image": ModalitySpec("image", (1, 8, 8)),
                                          "captions": ModalitySpec("sentence", (captions, dim))},
                       0, task="retrieval", fusion="dual")
    return Dataset(spec, split(n), split(n // 2))


def test_batched_clients_take_the_same_steps_as_the_loop_for_retrieval_with_a_learned_temperature() -> None:
    # Prepare: the contrastive loss over each client's own mini-batch, a trainable temperature in the client head
    cfg = tiny_config("partition.kind=iid", "model.retrieval.normalize=true", "model.retrieval.temperature=0.07",
                      "model.retrieval.learn_temperature=true")
    # Execute
    loop, batched, got, want, start = _train_both(cfg, steps=3, data=_retrieval_data())
    # Assert
    assert loop.dataset.spec.fusion == "dual" and batched.clients[0].model.head.log_scale.requires_grad
    _assert_same_training(loop, batched, got, want, start)
    assert not torch.equal(batched.clients[0].model.head.log_scale, start["client0.head.log_scale"])


def test_batched_clients_take_the_same_steps_as_the_loop_for_word_ids() -> None:
    # Prepare: a text modality through the encoder's own word embeddings (an embedding vmapped per client)
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (48,), generator=gen)
    split = SplitData({"image": torch.randn(48, 1, 8, 8, generator=gen),
                       "text": torch.randint(0, 1000, (48, 6), generator=gen)}, labels)
    spec = DatasetSpec("tiny-text", {"image": ModalitySpec("image", (1, 8, 8)), "text": ModalitySpec("text", (6,))}, 3)
    cfg = tiny_config("partition.kind=iid")
    # Execute
    loop, batched, got, want, start = _train_both(cfg, steps=2, data=Dataset(spec, split, split))
    # Assert
    _assert_same_training(loop, batched, got, want, start)


def test_a_word_id_outside_the_vocabulary_is_refused_with_its_fix_when_batched() -> None:
    split = SplitData({"image": torch.zeros(12, 1, 8, 8), "text": torch.full((12, 6), 40_000)}, torch.zeros(12).long())
    spec = DatasetSpec("bad-text", {"image": ModalitySpec("image", (1, 8, 8)), "text": ModalitySpec("text", (6,))}, 2)
    _, batched = _twins(tiny_config("partition.kind=iid", "partition.min_size=1"), Dataset(spec, split, split))
    with pytest.raises(ModelError, match="data.text_tokenizer"):
        _steps(batched, 0, steps=1)


def test_unequal_client_batches_run_as_separate_groups_with_the_same_result() -> None:
    # Prepare: label skew and proportional batches, so clients send different batch sizes each step
    cfg = tiny_config("train.client_batch=proportional", "partition.alpha=0.3")
    # Execute
    loop, batched, got, want, start = _train_both(cfg)
    # Assert
    assert len({c.batch_size for c in batched.clients}) > 1
    _assert_same_training(loop, batched, got, want, start)


def test_clients_that_run_out_of_data_early_do_not_move_while_the_others_train_on() -> None:
    # Prepare: skewed shard sizes with equal batches, so some clients are exhausted before others
    cfg = tiny_config("partition.kind=quantity", "partition.alpha=0.5")
    # Execute: two whole epochs (in the second, bias corrections read each client's own step count)
    loop, batched, got, want, start = _train_both(cfg, epochs=2)
    # Assert: later steps had fewer clients, and every client's weights still match the loop
    assert min(len(r.client_ids) for r in got) < cfg.num_clients
    _assert_same_training(loop, batched, got, want, start)


@pytest.mark.parametrize("head", ["client", "server"])
def test_a_client_dropped_mid_step_leaves_the_same_step_as_in_the_loop(head: str) -> None:
    # Prepare: client 1 vanishes at step 1 in both runtimes
    loop, batched = _twins(tiny_config(f"model.head={head}", "partition.kind=iid"))
    start = _weights(batched)
    # Execute
    want = _steps(loop, 0, 3, group=Vanishes(loop.group, 1, step=1))
    got = _steps(batched, 0, 3, group=Vanishes(batched.group, 1, step=1))
    # Assert: the drop happened, the others' shares were renormalized the same way
    assert got[1].dropped == [1] and got[1].client_ids == [0, 2]
    _assert_same_training(loop, batched, got, want, start)


def test_clients_holding_one_modality_train_exactly_as_in_the_loop() -> None:
    # Prepare
    cfg = tiny_config("partition.missing_fraction=0.67", "partition.kind=iid", "model.fusion=late")
    # Execute
    loop, batched, got, want, start = _train_both(cfg, steps=3)
    # Assert: some clients lack a modality; their missing tokenizer never moves
    held = [c.data.modalities for c in batched.clients]
    assert sorted(map(len, held)) == [1, 1, 2]
    _assert_same_training(loop, batched, got, want, start)
    for c, modalities in zip(batched.clients, held, strict=True):
        for m in set(c.model.modalities) - set(modalities):
            assert all(torch.equal(p, start[f"client{c.client_id}.tokenizers.{m}.{n}"])
                       for n, p in c.model.tokenizers[m].named_parameters())


def test_the_learning_rate_schedule_carries_across_an_epoch_boundary() -> None:
    # Prepare: StepLR every epoch, x0.1, with weight decay on
    cfg = tiny_config("partition.kind=iid", "train.lr_step=1", "train.lr_gamma=0.1", "train.weight_decay=0.01",
                      "train.client_lr=1e-3")
    # Execute: two epochs, every step of each
    loop, batched, got, want, start = _train_both(cfg, epochs=2)
    # Assert
    _assert_same_training(loop, batched, got, want, start)
    assert batched.group.lr.tolist() == [pytest.approx(1e-5)] * cfg.num_clients
    assert loop.clients[0].scheduler.get_last_lr() == [pytest.approx(1e-5)]


def test_a_round_counts_the_same_bytes_as_the_loop() -> None:
    # Prepare
    loop, batched = _twins(tiny_config("partition.kind=iid", "partition.missing_fraction=0.34"))
    # Execute
    stats = [m.train_round(0, progress=False) for m in (loop, batched)]
    # Assert: payload and messages exactly; a frame's header differs at most in the digits of a printed loss
    assert stats[0].count == stats[1].count and stats[0].loss == pytest.approx(stats[1].loss, abs=ATOL)
    for want, got in zip(loop.traffic(), batched.traffic(), strict=True):
        assert (got.down, got.payload_up, got.payload_down, got.messages) == (
            want.down, want.payload_up, want.payload_down, want.messages)
        assert abs(got.up - want.up) <= 2 * got.messages // 4
        assert got.payload_up > 0


def test_client_models_are_views_of_the_stack_both_ways() -> None:
    # Prepare
    loop, batched = _twins(tiny_config("partition.kind=iid"))
    _steps(batched, 0, 2)
    _steps(loop, 0, 2)
    restored = copy.deepcopy(loop.clients[1].model.state_dict())
    # Execute: a state loaded into a client model is what the next batched step trains from
    batched.clients[1].model.load_state_dict(restored)
    got, want = _steps(batched, 0, 1), _steps(loop, 0, 1)
    # Assert: the averaged and personal models read the stack; the loaded state took part in the step
    assert got[0].loss == pytest.approx(want[0].loss, abs=ATOL)
    for n, p in batched.clients[1].model.named_parameters():
        torch.testing.assert_close(p, dict(loop.clients[1].model.named_parameters())[n], atol=ATOL, rtol=0.0)
    merged = batched.global_model().client.tokenizers["image"].cls
    torch.testing.assert_close(merged, loop.global_model().client.tokenizers["image"].cls, atol=ATOL, rtol=0.0)
    assert batched.personal_models()[2] is batched.clients[2].model


def test_a_model_batched_clients_cannot_run_exactly_falls_back_to_the_loop(monkeypatch, capsys) -> None:
    # Prepare: a client model with a frozen parameter (as a frozen CLIP text tower has)
    import mpsl.experiment.methods.base as base

    build = base.build_split_model

    def frozen_cls(*args, **kwargs):
        client, server = build(*args, **kwargs)
        client.tokenizers["image"].cls.requires_grad_(False)
        return client, server

    monkeypatch.setattr(base, "build_split_model", frozen_cls)
    cfg = tiny_config("partition.kind=iid")
    # Execute
    method = Mpsl(cfg, load_dataset(cfg.data))
    stats = method.train_round(0, progress=False)
    # Assert
    assert not method.batched and "frozen" in method.fallback and "frozen" in capsys.readouterr().out
    assert stats.count == 96


def test_unsupported_names_what_would_change_the_math() -> None:
    cfg = tiny_config()
    template = Mpsl(cfg, load_dataset(cfg.data)).client_template
    assert unsupported(template, ClassificationTask()) is None
    dropped = copy.deepcopy(template)
    dropped.head = torch.nn.Dropout(0.1)
    assert "Dropout" in unsupported(dropped, ClassificationTask())

    class NoHits:
        def loss(self, predictions, labels):
            return predictions.sum()

    assert "hits" in unsupported(template, NoHits())


def test_a_results_file_from_batched_clients_matches_the_loops(tmp_path) -> None:
    # Prepare
    from mpsl.experiment.run import run_method

    cfg = tiny_config("partition.kind=iid", "train.epochs=2", "eval.ablations=false", "eval.personalized=false")
    data = load_dataset(cfg.data)
    # Execute
    want = run_method(cfg.replace(**{"runtime.clients": "loop"}), data, "mpsl", tmp_path / "loop")
    got = run_method(cfg.replace(**{"runtime.clients": "batched"}), data, "mpsl", tmp_path / "batched")
    # Assert: training curve and test accuracy to float noise, downlink and payload bytes exactly
    for g, w in zip(got.history, want.history, strict=True):
        assert g.train_loss == pytest.approx(w.train_loss, abs=ATOL)
        assert g.test["test_accuracy"] == pytest.approx(w.test["test_accuracy"], abs=1 / len(data.test))
    for key in ("bytes_down_per_client", "payload_bytes_up_per_client", "payload_bytes_down_per_client",
                "messages_per_client"):
        assert getattr(got.comm, key) == getattr(want.comm, key), key
    digits = got.comm.messages_per_client / 4  # a loss printed one digit longer or shorter per FeatureGrad
    assert got.comm.bytes_up_per_client == pytest.approx(want.comm.bytes_up_per_client, abs=digits)
