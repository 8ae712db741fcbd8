"""The privacy mechanisms are exact: per-sample clipping to the bound, Gaussian noise of the configured scale
from the client's own generator, the same whether clients run in a loop or batched; scalars stay off the wire
by default and the epoch reports add up to what the steps would have said."""

from __future__ import annotations

import pytest
import torch

from mpsl.config import load_config
from mpsl.data import load_dataset
from mpsl.errors import ConfigError
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.models import build_split_model
from mpsl.parties import client_init_seed
from mpsl.protocol import FeatureGrad, mpsl_step
from mpsl.protocol.privacy import ClientPrivacy, clip_per_sample, privatize, protect_grad
from tests.helpers import tiny_config


def test_clipping_bounds_each_samples_joint_norm_and_leaves_small_samples_alone() -> None:
    # Prepare: sample 0 far outside the bound (over two parts), sample 1 inside it
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 4) * 10, torch.randn(2, 5) * 10
    a[1], b[1] = a[1] / 1000, b[1] / 1000
    # Execute
    ca, cb = clip_per_sample([a, b], 2.0)
    # Assert
    joint = (ca.flatten(1).pow(2).sum(1) + cb.pow(2).sum(1)).sqrt()  # [2]
    assert joint[0].item() == pytest.approx(2.0, rel=1e-6)
    assert torch.equal(ca[1], a[1]) and torch.equal(cb[1], b[1])
    assert torch.allclose(ca[0] / a[0], torch.full_like(a[0], float(ca[0, 0, 0] / a[0, 0, 0])))  # direction kept


def test_noise_is_the_clients_generator_draw_times_noise_times_clip() -> None:
    # Prepare: a bound no sample reaches, so only the noise changes the tensor
    x = torch.randn(64, 10, 8)
    # Execute
    (out,) = privatize([x], clip=1e6, noise=0.3, generator=torch.Generator().manual_seed(5))
    # Assert: exactly N(0, 1) from that generator scaled by 0.3 x 1e6, and its spread is that scale
    want = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)) * 0.3 * 1e6
    torch.testing.assert_close(out - x, want, rtol=1e-5, atol=1e-2)
    assert (out - x).std().item() == pytest.approx(3e5, rel=0.03)


def test_the_returned_gradient_is_clipped_per_sample_on_the_gradient_of_each_samples_own_loss() -> None:
    # Prepare: rows of d(w L)/df for a mean loss over b = 4 samples with share w = 0.25
    grad = torch.randn(4, 2, 8) * 5
    privacy = ClientPrivacy(grad_clip=0.5)
    # Execute
    out = protect_grad(grad, 0.25, privacy, torch.Generator().manual_seed(0))
    # Assert: b / w x each row has norm at most the clip
    per_sample = (out * 4 / 0.25).flatten(1).norm(dim=1)
    assert torch.all(per_sample <= 0.5 + 1e-5) and per_sample.max().item() == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize("override, key", [
    ("privacy.grad_noise=-1", "privacy.grad_noise"), ("privacy.delta=1", "privacy.delta"),
    ("privacy.token_clip=0", "privacy.token_clip"), ("privacy.token_noise=1", "privacy.token_noise"),
    ("privacy.nopeek=-0.5", "privacy.nopeek"),
])
def test_a_wrong_privacy_setting_is_one_error_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: "):
        load_config(None, [override])


def test_the_server_rebuilds_its_own_part_exactly_but_not_the_clients_start() -> None:
    # Prepare
    cfg = tiny_config()
    spec = load_dataset(cfg.data).spec
    # Execute: the clients' template, and what a server holding only `seed` builds
    client, server = build_split_model(cfg.model, spec, cfg.seed, client_init_seed(cfg))
    guess_client, guess_server = build_split_model(cfg.model, spec, cfg.seed)
    other_client, other_server = build_split_model(cfg.model, spec, cfg.seed, client_init_seed(cfg) + 1)
    # Assert: identical server parts whatever the client seed; the client parts differ
    for s in (guess_server, other_server):
        assert all(torch.equal(a, b) for a, b in zip(server.state_dict().values(), s.state_dict().values(),
                                                     strict=True))
    for c in (guess_client, other_client):
        assert not torch.equal(client.head.fc.weight, c.head.fc.weight)
        assert not torch.equal(client.tokenizers["image"].proj.weight, c.tokenizers["image"].proj.weight)


