from __future__ import annotations

import contextlib
import re
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsl.errors import ProtocolError
from mpsl.protocol import Codec, CutGrad, FeatureGrad, Features, Tokens, payload_nbytes
from mpsl.protocol.serde import DecodeBounds

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


def _with_header(header: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("<4sBI", b"MPSL", 1, len(header)) + header + payload


_GRAD = b'{"name":"grad","dtype":"float32","shape":[1,2]}'
_FIELDS = b'{"step":1,"loss":0.5,"correct":0,"count":1}'


def _feature_grad(fields: bytes = _FIELDS, tensors: bytes = b"[" + _GRAD + b"]", kind: bytes = b'"FeatureGrad"',
                  payload: bytes = b"\0" * 8) -> bytes:
    return _with_header(b'{"type":' + kind + b',"fields":' + fields + b',"tensors":' + tensors + b"}", payload)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (_with_header(b"[" * 5000 + b"]" * 5000), "nests deeper"),
        (_with_header(b"[" * 100_000), "nests deeper|not valid"),
        (_feature_grad(fields=b'{"step":[[[[1]]]],"loss":0.5,"correct":0,"count":1}'), "nests deeper"),
        (_with_header(b"[]"), "exactly type, fields and tensors"),
        (_with_header(b'"FeatureGrad"'), "exactly type, fields and tensors"),
        (_feature_grad(kind=b"[1]"), "unknown message type"),
        (_feature_grad(kind=b'{"a":1}'), "unknown message type"),
        (_feature_grad(fields=b"[1,2]"), "fields is list"),
        (_feature_grad(fields=b'"step"'), "fields is str"),
        (_feature_grad(tensors=b'{"grad":1}'), "tensors is dict"),
        (_feature_grad(tensors=b"[1]"), "tensor entry"),
        (_feature_grad(tensors=b'[{"name":7,"dtype":"float32","shape":[1,2]}]'), "not a string"),
        (_feature_grad(tensors=b'[{"name":"grad","dtype":["float32"],"shape":[1,2]}]'), "dtype"),
        (_feature_grad(tensors=b'[{"name":"grad","dtype":"int64","shape":[1,2]}]'), "dtype"),
        (_feature_grad(tensors=b'[{"name":"grad","dtype":"float32","shape":"1,2"}]'), "not a list of sizes"),
        (_feature_grad(tensors=b'[{"name":"grad","dtype":"float32","shape":[1.0,2]}]'), "not a list of sizes"),
        (_feature_grad(tensors=b'[{"name":"grad","dtype":"float32","shape":[true,2]}]'), "not a list of sizes"),
        (_feature_grad(tensors=b'[{"name":"grad","dtype":"float32","shape":[-1,-2]}]'), "outside"),
        (_feature_grad(tensors=b'[{"name":"grad","dtype":"float32","shape":[' + b",".join([b"1"] * 100) + b"]}]"),
         "100 dimensions"),
        (_feature_grad(tensors=b'[{"name":"grad","dtype":"float32","shape":[0,' + b"9" * 5000 + b"]}]"),
         "5000 digits"),
        (_feature_grad(tensors=b'[{"name":"grad","dtype":"float32","shape":[2147483647,2147483647,2147483647]}]'),
         "bytes expected"),
        (_feature_grad(tensors=b'[{"name":"grad","dtype":"float32","shape":[0,9223372036854775807]}]'), "outside"),
        (_feature_grad(tensors=b'[{"name":"grad","dtype":"float32","shape":[1,2],"x":1}]'), "exactly name, dtype"),
        (_feature_grad(tensors=b'[{"name":"features","dtype":"float32","shape":[1,2]}]'), "not one of its tensor"),
        (_feature_grad(tensors=b'[{"name":"grad.x","dtype":"float32","shape":[1,2]}]'), "not one of its tensor"),
        (_feature_grad(tensors=b'[{"name":"loss","dtype":"float32","shape":[1,2]}]'), "not one of its tensor"),
        (_feature_grad(tensors=b"[" + _GRAD + b"," + _GRAD + b"]", payload=b"\0" * 16), "appears twice"),
        (_feature_grad(fields=b'{"step":1,"loss":0.5,"correct":0,"count":1,"grad":3}'), "not one of its scalar"),
        (_feature_grad(fields=b'{"step":1,"step":2,"loss":0.5,"correct":0,"count":1}'), "same key twice"),
        (_feature_grad(fields=b'{"step":1,"loss":NaN,"correct":0,"count":1}'), "not a finite"),
        (_feature_grad(fields=b'{"step":1,"loss":-Infinity,"correct":0,"count":1}'), "not a finite"),
        (_feature_grad(fields=b'{"step":1,"loss":1e999,"correct":0,"count":1}'), "not finite"),
        (_feature_grad(fields=b'{"step":' + b"1" * 5000 + b',"loss":0.5,"correct":0,"count":1}'), "5000 digits"),
        (_feature_grad(fields=b'{"step":99999999999999999999,"loss":0.5,"correct":0,"count":1}'), "20 digits"),
        (_feature_grad(fields=b'{"step":9999999999999999999,"loss":0.5,"correct":0,"count":1}'), "64-bit"),
        (_feature_grad(fields=b'{"step":true,"loss":0.5,"correct":0,"count":1}'), "expected an integer"),
        (_feature_grad(fields=b'{"step":null,"loss":0.5,"correct":0,"count":1}'), "expected an integer"),
        (_feature_grad(fields=b'{"step":1,"loss":"0.5","correct":0,"count":1}'), "finite number"),
        (_feature_grad(fields=b'{"step":1,"loss":{},"correct":0,"count":1}'), "finite number"),
        (_with_header(b'{"type":"FeatureGrad","fields":{},"tensors":[]}\xff'), "UTF-8"),
        (_with_header(b'\xff\xfe{\x00}\x00'), "UTF-8"),
        (_with_header(b" " * (2**20 + 1)), "header of 1048577 bytes, the limit is 1048576"),
        (_with_header(b'{"type":"Tokens","fields":{"client_id":0,"step":1},"tensors":[]}'), "expected fields"),
    ],
)
def test_every_malformed_header_is_a_protocol_error_naming_what_is_wrong(frame: bytes, match: str) -> None:
    # Prepare
    codec = Codec()

    # Execute
    with pytest.raises(ProtocolError) as refused:
        codec.decode(frame)

    # Assert
    assert re.search(match, str(refused.value)), str(refused.value)
    assert len(str(refused.value)) < 300 and str(refused.value).isascii()


def test_a_header_over_the_bound_is_refused_before_it_is_parsed() -> None:
    frame = _feature_grad()
    header_bytes = struct.unpack_from("<4sBI", frame)[2]

    with pytest.raises(ProtocolError, match=f"header of {header_bytes} bytes, the limit is {header_bytes - 1}"):
        Codec().decode(frame, DecodeBounds(max_header_bytes=header_bytes - 1))
    assert type(Codec().decode(frame, DecodeBounds(max_header_bytes=header_bytes))) is FeatureGrad


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats()
    | st.text(max_size=8) | st.sampled_from(["Tokens", "FeatureGrad", "grad", "tokens.image", "float32", "step"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "fields", "tensors", "name", "dtype", "shape", "step", "loss", "correct",
                         "count", "client_id", "grad"]) | st.text(max_size=4), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=1500, deadline=None)
@given(header=_JSON, payload=st.binary(max_size=64))
def test_arbitrary_json_headers_give_a_message_or_a_protocol_error(header: object, payload: bytes) -> None:
    import json

    frame = _with_header(json.dumps(header).encode(), payload)

    with contextlib.suppress(ProtocolError):
        Codec().decode(frame)
