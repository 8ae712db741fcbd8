"""The two halves of the split model: what a client runs and what the server runs.

The cut is right after the tokenizers (paper), or `model.client_blocks` encoder blocks later. The head sits on
either side (`model.head`); the other side gets an identity in its place, so the protocol code never asks where
the head is.
"""

from __future__ import annotations

import torch
from torch import nn

from mpsl.config import ModelConfig
from mpsl.data.spec import DatasetSpec
from mpsl.models.adapters import ADAPTERS
from mpsl.models.encoder import EncoderBundle, SharedEncoder
from mpsl.models.finetune import build_encoder
from mpsl.models.fusion import FUSIONS, POOLINGS
from mpsl.models.heads import build_head
from mpsl.models.tokenizers import build_tokenizer


class ClientModel(nn.Module):
    """Tokenizers (one per modality), with `model.client_blocks` the encoder's first blocks, and with
    `head: client` the task head."""

    def __init__(self, tokenizers: dict[str, nn.Module], head: nn.Module, blocks: SharedEncoder | None = None,
                 fusion: str = "early", sentences: set[str] | None = None) -> None:
        super().__init__()
        self.tokenizers = nn.ModuleDict(tokenizers)
        self.head = head
        self.blocks = blocks if blocks is not None and blocks.depth else None  # None: the paper's cut
        self.fusion = FUSIONS.get(fusion)  # the client's blocks see the sequences the server's would
        self.sentences = set(sentences or ())

    @property
    def modalities(self) -> list[str]:
        return list(self.tokenizers)

    def embed(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tokens of the modalities this batch has (a client may lack some): m -> [b, T_m, D]."""
        tokens = {m: tok(inputs[m]) for m, tok in self.tokenizers.items() if m in inputs}
        return tokens if self.blocks is None else self.fusion.run(self.blocks, tokens, self.sentences)


class ServerModel(nn.Module):
    """The shared encoder, the fusion, an optional feature adapter, and with `head: server` the head."""

    def __init__(self, encoder: SharedEncoder, fusion: str, pooling: str, head: nn.Module,
                 modalities: list[str], adapter: nn.Module | None = None, sentences: set[str] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.fusion = FUSIONS.get(fusion)
        self.pool = POOLINGS.get(pooling)
        self.adapter = adapter if adapter is not None else ADAPTERS.get("none")(0, [])
        self.head = head
        self.modalities = list(modalities)
        self.sentences = set(sentences or ())  # modalities whose every token is one sentence (dual fusion)

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """tokens: the modalities one group of clients sent (all of them, or fewer), m -> [B, T_m, D]."""
        unknown = set(tokens) - set(self.modalities)
        if unknown or not tokens:
            raise ValueError(f"tokens for {sorted(tokens)}, the model has {self.modalities}")
        ordered = {m: tokens[m] for m in self.modalities if m in tokens}  # fixed modality order
        features, rows = self.fusion(self.encoder, ordered, self.pool, self.sentences)  # [B, R, D]
        return self.head(self.adapter(features, rows))  # [B, R, D] or [B, C]


class WholeModel(nn.Module):
    """Both halves joined with no cut: what centralized training and the FL baselines train."""

    def __init__(self, client: ClientModel, server: ServerModel) -> None:
        super().__init__()
        self.client = client
        self.server = server

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.client.head(self.server(self.client.embed(inputs)))  # [b, C]


ID_KINDS = frozenset({"text", "clip-text"})  # tokenizer kinds whose inputs are token ids, not floats
SENTENCE_KINDS = frozenset({"sentence", "clip-text"})  # tokenizer kinds that make one token per sentence


def example_inputs(spec: DatasetSpec, batch: int = 1, device: str = "meta") -> dict[str, torch.Tensor]:
    """Zero inputs of every modality, m -> [batch, *shape]: on the meta device, for shapes without compute."""
    return {m: torch.zeros(batch, *s.shape, dtype=torch.long if s.kind in ID_KINDS else torch.float32, device=device)
            for m, s in spec.modalities.items()}


def build_split_model(cfg: ModelConfig, spec: DatasetSpec, seed: int,
                      client_seed: int | None = None) -> tuple[ClientModel, ServerModel]:
    """One client template and the server; every client starts as a copy of the template.

    With `client_seed` the client parts (tokenizers, a client head) are drawn from their own seed and the
    server parts do not depend on it: a server built from `seed` alone gets identical server weights but
    cannot rebuild the clients' starting weights (docs/privacy.md, the known-initial-head attack).
    """
    torch.manual_seed(seed)
    bundle: EncoderBundle = build_encoder(cfg.encoder)
    if client_seed is None:  # every part from the one seed (what a server that knows only `seed` rebuilds)
        tokenizers = {m: build_tokenizer(ms, cfg, bundle) for m, ms in spec.modalities.items()}
        head = build_head(bundle.width, spec, cfg)
    else:
        with torch.random.fork_rng(devices=[]):  # the server's stream continues as if no client part was drawn
            torch.manual_seed(client_seed)
            tokenizers = {m: build_tokenizer(ms, cfg, bundle) for m, ms in spec.modalities.items()}
            client_head = build_head(bundle.width, spec, cfg) if cfg.head == "client" else None
        head = client_head if client_head is not None else build_head(bundle.width, spec, cfg)
    client_head, server_head = (head, nn.Identity()) if cfg.head == "client" else (nn.Identity(), head)
    fusion = cfg.fusion or spec.fusion
    sentences = {m for m, s in spec.modalities.items() if s.kind in SENTENCE_KINDS}
    client_blocks, server_blocks = bundle.encoder.split(cfg.client_blocks)  # pretrained: the same on every client
    client = ClientModel(tokenizers, client_head, client_blocks, fusion, sentences)
    adapter = ADAPTERS.get(cfg.adapter)(bundle.width, list(spec.modalities))
    server = ServerModel(server_blocks, fusion, cfg.pooling, server_head, list(spec.modalities), adapter, sentences)
    return client, server
