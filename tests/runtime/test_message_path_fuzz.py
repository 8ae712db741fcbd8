"""Property-based fuzz of the server's whole message path: chunk -> Reassembler -> decode -> Expected checks, through
`Connection.receive`, exactly the code a stream's reader runs. Whatever a client sends, the only exception is
ProtocolError (the stream is closed with INVALID_ARGUMENT), whatever is accepted is a checked message, and a valid
message is accepted afterwards on a fresh connection."""

from __future__ import annotations

import json
import struct
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsl.errors import ProtocolError
from mpsl.protocol import Codec, FeatureGrad, Tokens
from mpsl.runtime.network import mpsl_pb2 as pb
from mpsl.runtime.network.framing import chunks
from mpsl.runtime.network.service import Connection, Limits
from mpsl.runtime.network.validate import Expected

EXPECTED = Expected({"image": 5, "audio": 7}, 4, 3)  # T_m per modality, width 4, batch <= 3
LIMITS = Limits(step_timeout=1.0, chunk_bytes=512, max_frame_bytes=4096, max_header_bytes=1024, min_chunk_bytes=64)
STEP = 7
REQUESTS = {  # what the server asked: reply kind, step, feature shape
    "tokens": ("tokens", STEP, None),
    "feature_grad": ("feature_grad", STEP, (2, 2, 4)),
    "done": ("done", STEP, None),
}


def _connection(expect: str) -> Connection:
    conn = Connection(0, "fuzz", Codec(), EXPECTED, LIMITS)
    conn.expecting.append(REQUESTS[expect])
    return conn


def _valid(kind: str, batch: int = 2, step: int = STEP, modalities: tuple[str, ...] = ("image", "audio")) -> bytes:
    if kind == "tokens":
        sizes = {"image": 5, "audio": 7}
        return Codec().encode(Tokens(0, step, {m: torch.rand(batch, sizes[m], 4) for m in modalities}))
    return Codec().encode(FeatureGrad(step, torch.rand(batch, 2, 4), 0.5, min(1, batch), batch))


_JSON = st.recursive(
    st.none() | st.booleans() | st.sampled_from([-1, 0, 1, 2, 3, 4, 7, 2**31, 2**63, -(2**63) - 1, 10**30])
    | st.integers() | st.floats() | st.text(max_size=6)
    | st.sampled_from(["Tokens", "FeatureGrad", "Features", "tokens.image", "tokens.audio", "grad", "float32",
                       "bfloat16", "float64"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def _edited_header(draw: st.DrawFn, frame: bytes) -> bytes:
    """The frame with one edit to its (otherwise valid) header: a value replaced, a key removed or added."""
    length = struct.unpack_from("<4sBI", frame)[2]
    header: dict[str, Any] = json.loads(frame[9:9 + length])
    places: list[tuple[Any, Any]] = [(header, k) for k in header]
    places += [(header["fields"], k) for k in header["fields"]]
    for entry in header["tensors"]:
        places += [(entry, k) for k in entry] + [(entry["shape"], i) for i in range(len(entry["shape"]))]
    container, key = draw(st.sampled_from(places))
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace" or isinstance(container, list):
        container[key] = draw(_JSON)
    elif action == "delete":
        del container[key]
    else:
        container[draw(st.text(max_size=6))] = draw(_JSON)
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<4sBI", b"MPSL", 1, len(text)) + text + frame[9 + length:]


@st.composite
def _frame(draw: st.DrawFn) -> bytes:
    """A valid frame of either kind (sometimes of another batch, step or set of modalities), then mutated."""
    kind = draw(st.sampled_from(["tokens", "feature_grad"]))
    frame = _valid(kind, batch=draw(st.integers(1, 4)), step=draw(st.sampled_from([STEP, STEP, 0, STEP + 1])),
                   modalities=draw(st.sampled_from([("image", "audio"), ("image",), ("audio",), ("audio", "image")])))
    mutation = draw(st.sampled_from(["none", "header", "flip", "truncate", "extend", "length", "replace"]))
    if mutation == "header":
        return draw(_edited_header(frame))
    if mutation == "flip":
        data = bytearray(frame)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if mutation == "truncate":
        return frame[:draw(st.integers(0, len(frame) - 1))]
    if mutation == "extend":
        return frame + draw(st.binary(min_size=1, max_size=16))
    if mutation == "length":
        return frame[:5] + struct.pack("<I", draw(st.integers(0, 2**32 - 1))) + frame[9:]
    if mutation == "replace":
        text = json.dumps(draw(_JSON)).encode()
        return struct.pack("<4sBI", b"MPSL", 1, len(text)) + text + draw(st.binary(max_size=64))
    return frame


@st.composite
def _chunked(draw: st.DrawFn) -> list[pb.ClientMessage]:
    """One frame cut at random places (valid chunking, tiny pieces, or a missing last flag)."""
    frame = draw(_frame())
    how = draw(st.sampled_from(["honest", "honest", "random", "unfinished"]))
    if how == "honest":
        return [pb.ClientMessage(frame=pb.Chunk(data=d, last=last)) for d, last in chunks(frame, LIMITS.chunk_bytes)]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(frame)), max_size=5))))
    pieces = [frame[a:b] for a, b in zip([0, *cuts], [*cuts, len(frame)], strict=True)]
    return [pb.ClientMessage(frame=pb.Chunk(data=p, last=how == "random" and i == len(pieces) - 1))
            for i, p in enumerate(pieces)]


