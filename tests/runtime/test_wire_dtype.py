"""deploy.wire_dtype has one meaning: the dtype of every tensor on the wire. The server announces its
setting in the Welcome, and a client encodes with the server's setting, never its own."""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import threading

import pytest
import torch

from mpsl.errors import ProtocolError
from mpsl.protocol import Tokens
from mpsl.protocol.serde import DTYPES
from mpsl.runtime.network import mpsl_pb2 as pb
from mpsl.runtime.network.dialer import _Session
from mpsl.runtime.network.events import ClientFinished, Event, Step, Welcomed
from mpsl.runtime.network.framing import Reassembler
from mpsl.runtime.network.service import Limits
from tests.helpers import tiny_config
from tests.runtime.network_helpers import EventLog, LiveServer

LIMITS = Limits(step_timeout=10, chunk_bytes=1 << 20, max_frame_bytes=1 << 24)


class _Device:
    """The little of a ClientApp that a welcome and one embed request reach."""

    client_id, epoch = 0, 0

    def restore(self, step: int) -> bool:
        return False

    def embed(self, step: int) -> Tokens:
        return Tokens(0, step, {"image": torch.randn(2, 5, 4), "audio": torch.randn(2, 3, 4)})


def _welcome(wire_dtype: str) -> pb.ServerMessage:
    return pb.ServerMessage(welcome=pb.Welcome(epoch=0, step=0, resume_step=-1, wire_dtype=wire_dtype))


def _tensor_dtypes(replies: list[pb.ClientMessage]) -> set[str]:
    """The dtypes a frame's header names (magic, version, header length, JSON header)."""
    frame = b"".join(r.frame.data for r in replies)
    (length,) = struct.unpack_from("<I", frame, 5)
    return {t["dtype"] for t in json.loads(frame[9:9 + length])["tensors"]}


@pytest.mark.parametrize("wire", sorted(DTYPES))
def test_a_client_encodes_its_tensors_in_the_dtype_the_server_announces(wire: str) -> None:
    # Prepare
    events: list[Event] = []
    session = _Session(_Device(), LIMITS, events.append)

    # Execute
    session.answer(_welcome(wire), Reassembler(LIMITS.max_frame_bytes))
    replies = session.answer(pb.ServerMessage(embed=pb.Embed(step=0)), Reassembler(LIMITS.max_frame_bytes))

    # Assert
    assert _tensor_dtypes(replies) == {wire}
    assert events == [Welcomed(client=0, epoch=1, step=0, wire_dtype=wire)]


@pytest.mark.parametrize("announced", ["float64", ""], ids=["unknown", "missing"])
def test_a_wire_dtype_the_client_cannot_encode_is_refused_by_name(announced: str) -> None:
    session = _Session(_Device(), LIMITS, lambda event: None)

    with pytest.raises(ProtocolError) as refused:
        session.answer(_welcome(announced), Reassembler(LIMITS.max_frame_bytes))

    assert f"announces {repr(announced) if announced else 'no'} wire dtype" in str(refused.value)
    assert ", ".join(DTYPES) in str(refused.value)


def test_a_request_before_the_welcome_is_refused() -> None:
    session = _Session(_Device(), LIMITS, lambda event: None)

    with pytest.raises(ProtocolError, match="before its welcome"):
        session.answer(pb.ServerMessage(embed=pb.Embed(step=0)), Reassembler(LIMITS.max_frame_bytes))


def test_a_float32_client_trains_with_a_float16_server_in_float16(tmp_path) -> None:
    # Prepare: a server set to float16, a client whose own config says float32
    from mpsl.deploy.client_app import run_client

    common = ["num_clients=1", "deploy.step_timeout=20", f"out_dir={tmp_path}", "privacy.client_seed=7"]
    server_cfg = tiny_config(*common, "deploy.wire_dtype=float16")
    client_cfg = tiny_config(*common)
    switch = sys.getswitchinterval()

    # Execute
    with EventLog() as log:
        live = LiveServer(server_cfg)
        try:
            client = threading.Thread(target=lambda: asyncio.run(run_client(
                client_cfg, f"127.0.0.1:{live.port}", 0, False, None, None, retry_for=10)))
            client.start()
            client.join(120)
            live.training.join(60)
        finally:
            live.close()
            sys.setswitchinterval(switch)

    # Assert: the client used the server's dtype, and each step carried 2-byte elements
    assert not client.is_alive() and log.of(ClientFinished) == [ClientFinished(client=0)]
    assert [e.wire_dtype for e in log.of(Welcomed)] == ["float16"]
    steps = log.of(Step)
    tokens, width = live.runtime.expected.tokens, live.runtime.expected.width
    fp32_up = 4 * width * (sum(tokens.values()) + len(tokens))  # tokens and feature gradient, per sample
    assert len(steps) == -(-96 // 12) and all(s.bytes_up < 0.6 * fp32_up * s.samples for s in steps)
