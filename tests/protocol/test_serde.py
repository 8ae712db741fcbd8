from __future__ import annotations

import contextlib
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsl.errors import ProtocolError
from mpsl.protocol import Codec, CutGrad, FeatureGrad, Features, Tokens, payload_nbytes

MESSAGES = [
    Tokens(3, 7, {"image": torch.randn(2, 5, 4), "audio": torch.randn(2, 3, 4)}),
    Features(7, torch.randn(2, 2, 4), 0.25),
    FeatureGrad(7, torch.randn(2, 2, 4), 1.5, 1, 2),
    CutGrad(7, {"image": torch.randn(2, 5, 4), "audio": torch.randn(2, 3, 4)}, 0.25),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_is_exact_in_fp32(msg: object) -> None:
    codec = Codec()

    decoded = codec.decode(codec.encode(msg))

    assert type(decoded) is type(msg)
    for name, value in vars(msg).items():
        got = getattr(decoded, name)
        if isinstance(value, torch.Tensor):
            assert torch.equal(got, value)
        elif isinstance(value, dict):
            assert list(got) == list(value) and all(torch.equal(got[k], value[k]) for k in value)
        else:
            assert got == value


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize(("wire", "size"), [("float32", 4), ("float16", 2), ("bfloat16", 2)])
def test_frame_is_payload_plus_small_framing(msg: object, wire: str, size: int) -> None:
    frame = Codec(wire).encode(msg)

    numel = sum(t.numel() for t in vars(msg).values() if isinstance(t, torch.Tensor)) + sum(
        t.numel() for d in vars(msg).values() if isinstance(d, dict) for t in d.values())
    assert payload_nbytes(msg, wire) == numel * size
    header = struct.unpack_from("<4sBI", frame)[2]
    assert len(frame) == payload_nbytes(msg, wire) + 9 + header
    assert header < 300


def test_half_precision_wire_is_lossy_but_close() -> None:
    msg = Features(0, torch.randn(4, 8), 1.0)

    decoded = Codec("float16").decode(Codec("float16").encode(msg))

    assert decoded.features.dtype == torch.float32
    torch.testing.assert_close(decoded.features, msg.features, atol=1e-2, rtol=1e-2)


def _edit_header(frame: bytes, old: bytes, new: bytes) -> bytes:
    """Rewrite the JSON header and fix its length prefix, so only the edited content is wrong."""
    magic, version, length = struct.unpack_from("<4sBI", frame)
    header = frame[9:9 + length]
    assert old in header
    header = header.replace(old, new, 1)
    return struct.pack("<4sBI", magic, version, len(header)) + header + frame[9 + length:]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda f: f[:5], "shorter"),
        (lambda f: b"XXXX" + f[4:], "not an MPSL"),
        (lambda f: f[:-4], "bytes expected"),
        (lambda f: f + b"\x00", "trailing"),
        (lambda f: _edit_header(f, b'"float32"', b'"int64"'), "dtype"),
        (lambda f: _edit_header(f, b'"Features"', b'"Pickled"'), "unknown message type"),
        (lambda f: _edit_header(f, b'"shape":[3,4]', b'"shape":[3,-4]'), "shape"),
        (lambda f: _edit_header(f, b'"shape":[3,4]', b'"shape":[4,4]'), "bytes expected"),
        (lambda f: _edit_header(f, b'"step":0,', b''), "expected fields"),
        (lambda f: _edit_header(f, b'"step":0,', b'"step":"0",'), "Features.step: expected an integer"),
        (lambda f: _edit_header(f, b'"loss_weight":0.5', b'"loss_weight":[1]'), "loss_weight"),
    ],
)
def test_malformed_frames_raise_protocol_errors(mutate, match: str) -> None:
    frame = Codec().encode(Features(0, torch.randn(3, 4), 0.5))

    with pytest.raises(ProtocolError, match=match):
        Codec().decode(mutate(frame))


def test_non_finite_values_are_refused() -> None:
    bad = Features(0, torch.tensor([[1.0, float("nan")]]), 0.5)

    with pytest.raises(ProtocolError, match="NaN"):
        Codec().decode(Codec().encode(bad))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoder(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        Codec().decode(raw)


@settings(max_examples=300, deadline=None)
@given(
    dtype=st.sampled_from(["float32", "float16", "bfloat16", "float64", "int8", "", "x"]),
    shape=st.lists(st.integers(min_value=-2, max_value=2**40), max_size=4),
    payload=st.binary(max_size=256),
    field=st.sampled_from(["grad", "features", "tokens.image", "grad.x"]),
    kind=st.sampled_from(["FeatureGrad", "Features", "Tokens", "Nope"]),
)
def test_random_headers_shapes_and_payloads_give_a_valid_message_or_a_protocol_error(
        dtype: str, shape: list[int], payload: bytes, field: str, kind: str) -> None:
    import json

    header = json.dumps({"type": kind, "fields": {"step": 1, "loss": 0.5, "correct": 0, "count": 1,
                                                  "loss_weight": 1.0, "client_id": 0},
                         "tensors": [{"name": field, "dtype": dtype, "shape": shape}]}).encode()
    frame = struct.pack("<4sBI", b"MPSL", 1, len(header)) + header + payload

    try:
        msg = Codec().decode(frame)
    except ProtocolError:
        return
    tensors = [v for v in vars(msg).values() if isinstance(v, torch.Tensor)]
    tensors += [t for v in vars(msg).values() if isinstance(v, dict) for t in v.values()]
    assert tensors and all(list(t.shape) == shape and t.dtype == torch.float32 for t in tensors)
    assert all(torch.isfinite(t).all() for t in tensors)