_OTHER = st.sampled_from([
    pb.ClientMessage(done=pb.Done()),
    pb.ClientMessage(exhausted=pb.Exhausted(step=STEP)),
    pb.ClientMessage(join=pb.Join(client_id=0, samples=5)),
    pb.ClientMessage(),
])
_STREAM = st.lists(st.one_of(_chunked(), _OTHER.map(lambda m: [m])), min_size=1, max_size=4)


def _assert_checked(reply: Any, expect: str) -> None:
    """Whatever the path accepted is exactly what the request allows."""
    if expect == "tokens" and isinstance(reply, Tokens):
        EXPECTED.check_tokens(reply, 0, STEP)
        assert all(torch.isfinite(t).all() for t in reply.tokens.values())
    elif expect == "feature_grad":
        assert isinstance(reply, FeatureGrad) and reply.grad.shape == (2, 2, 4) and reply.count == 2
        assert 0 <= reply.correct <= 2 and torch.isfinite(reply.grad).all()
    else:
        assert reply is (True if expect == "done" else None)


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(expect=st.sampled_from(list(REQUESTS)), stream=_STREAM)
def test_any_client_stream_gives_checked_messages_or_a_protocol_error_and_a_valid_one_still_passes(
        expect: str, stream: list[list[pb.ClientMessage]]) -> None:
    # Prepare
    conn = _connection(expect)
    assembler = LIMITS.reassembler()

    # Execute: the reader's loop, which closes the stream at the first ProtocolError
    try:
        for messages in stream:
            for message in messages:
                conn.receive(message, assembler)
    except ProtocolError as exc:
        assert str(exc).isascii() and len(str(exc)) < 1000

    # Assert
    while not conn.replies.empty():
        _assert_checked(conn.replies.get_nowait(), expect)
    fresh, fresh_assembler = _connection("tokens"), LIMITS.reassembler()
    for data, last in chunks(_valid("tokens"), LIMITS.min_chunk_bytes):
        fresh.receive(pb.ClientMessage(frame=pb.Chunk(data=data, last=last)), fresh_assembler)
    assert isinstance(fresh.replies.get_nowait(), Tokens)


def test_the_fuzzed_path_accepts_an_honest_client_and_refuses_a_damaged_one() -> None:
    """The fuzz above can fail: the same path takes valid messages and refuses a damaged copy of each."""
    for expect in ("tokens", "feature_grad"):
        conn, assembler = _connection(expect), LIMITS.reassembler()
        for data, last in chunks(_valid(expect), LIMITS.chunk_bytes):
            conn.receive(pb.ClientMessage(frame=pb.Chunk(data=data, last=last)), assembler)
        _assert_checked(conn.replies.get_nowait(), expect)

        damaged, assembler = _connection(expect), LIMITS.reassembler()
        try:
            damaged.receive(pb.ClientMessage(frame=pb.Chunk(data=_valid(expect)[:-1], last=True)), assembler)
        except ProtocolError:
            continue
        raise AssertionError(f"a truncated {expect} frame was accepted")
