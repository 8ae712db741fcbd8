"""What of the server's encoder trains: the last k blocks (paper), nothing, or LoRA adapters (peft).

`build_encoder` loads the configured encoder and applies its policy: the one way an encoder is made.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mpsl.config import EncoderConfig
from mpsl.errors import ConfigError
from mpsl.models.encoder import ENCODERS, EncoderBundle, SharedEncoder
from mpsl.registry import Registry

FINETUNING: Registry[Callable[[SharedEncoder, EncoderConfig], None]] = Registry(
    "fine-tuning policy", config_keys=("model.encoder.finetune",))


@FINETUNING.register("last_k")
def last_k(encoder: SharedEncoder, cfg: EncoderConfig) -> None:
    encoder.train_last(encoder.depth // 2 if cfg.trainable_blocks is None else cfg.trainable_blocks)


@FINETUNING.register("frozen")
def frozen(encoder: SharedEncoder, cfg: EncoderConfig) -> None:
    encoder.train_last(0)


@FINETUNING.register("lora")
def lora(encoder: SharedEncoder, cfg: EncoderConfig) -> None:
    """peft's LoRA injected into the blocks' Linear layers; only the adapters train."""
    from peft import LoraConfig, inject_adapter_in_model

    encoder.train_last(0)
    linears = [name for name, m in encoder.blocks.named_modules() if isinstance(m, nn.Linear)]
    targets = [n for n in linears if not cfg.lora.targets or n.split(".")[-1] in cfg.lora.targets
               or any(n.endswith(t) for t in cfg.lora.targets)]
    if not targets:
        raise ConfigError(f"model.encoder.lora.targets {list(cfg.lora.targets)} match no Linear layer of the "
                          f"blocks (they have: {sorted({n.split('.', 1)[1] for n in linears})})")
    config = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                        target_modules=targets)
    inject_adapter_in_model(config, encoder.blocks)
    for name, p in encoder.named_parameters():
        p.requires_grad_("lora_" in name)


def build_encoder(cfg: EncoderConfig) -> EncoderBundle:
    bundle = ENCODERS.get(cfg.source)(cfg)
    FINETUNING.get(cfg.finetune)(bundle.encoder, cfg)
    return bundle
