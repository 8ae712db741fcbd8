"""How traffic per client grows with the backbone, for MPSL and FedAvg, computed from shapes alone.

Models are built on the meta device (no weights, no memory), so the paper's ViT-Ti..ViT-H sweep
costs seconds. The run's tokenizer settings are kept, so the number of tokens per sample is fixed
and only the server model grows:

    MPSL   per client per epoch:  n_k x 2 x (sum_m T_m x D + F) x 4 bytes   tokens/features up, grads down
    FedAvg per client per round:  2 x trainable parameters x 4 bytes        model down, model up
"""

from __future__ import annotations

from typing import Any

import torch

from mpsl.config import Config
from mpsl.data import DatasetSpec
from mpsl.models import PRESETS, WholeModel, build_split_model, example_inputs, random_encoder_overrides
from mpsl.protocol.serde import element_bytes

FP32 = element_bytes("float32")


def model_traffic(cfg: Config, spec: DatasetSpec, samples_per_client: float) -> dict[str, Any]:
    """Per-client payload bytes of one epoch (MPSL) and one round (FedAvg) of the model `cfg` builds."""
    with torch.device("meta"):
        client, server = build_split_model(cfg.model, spec, cfg.seed)
        tokens = client.embed(example_inputs(spec))  # m -> [1, T_m, D]
        features = server(tokens)  # [1, M, D] or [1, C]
    cut_numel = sum(t.numel() for t in tokens.values()) + features.numel()  # per sample, one direction
    whole = WholeModel(client, server)
    trainable = sum(p.numel() for p in whole.parameters() if p.requires_grad)
    return {
        "encoder_parameters": sum(p.numel() for p in server.encoder.parameters()),
        "mpsl_bytes_per_sample": 2 * cut_numel * FP32,
        "mpsl_bytes_per_client_epoch": samples_per_client * 2 * cut_numel * FP32,
        "fedavg_bytes_per_client_round": 2 * trainable * FP32,
    }


def scaling_table(cfg: Config, spec: DatasetSpec, samples_per_client: float) -> list[dict[str, Any]]:
    """model_traffic with the encoder swapped for every backbone preset, smallest first."""
    table = [{"preset": name, **model_traffic(cfg.replace(**random_encoder_overrides(name)), spec, samples_per_client)}
             for name in PRESETS]
    return sorted(table, key=lambda row: row["encoder_parameters"])
