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
    for m in ("image", "audio"):  # a decoder trained on public data against client 0's tokenizer, seed unknown
        learned = scores[f"learned inversion, {m} (query access to client 0) PSNR dB"]
        assert learned.value > learned.chance + 2, m


def test_results_json_carries_the_epsilon_the_accountant_gives_for_the_run(tmp_path) -> None:
    # Prepare
    from mpsl.analysis.privacy import privacy_spent
    from mpsl.experiment.results import RunResult
    from mpsl.experiment.run import run_experiment

    cfg = tiny_config("methods=[mpsl]", f"out_dir={tmp_path}", "eval.personalized=false", "eval.ablations=false",
                      "privacy.token_clip=20", "privacy.token_noise=2", "privacy.grad_clip=1", "privacy.grad_noise=3")
    # Execute
    run_experiment(cfg)
    saved = RunResult.load(tmp_path / cfg.name / "mpsl" / "results.json")
    # Assert
    spent = privacy_spent(cfg.privacy, 1)
    assert saved.privacy.epsilon_tokens == spent.epsilon_tokens and saved.privacy.epsilon_labels == spent.epsilon_labels
    assert 0 < spent.epsilon_labels < spent.epsilon_tokens and saved.privacy.delta == 1e-5


def test_with_blocks_on_the_clients_only_the_learned_inversion_attacks_the_inputs() -> None:
    # the least-squares inversion assumes tokens linear in the input; after a client block they are not
    scores = _scores("model.client_blocks=1")
    assert not [a for a in scores if a.startswith("known-tokenizer inversion")]
    assert {a for a in scores if a.startswith("learned inversion")} == {
        f"learned inversion, {m} (query access to client 0) {metric}"
        for m in ("image", "audio") for metric in ("PSNR dB", "SSIM")}


def test_the_learned_inversion_trains_through_token_noise_of_the_configured_scale() -> None:
    # tokens drowned in noise: a decoder trained on clean public tokens would read the noise as signal and score
    # far below the mean input; trained on tokens noised at the configured scale it falls back to about the mean
    scores = _scores("privacy.token_clip=3", "privacy.token_noise=5")
    for m in ("image", "audio"):
        learned = scores[f"learned inversion, {m} (query access to client 0) PSNR dB"]
        assert abs(learned.value - learned.chance) < 1.0, m


def test_text_tokens_are_read_back_from_the_public_word_embeddings(tmp_path) -> None:
    # Prepare: tweets (t4sa's layout) through the encoder's own word embeddings; only the positions are secret
    from tests.data.fixtures import FIXTURES

    root = tmp_path / "t4sa"
    fx = FIXTURES["t4sa"](root)
    cfg = tiny_config("data.name=t4sa", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                      "data.image_size=32", "data.text_length=12", "data.train_size=null", "data.test_size=null",
                      "num_clients=2", "partition.kind=iid", "partition.min_size=1", "train.batch_size=4",
                      *[f"data.{k}={v}" for k, v in fx.settings.items()])
    # Execute
    result = audit(cfg, load_dataset(cfg.data))
    # Assert: the words come back with the clients' positions and nearly as well without them
    scores = {s.attack: s for s in result.scores if s.metric == "word accuracy"}
    leaked, own = (scores[f"known-embedding reading, text ({name})"] for name in ("leaked client seed",
                                                                                   "server's template"))
    assert leaked.value > 0.95 and leaked.chance < 0.5
    assert own.value > leaked.chance + 0.3
