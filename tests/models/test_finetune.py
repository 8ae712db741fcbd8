"""Each fine-tuning policy trains what it says, through the MPSL step, on a ViT-Ti/16-shaped encoder."""

from __future__ import annotations

import math

import pytest
import torch

from mpsl.data import load_dataset
from mpsl.errors import ConfigError
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.models.finetune import FINETUNING
from tests.helpers import tiny_config


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("policy", FINETUNING.names())
def test_a_vit_ti16_run_trains_through_the_mpsl_step_with_each_policy(policy: str) -> None:
    # Prepare: 12 blocks of width 192 and 3 heads, random init
    cfg = tiny_config("model.encoder.source=vit", "model.encoder.preset=vit-ti16", f"model.encoder.finetune={policy}",
                      "model.encoder.lora.rank=4", "train.server_lr=1e-3", "train.client_lr=1e-3")
    method = Mpsl(cfg, load_dataset(cfg.data))
    encoder = method.server.model.encoder
    before, tokenizer_before = _snapshot(encoder), _snapshot(method.clients[0].model)

    # Execute
    stats = method.train_round(0, progress=False)

    # Assert
    assert math.isfinite(stats.loss) and stats.count == 96
    changed = {n for n, p in encoder.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert changed == trainable  # everything that may train did, nothing else moved
    if policy == "last_k":
        assert {int(n.split(".")[1]) for n in changed if n.startswith("blocks.")} == set(range(6, 12))
    elif policy == "frozen":
        assert not changed
    else:
        assert changed and all("lora_" in n for n in changed)
        assert sum(p.numel() for n, p in encoder.named_parameters() if n in changed) < 0.1 * sum(
            p.numel() for p in encoder.parameters())
    assert any(not torch.equal(p, tokenizer_before[n]) for n, p in method.clients[0].model.named_parameters())


def test_lora_targets_choose_the_layers_and_a_wrong_one_is_named() -> None:
    cfg = tiny_config("model.encoder.source=vit", "model.encoder.finetune=lora", "model.encoder.lora.targets=[qkv]")
    method = Mpsl(cfg, load_dataset(cfg.data))

    adapted = {n.split(".lora_")[0] for n, p in method.server.model.encoder.named_parameters() if p.requires_grad}

    assert adapted and all(n.endswith("attn.qkv") for n in adapted)
    with pytest.raises(ConfigError, match="match no Linear layer"):
        Mpsl(tiny_config("model.encoder.source=vit", "model.encoder.finetune=lora",
                         "model.encoder.lora.targets=[nope]"), load_dataset(cfg.data))
