"""`mpsl privacy`: train MPSL and attack it from the server's seat, epoch by epoch.

The server's view is every message that reaches it (a `ServerTap` around the client group records tokens,
feature gradients and their scalars) plus what it can build from its own config: the model rebuilt from
`seed` alone, which is the clients' starting point only when the clients share that seed. The truth (each
batch a client draws) is recorded beside it to score the attacks and is never shown to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from mpsl.analysis.accounting import training_flops
from mpsl.analysis.privacy import privacy_spent
from mpsl.analysis.privacy.attacks import (
    direction_clusters,
    invert_patch_tokenizer,
    logit_gradient_labels,
    matched_accuracy,
    norm_score_auc,
    projected_labels,
    psnr,
    read_text_tokens,
    scalar_labels,
    ssim,
)
from mpsl.analysis.privacy.inversion import InversionSettings, learned_inversion
from mpsl.config import Config
from mpsl.data import Dataset
from mpsl.data.loader import Batch
from mpsl.devices import module_device
from mpsl.errors import ClientUnavailable, ConfigError
from mpsl.experiment.evaluate import evaluate
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.models import ClientModel, build_split_model
from mpsl.models.heads import ClassifierHead
from mpsl.models.tokenizers import PatchTokenizer, TextTokenizer
from mpsl.parties import client_init_seed, client_privacy
from mpsl.protocol import ClientGroup, CutGrad, EpochMetrics, FeatureGrad, Features
from mpsl.protocol.group import Offer
from mpsl.protocol.privacy import ClientPrivacy, protect_tokens

KEEP_INPUTS = 64  # samples per epoch whose tokens and inputs are kept for the reconstruction attack
SCALAR_STEPS = 64  # client steps per epoch the loss/correct search runs on (C^b candidates each)
SCALAR_MAX_BATCH = 5
TEXT_FRAME_IDS = frozenset({0, 100, 101, 102, 103})  # WordPiece [PAD], [UNK], [CLS], [SEP], [MASK]: not words
INVERSION = InversionSettings()  # the learned inversion's budget per modality and epoch (a few CPU seconds)


@dataclass
class Seen:
    """One client's part of one step: what the server received, and (for scoring only) the truth."""

    client: int
    features: torch.Tensor  # what the server sent down: [b, M, D] or logits [b, C]
    grad: torch.Tensor  # the feature gradient it got back, same shape
    loss: float | None
    correct: int | None
    labels: torch.Tensor  # truth [b]
    tokens: dict[str, torch.Tensor] | None = None  # m -> [b, T_m, D], kept for the first KEEP_INPUTS samples
    inputs: dict[str, torch.Tensor] | None = None  # truth m -> [b, *shape]


@dataclass
class ServerTap:
    """A ClientGroup that passes every verb through and records what the server receives."""

    group: ClientGroup
    truth: dict[int, Batch]  # client id -> the batch it drew last (filled by the clients' recorders)
    seen: list[Seen] = field(default_factory=list)  # this epoch's
    _tokens: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    _features: dict[int, Features] = field(default_factory=dict)
    _kept: int = 0

    def start_epoch(self, epoch: int) -> None:
        self.seen, self._kept = [], 0
        self.group.start_epoch(epoch)

    def embed(self, step: int) -> dict[int, Offer]:
        offers = self.group.embed(step)
        self._tokens = {cid: {m: t.detach().clone() for m, t in o.tokens.items()}
                        for cid, o in offers.items() if o is not None and not isinstance(o, ClientUnavailable)}
        return offers

    def features(self, msgs: Mapping[int, Features]) -> dict[int, FeatureGrad | ClientUnavailable]:
        replies = self.group.features(msgs)
        for cid, reply in replies.items():
            if not isinstance(reply, FeatureGrad):
                continue
            batch = self.truth[cid]
            keep = self._kept < KEEP_INPUTS
            self.seen.append(Seen(cid, msgs[cid].features.detach().clone(), reply.grad.detach().clone(), reply.loss,
                                  reply.correct, batch.labels.clone(), self._tokens[cid] if keep else None,
                                  {m: x.clone() for m, x in batch.inputs.items()} if keep else None))
            self._kept += len(batch.labels) if keep else 0
        return replies

    def cut_grad(self, msgs: Mapping[int, CutGrad]) -> dict[int, ClientUnavailable | None]:
        return self.group.cut_grad(msgs)

    def end_epoch(self) -> dict[int, EpochMetrics | ClientUnavailable]:
        return self.group.end_epoch()


