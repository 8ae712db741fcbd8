"""The attack harness measures leaks: undefended, every label attack beats chance by far; with a defense on,
the harness reports the attack failing (so it can tell a working defense from a broken one)."""

from __future__ import annotations

from mpsl.data import load_dataset
from mpsl.experiment.privacy import AttackScore, audit, audit_table
from tests.helpers import tiny_config


def _scores(*overrides: str) -> dict[str, AttackScore]:
    """Attack (and for the inversions, metric) -> its score on the one epoch of a tiny run."""
    cfg = tiny_config("partition.kind=iid", *overrides)
    result = audit(cfg, load_dataset(cfg.data))
    assert "| attack |" in audit_table(result)
    return {s.attack if s.metric in ("label accuracy", "AUC") else f"{s.attack} {s.metric}": s for s in result.scores}


def test_undefended_a_server_head_leaks_every_label_through_gradients_and_scalars() -> None:
    scores = _scores("model.head=server", "privacy.step_metrics=true")
    for attack in ("logit-gradient sign", "direction clustering", "loss/correct scalars"):
        assert scores[attack].value >= scores[attack].chance + 0.4, attack


def test_gradient_noise_defeats_the_gradient_label_attacks() -> None:
    scores = _scores("model.head=server", "privacy.grad_clip=1", "privacy.grad_noise=5")
    for attack in ("logit-gradient sign", "direction clustering"):
        assert scores[attack].value < scores[attack].chance + 0.15, attack
    assert scores["loss/correct scalars"].value is None  # not sent by default


def test_a_client_head_leaks_labels_to_a_server_that_knows_the_clients_seed_only() -> None:
    scores = _scores()
    leaked = scores["known-initial-head projection (leaked client seed)"]
    own = scores["known-initial-head projection (server's template)"]
    assert leaked.value >= leaked.chance + 0.4
    assert own.value < leaked.value - 0.3
    image = scores["known-tokenizer inversion, image (leaked client seed) PSNR dB"]
    assert image.value > image.chance + 10
    assert scores["known-tokenizer inversion, image (server's template) PSNR dB"].value < image.chance + 1
