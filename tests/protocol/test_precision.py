"""Mixed precision on the server: bf16 / fp16 autocast steps close to fp32, fp16 overflow is skipped safely."""

from __future__ import annotations

import copy

import pytest
import torch

from mpsl.data import load_dataset
from mpsl.models import build_split_model
from mpsl.protocol import SplitServer
from tests.helpers import tiny_config


def _step(precision: str, scale: float | None = None):
    """One server forward/backward on fixed tokens; returns outputs, cut-layer gradient, server and its start."""
    cfg = tiny_config("model.encoder.source=vit", "model.encoder.depth=2")
    data = load_dataset(cfg.data)
    client, model = build_split_model(cfg.model, data.spec, seed=0)
    start = copy.deepcopy(model)
    server = SplitServer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, precision)
    if scale is not None:
        server.scaler = torch.amp.GradScaler("cpu", init_scale=scale)  # large enough to overflow fp16
    batch = data.train.subset(torch.arange(8))
    tokens = {m: t.detach().requires_grad_(True) for m, t in client.embed(batch.inputs).items()}  # m -> [8, T_m, D]
    outputs = server.forward(tokens)
    upstream = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(1))  # dL/d features
    stepped = server.backward_and_step([outputs], [upstream], list(tokens.values()))
    assert stepped == (server.skip_reason is None)
    return outputs.detach(), tokens["image"].grad, server, start


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_steps_stay_close_to_fp32(precision: str) -> None:
    ref_out, ref_grad, *_ = _step("fp32")

    out, grad, server, start = _step(precision, scale=16.0 if precision == "fp16" else None)

    assert out.dtype == torch.float32 and grad.dtype == torch.float32
    torch.testing.assert_close(out, ref_out, atol=0.05, rtol=0.05)
    assert (grad - ref_grad).norm() < 0.1 * ref_grad.norm()  # unscaled, whatever the fp16 scale was
    moved = [(p - q).abs().max() for p, q in zip(server.model.parameters(), start.parameters(), strict=True)]
    assert max(moved) > 0


def test_an_fp16_overflow_skips_the_update_and_sends_no_gradient() -> None:
    _, grad, server, start = _step("fp16", scale=2.0 ** 120)

    assert torch.count_nonzero(grad) == 0 and "overflow" in server.skip_reason
    assert all(torch.equal(p, q) for p, q in zip(server.model.parameters(), start.parameters(), strict=True))
    assert server.scaler.get_scale() < 2.0 ** 120  # the scaler backs off
