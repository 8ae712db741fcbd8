"""The design's first test: one MPSL step over K clients equals one unsplit step on the concatenated batch.

The unsplit reference is plain autograd on one graph: K client-model copies (identical at the start),
each applied to its own slice, one server, the mean loss over all B samples, Adam everywhere.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mpsl.data import load_dataset
from mpsl.models import build_split_model
from mpsl.protocol import mpsl_step
from mpsl.runtime import InProcessHandle
from mpsl.tasks import ClassificationTask
from tests.helpers import adam, split_parties, tiny_config

SIZES = [3, 2, 4]  # unequal client batches: weights 3/9, 2/9, 4/9


def _unsplit_step(clients, server, shards, block_grads: dict | None = None) -> torch.Tensor:
    """The reference: one graph over every client's slice, the mean loss over all B samples, Adam everywhere;
    `block_grads` receives the encoder blocks' gradients before the step."""
    opts = [adam(m) for m in [*clients, server]]
    tokens = [m.embed(s.inputs) for m, s in zip(clients, shards, strict=True)]
    joint = {mod: torch.cat([t[mod] for t in tokens]) for mod in tokens[0]}  # [B, T_m, D]
    outputs = server(joint).split(SIZES)
    logits = torch.cat([m.head(o) for m, o in zip(clients, outputs, strict=True)])  # [B, C]
    loss = F.cross_entropy(logits, torch.cat([s.labels for s in shards]))
    loss.backward()
    if block_grads is not None:
        block_grads.update({n: p.grad.clone() for n, p in server.named_parameters() if n.startswith("encoder.blocks.")})
    for opt in opts:
        opt.step()
    return loss



@pytest.mark.parametrize("fusion", ["early", "late"])
@pytest.mark.parametrize("head", ["client", "server"])
def test_one_mpsl_step_equals_one_unsplit_step(head: str, fusion: str) -> None:
    # Prepare
    cfg = tiny_config(f"model.head={head}", f"model.fusion={fusion}", "model.encoder.trainable_blocks=1")
    data = load_dataset(cfg.data)
    template, server_model = build_split_model(cfg.model, data.spec, seed=0)
    shards = [data.train.subset(torch.arange(sum(SIZES[:k]), sum(SIZES[:k + 1]))) for k in range(len(SIZES))]
    ref_clients = [copy.deepcopy(template) for _ in SIZES]
    ref_server = copy.deepcopy(server_model)
    clients, server = split_parties(template, server_model, shards, ClassificationTask())

    # Execute: the split step
    result = mpsl_step(server, [InProcessHandle(c) for c in clients], step=0)

    # Execute: the unsplit reference
    loss = _unsplit_step(ref_clients, ref_server, shards)

    # Assert
    assert result is not None and result.batch_sizes == SIZES
    assert result.loss == pytest.approx(loss.item(), rel=1e-5)
    for name, p in server.model.named_parameters():
        torch.testing.assert_close(p, dict(ref_server.named_parameters())[name], atol=1e-6, rtol=1e-5,
                                   msg=f"server {name}")
    for k, (c, ref) in enumerate(zip(clients, ref_clients, strict=True)):
        for name, p in c.model.named_parameters():
            torch.testing.assert_close(p, dict(ref.named_parameters())[name], atol=1e-6, rtol=1e-5,
                                       msg=f"client {k} {name}")
    moved = [not torch.equal(p, q) for p, q in zip(server.model.parameters(), server_model.parameters(), strict=True)]
    assert any(moved), "the step changed no server parameter: the comparison would be vacuous"


@pytest.mark.parametrize(("head", "fusion"), [("client", "early"), ("server", "late")])
def test_a_deeper_cut_computes_what_the_whole_encoder_computes(head: str, fusion: str) -> None:
    # Prepare: the same weights cut after the tokenizers (reference, one graph) and one block later (split)
    cfg = tiny_config(f"model.head={head}", f"model.fusion={fusion}", "model.encoder.trainable_blocks=2")
    deep = cfg.replace(**{"model.client_blocks": 1})
    data = load_dataset(cfg.data)
    template, server_model = build_split_model(deep.model, data.spec, seed=0)
    ref_template, ref_server = build_split_model(cfg.model, data.spec, seed=0)
    shards = [data.train.subset(torch.arange(sum(SIZES[:k]), sum(SIZES[:k + 1]))) for k in range(len(SIZES))]
    ref_clients = [copy.deepcopy(ref_template) for _ in SIZES]
    clients, server = split_parties(template, server_model, shards, ClassificationTask())
    grads: dict[str, torch.Tensor] = {}  # each block's gradient; block 0's summed over the clients' copies
    for prefix, module in [("encoder.blocks.1.", server.model.encoder.blocks[0]),
                           *[("encoder.blocks.0.", c.model.blocks.blocks[0]) for c in clients]]:
        for name, p in module.named_parameters():  # read as they arrive: the parties clear them after a step
            p.register_post_accumulate_grad_hook(
                lambda q, key=prefix + name: grads.__setitem__(key, grads.get(key, 0) + q.grad.clone()))

    # Execute: the split step, and the unsplit reference with every block on the server
    result = mpsl_step(server, [InProcessHandle(c) for c in clients], step=0)
    ref_grads: dict[str, torch.Tensor] = {}
    loss = _unsplit_step(ref_clients, ref_server, shards, ref_grads)

    # Assert: the loss; every block's gradient, block 0's as the sum of the clients' shares (Adam's first step
    # divides by |g| and would magnify the rounding of a batch split in three); each client's tokenizers and
    # head after its step
    assert len(server.model.encoder.blocks) == 1 and all(c.model.blocks.depth == 1 for c in clients)
    assert result is not None and result.loss == pytest.approx(loss.item(), rel=1e-5)
    assert set(grads) == set(ref_grads)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=f"gradient of {name}")
    assert any(float(ref_grads[n].abs().max()) > 0 for n in ref_grads if n.startswith("encoder.blocks.0."))
    for c, ref in zip(clients, ref_clients, strict=True):
        mine = dict(c.model.named_parameters())
        for name, p in ref.named_parameters():
            torch.testing.assert_close(mine[name], p, atol=1e-6, rtol=1e-5, msg=f"client {c.client_id} {name}")