@dataclass(frozen=True)
class AttackScore:
    attack: str
    epoch: int  # 1-based: the messages of this epoch
    metric: str  # label accuracy, AUC, PSNR (dB), SSIM
    value: float | None  # None: the attack had nothing to work on (e.g. the scalars were not sent)
    chance: float  # what a guess without the messages scores (for PSNR/SSIM: the mean training input)


@dataclass(frozen=True)
class PrivacyAudit:
    scores: tuple[AttackScore, ...]
    test_accuracy: float
    client_flops_per_sample: float
    epsilon_tokens: float | None
    epsilon_labels: float | None
    delta: float


def _record_batches(clients: list, truth: dict[int, Batch]) -> None:
    """Each client's draws are copied into `truth` as it draws them (the harness's ground truth)."""
    for c in clients:
        draw = c.next_batch

        def recorded(draw=draw, cid=c.client_id) -> Batch | None:
            batch = draw()
            if batch is not None:
                truth[cid] = batch
            return batch

        c.next_batch = recorded


def audit(cfg: Config, dataset: Dataset) -> PrivacyAudit:
    """Train `cfg`'s MPSL for its epochs, attacking each epoch's messages as the server."""
    if dataset.spec.task != "classification":
        raise ConfigError(f"data.name: the privacy attacks infer class labels; {dataset.spec.name} is "
                          f"{dataset.spec.task}")
    method = Mpsl(cfg, dataset)
    truth: dict[int, Batch] = {}
    _record_batches(method.clients, truth)
    tap = ServerTap(method.group, truth)
    method.group = tap
    # the clients' starting point as the server rebuilds it from its own config (`seed` only), and as a server
    # that also learned privacy.client_seed would
    guesses = {"server's template": build_split_model(cfg.model, dataset.spec, cfg.seed)[0],
               "leaked client seed": build_split_model(cfg.model, dataset.spec, cfg.seed, client_init_seed(cfg))[0]}
    # data of the same kind, disjoint from every client's (the test split): the mean input and the inversion
    # network's training pairs; the attacks are scored on the clients' training samples only
    public = dataset.test.subset(torch.arange(min(512, len(dataset.test)))).inputs
    mean_input = {m: x.float().mean(0) for m, x in public.items()}  # the no-information guess
    scores: list[AttackScore] = []
    for epoch in range(cfg.train.epochs):
        method.train_round(epoch, progress=cfg.progress)
        scores += label_attacks(tap.seen, guesses, dataset.spec.num_classes, cfg.model.head, epoch + 1)
        for name, guess in guesses.items():
            scores += input_attacks(tap.seen, guess, mean_input, epoch + 1, name)
        scores += learned_input_attacks(tap.seen, method.clients[0].model, client_privacy(cfg, 0), public,
                                        mean_input, epoch + 1, "query access to client 0")
    model = method.global_model()
    accuracy = evaluate(model.client, model.server, dataset.test, method.task, cfg.eval.batch_size)["test_accuracy"]
    probe = dataset.train.subset(torch.arange(min(method.client_batch_size(), len(dataset.train))))  # [b]
    flops = training_flops(method.client_template, method.server_template, probe, method.task)
    spent = privacy_spent(cfg.privacy, cfg.train.epochs)
    return PrivacyAudit(tuple(scores), accuracy, float(flops.client_per_sample), spent.epsilon_tokens,
                        spent.epsilon_labels, spent.delta)