def test_by_default_no_step_loss_or_hits_cross_the_wire_and_the_epoch_report_adds_up_to_them() -> None:
    # Prepare: the same run with the default and with privacy.step_metrics
    cfg = tiny_config("partition.kind=iid", "runtime.clients=loop")
    data = load_dataset(cfg.data)
    quiet, chatty = Mpsl(cfg, data), Mpsl(cfg.replace(**{"privacy.step_metrics": True}), data)
    seen: list[FeatureGrad] = []
    handle = quiet.handles[0]
    features = handle.features
    handle.features = lambda msg: seen.append(reply := features(msg)) or reply
    # Execute
    stats = quiet.train_round(0, progress=False)
    chatty.group.start_epoch(0)
    steps = []
    while (result := mpsl_step(chatty.server, chatty.group, chatty.step)) is not None:
        steps.append(result)
        chatty.step += 1
    # Assert
    assert seen and all(r.loss is None and r.correct is None for r in seen)
    assert stats.count == sum(r.count for r in steps) == 96 and stats.steps == len(steps)
    assert stats.correct == sum(r.correct for r in steps)
    assert stats.loss == pytest.approx(sum(r.loss * r.count for r in steps) / stats.count, rel=1e-5)


@pytest.mark.parametrize("head", ["client", "server"])
def test_batched_clients_draw_the_same_noise_as_the_loop(head: str) -> None:
    # Prepare: every mechanism on
    cfg = tiny_config("partition.kind=iid", f"model.head={head}", "privacy.grad_clip=0.5", "privacy.grad_noise=0.7",
                      "privacy.token_clip=3", "privacy.token_noise=0.2", "privacy.step_metrics=true")
    data = load_dataset(cfg.data)
    loop = Mpsl(cfg.replace(**{"runtime.clients": "loop"}), data)
    batched = Mpsl(cfg.replace(**{"runtime.clients": "batched"}), data)
    assert batched.batched and not loop.batched
    # Execute
    got, want = batched.train_round(0, progress=False), loop.train_round(0, progress=False)
    # Assert: the same training, so the same draws
    assert (got.count, got.correct) == (want.count, want.correct) and got.loss == pytest.approx(want.loss, abs=1e-5)
    for a, b in zip(batched.clients, loop.clients, strict=True):
        for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)
        assert torch.equal(a.noise.get_state(), b.noise.get_state())


def test_distance_correlation_is_one_for_a_similarity_and_falls_with_dependence() -> None:
    from mpsl.protocol.privacy import distance_correlation

    torch.manual_seed(0)
    x = torch.randn(64, 6)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6))
    assert distance_correlation(x, 3 * x @ rotation + 1).item() == pytest.approx(1.0, abs=1e-4)
    noise = torch.randn(64, 6)
    assert distance_correlation(x, noise) < distance_correlation(x, x + noise) < distance_correlation(x, x + noise / 4)


def test_nopeek_adds_its_term_to_the_clients_backward_only() -> None:
    # Prepare: one step of the same client with and without the penalty (which batched clients leave to the loop)
    cfg = tiny_config("partition.kind=iid")
    data = load_dataset(cfg.data)
    plain = Mpsl(cfg.replace(**{"runtime.clients": "loop"}), data)
    peek = Mpsl(cfg.replace(**{"privacy.nopeek": 1.0}), data)
    assert not peek.batched and "nopeek" in peek.fallback
    # Execute
    for method in (plain, peek):
        method.group.start_epoch(0)
        mpsl_step(method.server, method.group, 0)
    # Assert: the server's update is the same (its messages are), the clients' tokenizers moved differently
    for p, q in zip(plain.server.model.parameters(), peek.server.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(plain.clients[0].model.tokenizers["image"].proj.weight,
                           peek.clients[0].model.tokenizers["image"].proj.weight)
