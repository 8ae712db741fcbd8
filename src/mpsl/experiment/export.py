"""`mpsl export`: a run's trained server encoder as files other libraries load.

    encoder/   config.json + model.safetensors (+ the base model's tokenizer files): a transformers BertModel,
               `AutoModel.from_pretrained(dir)`; its blocks are the trained ones, its embeddings the base
               model's (the clients tokenize, so the server never trained embeddings)
    adapter/   with model.encoder.finetune=lora: adapter_config.json + adapter_model.safetensors, a peft
               LoRA adapter for encoder/, `PeftModel.from_pretrained(AutoModel.from_pretrained(encoder), adapter)`

Exported: the BERT-family sources (minilm, hf-bert, random), whose blocks are transformers' own BertLayer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mpsl.config import Config, EncoderConfig
from mpsl.errors import MpslError
from mpsl.experiment.results import RunResult
from mpsl.experiment.run import load_results
from mpsl.packaged import local_model, minilm_dir

EXPORTABLE = ("minilm", "hf-bert", "random")  # sources whose blocks are transformers' BertLayer
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_BLOCKS, _LAYERS = "encoder.blocks.", "encoder.layer."  # mpsl's server checkpoint -> transformers' BertModel
_LORA = (".lora_A.default.", ".lora_B.default.")


def method_dir(run: Path, method: str | None) -> Path:
    """The folder of one method's results: `run` itself, or its `method` (default: mpsl, else the first)."""
    if (run / "results.json").is_file():
        return run
    methods = [r.method for r in load_results(run)]
    name = method or ("mpsl" if "mpsl" in methods else methods[0])
    if name not in methods:
        raise MpslError(f"{run} has no results for method {name!r} (it has: {', '.join(methods)})")
    return run / name


def _base_model(enc: EncoderConfig) -> tuple[nn.Module, Path | None]:
    """The BertModel the run started from, and the folder its tokenizer files are in (None for random)."""
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    if enc.source == "random":  # the architecture of models.encoder._random; embeddings freshly initialized
        config = BertConfig(vocab_size=30522, hidden_size=enc.width, num_hidden_layers=enc.depth,
                            num_attention_heads=enc.heads, intermediate_size=int(enc.width * enc.mlp_ratio),
                            max_position_embeddings=512, hidden_dropout_prob=enc.dropout,
                            attention_probs_dropout_prob=enc.dropout)
        return BertModel(config), None
    path = local_model(enc.path, "model.encoder.path") if enc.path else minilm_dir()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a base without pooler weights gets fresh ones: AutoModel expects one
    try:
        config = BertConfig.from_pretrained(path, local_files_only=True)
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = enc.dropout  # as the run had it
        return BertModel.from_pretrained(path, config=config, local_files_only=True), path
    except (OSError, ValueError, RuntimeError) as exc:
        raise MpslError(f"cannot load the run's base encoder from {path}: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _split(server: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The server checkpoint's blocks as BertModel keys: (block weights, LoRA weights in peft's saved names)."""
    blocks, lora = {}, {}
    for key, value in server.items():
        if not key.startswith(_BLOCKS):
            continue  # the head, the adapters, the retrieval temperature: not the encoder
        name = _LAYERS + key.removeprefix(_BLOCKS)
        if any(part in name for part in _LORA):
            for part in _LORA:
                name = name.replace(part, part.replace("default.", ""))
            lora[f"base_model.model.{name}"] = value
        else:
            blocks[name.replace(".base_layer.", ".")] = value
    return blocks, lora


def export_encoder(folder: Path, out: Path) -> list[Path]:
    """Write `out`/encoder (and `out`/adapter for LoRA) from the results and server checkpoint in `folder`."""
    cfg: Config = RunResult.load(folder / "results.json").config
    enc = cfg.model.encoder
    if enc.source not in EXPORTABLE:
        raise MpslError(f"mpsl export: encoder source {enc.source!r} is not exported; the BERT-family sources are "
                        f"({', '.join(EXPORTABLE)}), whose blocks transformers' BertModel loads")
    if cfg.model.client_blocks:
        raise MpslError(f"mpsl export: the run trained its first {cfg.model.client_blocks} encoder blocks on the "
                        "clients (model.client_blocks), one copy each, so no single trained encoder exists to export")
    path = folder / "server.safetensors"
    if not path.is_file():
        raise MpslError(f"{path} is missing: the run did not finish")
    try:
        blocks, lora = _split(load_file(str(path)))
    except (OSError, SafetensorError) as exc:
        raise MpslError(f"{path} cannot be read: {str(exc).splitlines()[0]}") from None
    torch.manual_seed(cfg.seed)
    model, tokenizer_dir = _base_model(enc)
    expected = {k for k in model.state_dict() if k.startswith(_LAYERS)}
    if set(blocks) != expected:
        raise MpslError(f"{path} does not hold the blocks of the configured encoder: missing "
                        f"{sorted(expected - set(blocks))[:3]}, unexpected {sorted(set(blocks) - expected)[:3]}")
    model.load_state_dict(blocks, strict=False)
    written = [_save(model, out / "encoder")]
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, out / "encoder" / name)
    if enc.finetune == "lora":
        written.append(_save_adapter(model, lora, enc, out / "adapter", out / "encoder"))
    return written


def _save(model: nn.Module, folder: Path) -> Path:
    from transformers.utils import logging as hf_logging

    folder.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()  # one small file: no "Writing model shards" bar
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _save_adapter(model: nn.Module, lora: dict[str, torch.Tensor], enc: EncoderConfig, folder: Path,
                  base: Path) -> Path:
    """The LoRA weights as a peft adapter of the exported encoder: the same rank, alpha and target layers."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    targets = sorted({k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in lora})
    if not targets:
        raise MpslError("model.encoder.finetune is lora, but the server checkpoint holds no LoRA weights")
    config = LoraConfig(r=enc.lora.rank, lora_alpha=enc.lora.alpha, lora_dropout=enc.lora.dropout,
                        target_modules=targets)
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = str(base)  # the adapter's base, for AutoPeftModel
    outcome = set_peft_model_state_dict(peft_model, lora)
    missing = [k for k in outcome.missing_keys if "lora_" in k]
    if missing or outcome.unexpected_keys:
        raise MpslError(f"the LoRA weights do not fit the encoder: missing {missing[:3]}, "
                        f"unexpected {outcome.unexpected_keys[:3]}")
    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(folder)
    return folder