def label_attacks(seen: list[Seen], guesses: Mapping[str, ClientModel], num_classes: int, head: str,
                  epoch: int) -> list[AttackScore]:
    """Every label attack on one epoch's feature gradients (and scalars, when sent)."""
    if not seen:
        return []
    labels = torch.cat([s.labels for s in seen])  # [n]
    grads = torch.cat([s.grad for s in seen])  # [n, M, D] or [n, C]
    counts = torch.bincount(labels, minlength=num_classes).float()
    chance = float(counts.max() / counts.sum())  # always guessing the most common label
    out = []
    if head == "server":
        hits = (logit_gradient_labels(grads) == labels).float().mean()
        out.append(AttackScore("logit-gradient sign", epoch, "label accuracy", float(hits), chance))
    else:
        for name, guess in guesses.items():
            if isinstance(guess.head, ClassifierHead):
                hits = (projected_labels(grads, guess.head.fc.weight.detach()) == labels).float().mean()
                out.append(AttackScore(f"known-initial-head projection ({name})", epoch, "label accuracy",
                                       float(hits), chance))
    clusters = direction_clusters(grads, num_classes)
    out.append(AttackScore("direction clustering", epoch, "label accuracy",
                           matched_accuracy(clusters, labels, num_classes), chance))
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch))]  # [n]
    out.append(AttackScore("gradient norm", epoch, "AUC", norm_score_auc(grads, labels, num_classes),
                           norm_score_auc(grads, shuffled, num_classes)))  # chance: the same score, labels shuffled
    guess = guesses["leaked client seed"]  # the strongest case: the head known (or on the server)
    out.append(AttackScore("loss/correct scalars", epoch, "label accuracy", _scalars(seen, guess, head), chance))
    return out


def _scalars(seen: list[Seen], guess: ClientModel, head: str) -> float | None:
    """Label accuracy of the loss/correct search over the first SCALAR_STEPS small steps; None if not sent."""
    steps = [s for s in seen if s.loss is not None and s.correct is not None
             and len(s.labels) <= SCALAR_MAX_BATCH][:SCALAR_STEPS]
    if not steps:
        return None
    hits = total = 0
    for s in steps:
        with torch.no_grad():
            logits = s.features if head == "server" else guess.head(s.features)  # [b, C]
        found = scalar_labels(logits.float(), s.loss, s.correct)
        hits += int((found == s.labels).sum())
        total += len(s.labels)
    return hits / total


def input_attacks(seen: list[Seen], guess: ClientModel, mean_input: dict[str, torch.Tensor], epoch: int,
                  name: str) -> list[AttackScore]:
    """The tokenizers the server can rebuild, inverted on the kept samples' tokens (least squares for patches,
    the known-embedding reading for text); none when the clients run encoder blocks after them
    (model.client_blocks): the tokens are then no longer the tokenizers' output."""
    if guess.blocks is not None:
        return []
    kept = [s for s in seen if s.tokens is not None and s.inputs is not None]
    out = []
    for m, tok in guess.tokenizers.items():
        if isinstance(tok, TextTokenizer):
            out += _text_attack(kept, m, tok, epoch, name)
        if not isinstance(tok, PatchTokenizer):
            continue
        have = [s for s in kept if m in s.tokens]
        if not have:
            continue
        tokens = torch.cat([s.tokens[m] for s in have])  # [n, T, D]
        truth = torch.cat([s.inputs[m] for s in have]).float()  # [n, *shape]
        guessed = invert_patch_tokenizer(tok, tokens, tuple(truth.shape[1:]))
        baseline = mean_input[m].expand_as(truth)
        attack = f"known-tokenizer inversion, {m} ({name})"
        out.append(AttackScore(attack, epoch, "PSNR dB", psnr(guessed, truth), psnr(baseline, truth)))
        out.append(AttackScore(attack, epoch, "SSIM", ssim(guessed, truth), ssim(baseline, truth)))
    return out


