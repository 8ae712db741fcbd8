"""The gRPC server refuses what does not fit, before it reaches the model."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsl.errors import ProtocolError
from mpsl.protocol import Codec
from mpsl.runtime.network import mpsl_pb2 as pb
from mpsl.runtime.network.events import Joined, Listening, Refused
from mpsl.runtime.network.framing import Reassembler, chunks
from tests.helpers import tiny_config
from tests.runtime.network_helpers import EventLog, LiveServer, RogueClient, frame

# the tiny model: image 1 + 2x2 tokens, audio 1 + 2x3 tokens, width 32, client batch <= 12
IMAGE, AUDIO, WIDTH = 5, 7, 32


def _tokens(step: int, image_shape: list[int], dtype: str = "float32", fill: float = 0.5,
            audio_shape: list[int] | None = None) -> bytes:
    size = {"float32": 4, "float64": 8}[dtype]
    audio_shape = audio_shape or [image_shape[0], AUDIO, WIDTH]
    image = np.full(math.prod(image_shape), fill, dtype=np.float32 if dtype == "float32" else np.float64)
    audio = np.zeros(math.prod(audio_shape), dtype=np.float32)
    assert image.itemsize == size
    return frame("Tokens", {"client_id": 0, "step": step},
                 [("tokens.image", dtype, image_shape, image.tobytes()),
                  ("tokens.audio", "float32", audio_shape, audio.tobytes())])


def _swapped(step: int) -> bytes:
    """Both modalities, audio first: the server's order is image, audio."""
    image, audio = np.zeros(4 * IMAGE * WIDTH, np.float32), np.zeros(4 * AUDIO * WIDTH, np.float32)
    return frame("Tokens", {"client_id": 0, "step": step},
                 [("tokens.audio", "float32", [4, AUDIO, WIDTH], audio.tobytes()),
                  ("tokens.image", "float32", [4, IMAGE, WIDTH], image.tobytes())])


@pytest.fixture()
def server(tmp_path):
    live = LiveServer(tiny_config("deploy.step_timeout=10", "deploy.min_participants=1", f"out_dir={tmp_path}"))
    yield live
    live.close()


def _params(live: LiveServer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in live.runtime.server.model.parameters()]


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda step: _tokens(step, [4, IMAGE, WIDTH], dtype="float64"), "dtype 'float64'"),
        (lambda step: _tokens(step, [4, IMAGE + 1, WIDTH]), "tokens.image: shape (4, 6, 32)"),
        (lambda step: _tokens(step, [4, IMAGE, WIDTH], fill=float("nan")), "NaN"),
        (lambda step: _tokens(step, [13, IMAGE, WIDTH]), "batch of 13 samples"),
        (lambda step: _tokens(step, [4, IMAGE, WIDTH], audio_shape=[3, AUDIO, WIDTH]), "disagree on the batch"),
        (lambda step: _tokens(step + 1, [4, IMAGE, WIDTH]), "tokens for step"),
        (lambda step: b"MPSL" + b"\x01" + b"\xff" * 8, "header"),
        (_swapped, "non-empty part of them"),
    ],
    ids=["dtype", "shape", "nan", "batch", "ragged", "step", "garbage", "order"],
)
def test_a_bad_message_is_refused_with_invalid_argument_and_changes_nothing(server, make, expect: str) -> None:
    # Prepare
    before = _params(server)
    rogue = RogueClient(server.port)
    step = rogue.join_until_embed()

    # Execute
    for data, last in chunks(make(step), server.runtime.limits.chunk_bytes):
        rogue.send(pb.ClientMessage(frame=pb.Chunk(data=data, last=last)))
    with pytest.raises(grpc.RpcError) as refused:
        while True:
            rogue.next()
    rogue.close()

    # Assert
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expect in refused.value.details()
    assert all(torch.equal(a, b) for a, b in zip(before, _params(server), strict=True))


def test_an_oversized_message_is_refused_before_it_is_buffered(server) -> None:
    before = _params(server)
    rogue = RogueClient(server.port)
    rogue.join_until_embed()
    limit = server.runtime.limits.max_frame_bytes

    piece = b"\0" * 60_000
    for _ in range(limit // len(piece) + 2):
        rogue.send(pb.ClientMessage(frame=pb.Chunk(data=piece, last=False)))
    with pytest.raises(grpc.RpcError) as refused:
        while True:
            rogue.next()
    rogue.close()

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"limit of {limit} bytes" in refused.value.details()
    assert all(torch.equal(a, b) for a, b in zip(before, _params(server), strict=True))


def test_a_wrong_token_is_refused_before_anything_is_read(tmp_path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("0: right-token-0123456789\n1: right-token-1123456789\n2: right-token-2123456789\n")
    with EventLog() as log:
        live = LiveServer(tiny_config(f"out_dir={tmp_path}"), tokens_file=str(tokens))
        try:
            for token in ("wrong-token-0123456789", None):
                rogue = RogueClient(live.port, client_id=0, token=token)
                rogue.send(pb.ClientMessage(join=pb.Join(client_id=0, samples=1)))
                with pytest.raises(grpc.RpcError) as refused:
                    rogue.next()
                rogue.close()
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert live.runtime.hub.connected() == []
        finally:
            live.close()

    assert [e.reason for e in log.of(Refused)] == ["unknown client id or wrong token"] * 2
    assert log.of(Joined) == [] and [e.auth for e in log.of(Listening)] == ["tokens"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=6), st.integers(min_value=1, max_value=400))
def test_random_chunks_decode_to_a_valid_message_or_the_projects_error(pieces: list[bytes], limit: int) -> None:
    assembler, codec = Reassembler(limit), Codec()
    try:
        for i, piece in enumerate(pieces):
            whole = assembler.add(piece, last=i == len(pieces) - 1)
        msg = codec.decode(whole)
    except ProtocolError:
        return
    assert type(msg).__name__ in {"Tokens", "Features", "FeatureGrad", "CutGrad", "Weights"}


def test_chunks_rejoin_to_the_same_frame() -> None:
    data = bytes(range(256)) * 41
    assembler = Reassembler(len(data))

    parts = list(chunks(data, 1000))
    joined = [assembler.add(piece, last) for piece, last in parts]

    assert [last for _, last in parts].count(True) == 1 and joined[-1] == data and joined[:-1] == [None] * 10
    assert list(chunks(b"", 10)) == [(b"", True)]


def test_status_reports_progress_and_the_connected_clients(server) -> None:
    import asyncio

    from mpsl.deploy.server_app import status
    from mpsl.errors import MpslError
    from tests.runtime.network_helpers import free_port

    rogue = RogueClient(server.port)
    step = rogue.join_until_embed()

    info = asyncio.run(status(f"127.0.0.1:{server.port}", None))
    rogue.close()

    assert info["state"] == "training" and info["step"] == step
    assert [(c["client_id"], c["epoch"]) for c in info["connected"]] == [(0, 1)]
    with pytest.raises(MpslError, match="no status"):
        asyncio.run(status(f"127.0.0.1:{free_port()}", None))
