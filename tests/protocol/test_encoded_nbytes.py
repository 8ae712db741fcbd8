"""Bytes counted from shapes are the bytes the codec writes, and a counted hand-over delivers what decode would."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsl.errors import ProtocolError
from mpsl.protocol import Codec, CutGrad, FeatureGrad, Features, Tokens, Weights, encoded_nbytes, payload_nbytes
from mpsl.protocol.serde import wire_copy

MESSAGES = [
    Tokens(3, 7, {"image": torch.randn(2, 5, 4), "audio": torch.randn(2, 3, 4)}),
    Tokens(12345, 0, {"audio": torch.randn(1, 109, 8)}),  # a client lacking a modality, longer ids
    Features(7, torch.randn(2, 2, 4), 0.25),
    Features(1_000_000, torch.randn(5, 10), 1 / 3),  # logits; a share that prints with 16 digits
    FeatureGrad(7, torch.randn(2, 2, 4), 1.5, 1, 2),
    FeatureGrad(8, torch.randn(3, 6, 4), 2.3025851249694824, 0, 3),
    CutGrad(7, {"image": torch.randn(2, 5, 4), "audio": torch.randn(2, 3, 4)}, 0.25),
    CutGrad(9, {"captions": torch.zeros(0, 5, 4)}, 1.0),  # an empty tensor still has a header entry
    Weights(2, 96, {"tokenizers.image.proj.weight": torch.randn(4, 1, 2, 2), "head.fc.bias": torch.randn(3)}),
]
EMPTY = Weights(0, 0, {})  # encodes; the codec cannot decode a message whose only dict is empty


@pytest.mark.parametrize("msg", [*MESSAGES, EMPTY], ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("wire", ["float32", "float16", "bfloat16"])
def test_the_count_from_shapes_equals_the_encoded_length_for_every_message_kind(msg: object, wire: str) -> None:
    # Execute
    counted = encoded_nbytes(msg, wire)
    frame = Codec(wire).encode(msg)
    # Assert: the count, and the frame itself is the documented prefix + compact JSON header + payload
    assert counted == len(frame) == Codec(wire).encoded_nbytes(msg)
    _assert_documented_frame(frame, msg, wire)


def _assert_documented_frame(frame: bytes, msg: object, wire: str) -> None:
    """Independently of the codec's own header builder: prefix, json.dumps of the header, payload."""
    header = json.dumps({"type": type(msg).__name__, "fields": _scalars(msg), "tensors": _entries(msg, wire)},
                        separators=(",", ":")).encode()
    assert frame[9:9 + len(header)] == header
    assert len(frame) == 9 + len(header) + payload_nbytes(msg, wire)


def _scalars(msg: object) -> dict:
    return {k: v for k, v in vars(msg).items() if not isinstance(v, torch.Tensor | dict)}


def _entries(msg: object, wire: str) -> list[dict]:
    named = []
    for k, v in vars(msg).items():
        if isinstance(v, torch.Tensor):
            named.append((k, v))
        elif isinstance(v, dict):
            named += [(f"{k}.{m}", t) for m, t in v.items()]
    return [{"name": k, "dtype": wire, "shape": list(t.shape)} for k, t in named]


@settings(max_examples=40, deadline=None)
@given(client=st.integers(0, 10**9), step=st.integers(0, 10**9), b=st.integers(0, 7), t=st.integers(1, 9),
       share=st.floats(1e-9, 1.0), loss=st.floats(0.0, 1e6))
def test_the_count_holds_for_any_ids_shares_and_losses(client: int, step: int, b: int, t: int, share: float,
                                                       loss: float) -> None:
    tokens = {"image": torch.zeros(b, t, 3)}
    for msg in (Tokens(client, step, tokens), Features(step, torch.zeros(b, t), share),
                FeatureGrad(step, torch.zeros(b, t), loss, b, b), CutGrad(step, tokens, share)):
        frame = Codec().encode(msg)
        assert encoded_nbytes(msg) == len(frame)
        _assert_documented_frame(frame, msg, "float32")


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
def test_a_counted_hand_over_delivers_what_decoding_the_frame_delivers(msg: object, wire: str) -> None:
    # Execute
    codec = Codec(wire)
    decoded, copied = codec.decode(codec.encode(msg)), wire_copy(msg, wire)
    # Assert: same values, fresh memory
    assert type(copied) is type(decoded)
    for name, want in vars(decoded).items():
        got, sent = getattr(copied, name), getattr(msg, name)
        if isinstance(want, torch.Tensor):
            want, got, sent = {"": want}, {"": got}, {"": sent}
        if isinstance(want, dict):
            assert list(got) == list(want)
            for key in want:
                assert got[key].dtype == torch.float32 and torch.equal(got[key], want[key])
                assert got[key].numel() == 0 or got[key].data_ptr() != sent[key].data_ptr()
        else:
            assert got == want


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_counted_hand_over_refuses_what_decode_refuses(value: float) -> None:
    bad = Features(0, torch.tensor([[1.0, value, -2.0]]), 1.0)
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        Codec().decode(Codec().encode(bad))
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        wire_copy(bad)


def test_an_in_process_handle_that_really_encodes_counts_and_delivers_the_same() -> None:
    # Prepare: the same client twice, one handle counting from shapes (default), one encoding every message
    from mpsl.data import load_dataset
    from mpsl.experiment.methods.split_learning import Mpsl
    from mpsl.protocol import mpsl_step
    from mpsl.runtime import InProcessHandle
    from tests.helpers import tiny_config

    cfg = tiny_config("runtime.clients=loop", "partition.kind=iid")
    counted, encoded = Mpsl(cfg, load_dataset(cfg.data)), Mpsl(cfg, load_dataset(cfg.data))
    encoded.handles = [InProcessHandle(c, encode=True) for c in encoded.clients]
    # Execute
    for sim in (counted, encoded):
        for h in sim.handles:
            h.start_epoch(0)
    results = [[mpsl_step(sim.server, sim.handles, s) for s in range(3)] for sim in (counted, encoded)]
    # Assert: the same steps and, message for message, the same bytes
    assert [r.loss for r in results[0]] == [r.loss for r in results[1]]
    assert [h.traffic for h in counted.handles] == [h.traffic for h in encoded.handles]
    assert all(h.encode for h in encoded.handles) and not any(h.encode for h in counted.handles)