def _text_attack(kept: list[Seen], m: str, tok: TextTokenizer, epoch: int, name: str) -> list[AttackScore]:
    """The known-embedding reading of text tokens, scored on the words (padding and the [CLS]/[SEP] ids that
    every sentence has are left out); chance: always guessing the most common word."""
    have = [s for s in kept if m in s.tokens]
    if not have:
        return []
    ids = torch.cat([s.inputs[m] for s in have]).cpu()  # [n, L]
    read = read_text_tokens(tok, torch.cat([s.tokens[m] for s in have]).cpu())  # [n, L]
    words = ~torch.isin(ids, torch.tensor(sorted(TEXT_FRAME_IDS)))  # [n, L]
    if not words.any():
        return []
    truth = ids[words]
    chance = float(torch.bincount(truth).max()) / len(truth)
    hits = float((read[words] == truth).float().mean())
    return [AttackScore(f"known-embedding reading, {m} ({name})", epoch, "word accuracy", hits, chance)]


def client_tokens(model: ClientModel, inputs: Mapping[str, torch.Tensor], privacy: ClientPrivacy,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Query access to a client's current model: the tokens it would send for `inputs`, m -> [n, T_m, D], every
    modality in one call (with client blocks under early fusion a modality's tokens depend on the others), in
    eval mode. Token clipping and noise are applied as the client applies them (the mechanism and its scale are
    in the config) but from the attacker's own `generator`: the client's draws come from its secret seed, so
    the decoder learns to read through noise of that scale, not to undo the very draws."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = module_device(model)
            clean = model.embed({m: x.to(device) for m, x in inputs.items()})
            return {m: t.float().cpu() for m, t in protect_tokens(clean, privacy, generator).items()}
    finally:
        model.train(training)


def learned_input_attacks(seen: list[Seen], model: ClientModel, privacy: ClientPrivacy,
                          public: Mapping[str, torch.Tensor], mean_input: Mapping[str, torch.Tensor], epoch: int,
                          name: str, settings: InversionSettings = INVERSION) -> list[AttackScore]:
    """A decoder trained on public (input, `model`'s tokens) pairs, applied to the kept samples' tokens (of
    every client: they all start from `model`'s starting weights), for every image-like modality."""
    kept = [s for s in seen if s.tokens is not None and s.inputs is not None]
    images = {m for m, x in public.items() if len(x) >= 2 and x.is_floating_point() and x.dim() == 4}
    public_tokens = client_tokens(model, public, privacy, torch.Generator().manual_seed(settings.seed))
    out = []
    for m in model.modalities:
        have = [s for s in kept if m in s.tokens]
        if not have or m not in images:
            continue  # nothing kept or too little public data, or not an image or spectrogram [n, C, H, W]
        tokens = torch.cat([s.tokens[m] for s in have]).float().cpu()  # [n, T, D]
        truth = torch.cat([s.inputs[m] for s in have]).float().cpu()  # [n, *shape]
        guessed = learned_inversion(public_tokens[m], public[m], tokens, settings)
        baseline = mean_input[m].expand_as(truth)
        attack = f"learned inversion, {m} ({name})"
        out.append(AttackScore(attack, epoch, "PSNR dB", psnr(guessed, truth), psnr(baseline, truth)))
        out.append(AttackScore(attack, epoch, "SSIM", ssim(guessed, truth), ssim(baseline, truth)))
    return out


def audit_table(result: PrivacyAudit) -> str:
    """Markdown: one row per attack and epoch, then the run's accuracy, client FLOPs and epsilon."""
    lines = ["| attack | epoch | metric | success | chance |", "|---|---|---|---|---|"]
    for s in result.scores:
        value = "not sent" if s.value is None else f"{s.value:.3f}"
        lines.append(f"| {s.attack} | {s.epoch} | {s.metric} | {value} | {s.chance:.3f} |")
    eps = ", ".join(f"{name} {'off' if e is None else f'{e:.2f}'}" for name, e in
                    (("tokens", result.epsilon_tokens), ("labels", result.epsilon_labels)))
    lines.append("")
    lines.append(f"test accuracy {result.test_accuracy:.3f}; client GFLOPs per sample "
                 f"{result.client_flops_per_sample / 1e9:.4f}; epsilon ({eps}) at delta {result.delta:g}")
    return "\n".join(lines)
