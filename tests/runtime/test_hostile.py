"""A live server against a hostile peer: every bad input gets its status at once, and is logged with the client
id; the server never waits out a timeout because of it, and honest clients finish training."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import time
from collections.abc import Callable

import grpc
import pytest
import torch

from mpsl.deploy.server_app import status
from mpsl.errors import MpslError
from mpsl.protocol import Codec, FeatureGrad, Tokens
from mpsl.runtime.network import mpsl_pb2 as pb
from mpsl.runtime.network.events import Dropped, Event, Finished, Listening, Quarantined, Refused, Step
from mpsl.runtime.network.framing import chunks
from tests.helpers import tiny_config
from tests.runtime.network_helpers import HonestClients, LiveServer, RogueClient, certificate

# the tiny model: image 1 + 2x2 tokens, audio 1 + 2x3 tokens, width 32, client batch <= 12
IMAGE, AUDIO, WIDTH = 5, 7, 32
SECOND = 1.0  # every refusal arrives within this


def _tokens(step: int, batch: int = 4, client_id: int = 0, value: float = 0.0) -> Tokens:
    return Tokens(client_id, step, {"image": torch.full((batch, IMAGE, WIDTH), value),
                                    "audio": torch.full((batch, AUDIO, WIDTH), value)})


def _header(header: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("<4sBI", b"MPSL", 1, len(header)) + header + payload


def _tokens_header(step: int, image: dict | None = None, fields: str | None = None) -> bytes:
    """A Tokens frame whose image entry or fields are replaced by hand-written JSON."""
    entry = json.dumps(image or {"name": "tokens.image", "dtype": "float32", "shape": [4, IMAGE, WIDTH]})
    audio = json.dumps({"name": "tokens.audio", "dtype": "float32", "shape": [4, AUDIO, WIDTH]})
    fields = fields or json.dumps({"client_id": 0, "step": step})
    return _header(f'{{"type":"Tokens","fields":{fields},"tensors":[{entry},{audio}]}}'.encode(),
                   bytes(4 * 4 * (IMAGE + AUDIO) * WIDTH))


def _frames(data: bytes, size: int) -> list[pb.ClientMessage]:
    return [pb.ClientMessage(frame=pb.Chunk(data=d, last=last)) for d, last in chunks(data, size)]


def _grad(step: int, count: int = 4, correct: int = 1, batch: int = 4, at: int | None = None,
          value: float = 0.0) -> bytes:
    return Codec().encode(FeatureGrad(step if at is None else at, torch.full((batch, 2, WIDTH), value), 0.5, correct,
                                      count))


BIG = 1 << 20  # one chunk for every frame (the server's chunk size)
# what a hostile client sends when asked for tokens: (messages for the step, what the refusal says)
AT_TOKENS = {
    "deep-nesting": (lambda s: _frames(_header(b"[" * 30_000 + b"]" * 30_000), BIG), "nests deeper"),
    "type-not-a-string": (lambda s: _frames(_header(b'{"type":["Tokens"],"fields":{},"tensors":[]}'), BIG),
                          "unknown message type"),
    "fields-a-list": (lambda s: _frames(_header(b'{"type":"Tokens","fields":[1],"tensors":[]}'), BIG),
                      "fields is list"),
    "tensors-an-object": (lambda s: _frames(_header(b'{"type":"Tokens","fields":{},"tensors":{}}'), BIG),
                          "tensors is dict"),
    "step-a-string": (lambda s: _frames(_tokens_header(s, fields=f'{{"client_id":0,"step":"{s}"}}'), BIG),
                      "expected an integer"),
    "5000-digit-integer": (lambda s: _frames(_tokens_header(s, fields='{"client_id":' + "7" * 5000 + f',"step":{s}}}'),
                                             BIG), "5000 digits"),
    "nan-field": (lambda s: _frames(_tokens_header(s, fields='{"client_id":NaN,"step":0}'), BIG), "not a finite"),
    "shape-product-overflows": (lambda s: _frames(_tokens_header(s, {"name": "tokens.image", "dtype": "float32",
                                                                     "shape": [2**31 - 1] * 4}), BIG),
                                "bytes expected"),
    "100-dimensions": (lambda s: _frames(_tokens_header(s, {"name": "tokens.image", "dtype": "float32",
                                                            "shape": [1] * 100}), BIG), "100 dimensions"),
    "negative-size": (lambda s: _frames(_tokens_header(s, {"name": "tokens.image", "dtype": "float32",
                                                           "shape": [-4, IMAGE, WIDTH]}), BIG), "outside"),
    "unknown-dtype": (lambda s: _frames(_tokens_header(s, {"name": "tokens.image", "dtype": "complex128",
                                                           "shape": [4, IMAGE, WIDTH]}), BIG), "dtype"),
    "wrong-tensor-name": (lambda s: _frames(_tokens_header(s, {"name": "grad", "dtype": "float32",
                                                               "shape": [4, IMAGE, WIDTH]}), BIG),
                          "not one of its tensor fields"),
    "duplicate-tensor-name": (lambda s: _frames(_tokens_header(s, {"name": "tokens.audio", "dtype": "float32",
                                                                   "shape": [4, IMAGE, WIDTH]}), BIG), "appears twice"),
    "header-over-64-KiB": (lambda s: _frames(_header(b" " * 70_000), BIG), "header of 70000 bytes"),
    "one-byte-chunks": (lambda s: _frames(Codec().encode(_tokens(s)), 1), "a chunk of 1 bytes before the last"),
    "done-inside-a-frame": (lambda s: [*_frames(Codec().encode(_tokens(s, batch=12)), 9_000)[:1],
                                       pb.ClientMessage(done=pb.Done())], "in the middle of a frame"),
    "gradient-instead-of-tokens": (lambda s: _frames(_grad(s), BIG), "a FeatureGrad message, expected tokens"),
    "not-a-mpsl-frame": (lambda s: _frames(b"GET / HTTP/1.1\r\n\r\n", BIG), "not an MPSL"),
    "huge-finite-tokens": (lambda s, client=0: _frames(Codec().encode(_tokens(s, client_id=client, value=1e30)), BIG),
                           "guard.max_token_abs"),
}
# what it sends back for the features of a step it took part in
AT_GRADIENT = {
    "count-far-above-the-batch": (lambda s: _frames(_grad(s, count=10**6), BIG), "metrics out of range"),
    "correct-above-count": (lambda s: _frames(_grad(s, correct=5), BIG), "metrics out of range"),
    "negative-count": (lambda s: _frames(_grad(s, count=-1, correct=-1), BIG), "metrics out of range"),
    "gradient-of-another-shape": (lambda s: _frames(_grad(s, batch=3, count=3), BIG), "feature gradient of shape"),
    "gradient-for-another-step": (lambda s: _frames(_grad(s, at=s + 5), BIG), "feature gradient for step"),
    "huge-finite-gradient": (lambda s: _frames(_grad(s, value=1e30), BIG), "guard.max_grad_abs"),
    "tokens-instead-of-a-gradient": (lambda s: _frames(Codec().encode(_tokens(s)), BIG), "expected feature_grad"),
}


@pytest.fixture(scope="module")
def lone(tmp_path_factory):
    """A server whose only client is the hostile one: it never trains, so nothing can hide a stall."""
    live = LiveServer(tiny_config("deploy.step_timeout=30", f"out_dir={tmp_path_factory.mktemp('lone')}"))
    yield live
    live.close()


def _params(live: LiveServer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in live.runtime.server.model.parameters()]


def _await(live: LiveServer, match: Callable[[Event], bool], what: str, within: float = SECOND) -> Event:
    """The first event record `match` accepts, waiting at most `within` seconds for it."""
    deadline = time.monotonic() + within
    while not (found := [e for e in live.events if match(e)]):
        assert time.monotonic() < deadline, f"no {what} within {within} s:\n" + "\n".join(map(str, live.events[-30:]))
        time.sleep(0.01)
    return found[0]


def _await_closed(live: LiveServer, client: int | None, code: str, reason: str = "",
                  kinds: tuple[type, ...] = (Dropped, Refused)) -> Event:
    """A stream of `client` dropped (after Join) or refused (before) with `code`, its reason matching `reason`."""
    return _await(live, lambda e: isinstance(e, kinds) and e.client == client and e.code == code
                  and re.search(reason, e.reason) is not None, f"{code} for client {client} ~{reason!r}")


def _assert_refused(live: LiveServer, rogue: RogueClient, messages: list[pb.ClientMessage], code: grpc.StatusCode,
                    expect: str) -> None:
    """Send, then: the stream ends with `code` naming `expect` within a second, logged with the client id."""
    for m in messages:
        rogue.send(m)
    sent = time.monotonic()
    refused = rogue.refusal()
    waited = time.monotonic() - sent
    rogue.close()
    assert refused.code() == code, refused.details()
    assert expect in refused.details()
    assert waited < SECOND, f"refused after {waited:.2f} s"
    _await_closed(live, rogue.client_id, code.name, re.escape(expect))


def _take_part_until_features(rogue: RogueClient) -> int:
    """Join, send valid tokens for the step asked, read the features; the step number."""
    step = rogue.join_until_embed()
    for m in _frames(Codec().encode(_tokens(step, client_id=rogue.client_id)), BIG):
        rogue.send(m)
    while not rogue.next().frame.last:
        pass
    return step


@pytest.mark.parametrize("kind", list(AT_TOKENS))
def test_a_malformed_tokens_message_is_refused_within_a_second_and_logged_with_the_client_id(lone, kind: str) -> None:
    # Prepare
    before = _params(lone)
    make, expect = AT_TOKENS[kind]
    rogue = RogueClient(lone.port)
    step = rogue.join_until_embed()

    # Execute, Assert
    _assert_refused(lone, rogue, make(step), grpc.StatusCode.INVALID_ARGUMENT, expect)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(lone), strict=True))


@pytest.mark.parametrize("kind", list(AT_GRADIENT))
def test_a_malformed_feature_gradient_is_refused_within_a_second_and_changes_nothing(lone, kind: str) -> None:
    # Prepare
    before = _params(lone)
    make, expect = AT_GRADIENT[kind]
    rogue = RogueClient(lone.port)
    step = _take_part_until_features(rogue)

    # Execute, Assert
    _assert_refused(lone, rogue, make(step), grpc.StatusCode.INVALID_ARGUMENT, expect)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(lone), strict=True))


@pytest.mark.parametrize("message", [
    pb.ClientMessage(frame=pb.Chunk(data=b"MPSL", last=True)),
    pb.ClientMessage(exhausted=pb.Exhausted(step=0)),
    pb.ClientMessage(join=pb.Join(client_id=0, samples=1)),
], ids=["frame", "exhausted", "second-join"])
def test_a_message_out_of_turn_is_refused_within_a_second_and_logged(lone, message: pb.ClientMessage) -> None:
    # Prepare: joined, and asked to acknowledge the start of the epoch (or not asked anything yet)
    rogue = RogueClient(lone.port)
    rogue.send(pb.ClientMessage(join=pb.Join(client_id=0, samples=10)))
    assert rogue.next().WhichOneof("kind") == "welcome"

    # Execute
    rogue.send(message)
    started = time.monotonic()
    refused = rogue.refusal()
    rogue.close()

    # Assert
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and time.monotonic() - started < SECOND
    assert re.search(r"expected done|nothing was asked", refused.details()), refused.details()
    _await_closed(lone, 0, "INVALID_ARGUMENT", "expected done|nothing was asked")


def test_bytes_that_are_no_protobuf_message_are_refused_with_invalid_argument(lone) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{lone.port}")
    raw = channel.stream_stream("/mpsl.v1.SplitLearning/Session", request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)

    with pytest.raises(grpc.RpcError) as refused:
        list(raw(iter([b"\xff\xff\xff"]), metadata=[("x-mpsl-client-id", "1")], timeout=5))
    channel.close()

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "protobuf" in refused.value.details()
    _await_closed(lone, 1, "INVALID_ARGUMENT", "^a message that is not a valid")


def test_a_hostile_client_among_honest_ones_costs_them_no_wait_and_they_finish_training(tmp_path) -> None:
    # Prepare: honest clients 0 and 1 train; client 2 answers every step it joins with a bad message
    cfg = tiny_config("train.epochs=12", "deploy.min_participants=2", "deploy.step_timeout=20",
                      "deploy.quarantine_s=0", f"out_dir={tmp_path}")
    live = LiveServer(cfg)
    honest = HonestClients(cfg, live.port, [0, 1], tmp_path)
    try:
        # Execute
        attempts = [(AT_GRADIENT, "count-far-above-the-batch"), (AT_GRADIENT, "gradient-of-another-shape"),
                    (AT_GRADIENT, "huge-finite-gradient"), (AT_TOKENS, "deep-nesting"),
                    (AT_TOKENS, "huge-finite-tokens")]
        for table, kind in attempts:
            make, expect = table[kind]
            rogue = RogueClient(live.port, client_id=2)
            step = _take_part_until_features(rogue) if table is AT_GRADIENT else rogue.join_until_embed()
            messages = make(step, client=2) if kind == "huge-finite-tokens" else make(step)
            _assert_refused(live, rogue, messages, grpc.StatusCode.INVALID_ARGUMENT, expect)
        started = time.monotonic()
        honest.finish(timeout=120)

        # Assert: every step was quick (none waited out step_timeout) and training finished
        _await(live, lambda e: isinstance(e, Finished), "finished", within=10)
        steps = [e for e in live.events if isinstance(e, Step)]
        assert sum(2 in e.dropped for e in steps) >= 2
        assert max(e.seconds for e in steps) < 5
        assert not any("DEADLINE_EXCEEDED" in str(e) for e in live.events) and time.monotonic() - started < 60
        server = live.runtime.server
        state = [*server.model.parameters(),
                 *(t for st in server.optimizer.state.values() for t in st.values() if torch.is_tensor(t))]
        assert all(torch.isfinite(t).all() for t in state)  # parameters and Adam's moments
    finally:
        live.close()


def test_a_stream_that_never_joins_is_closed_after_the_join_timeout(tmp_path) -> None:
    live = LiveServer(tiny_config("deploy.join_timeout=0.3", f"out_dir={tmp_path}"))
    try:
        started = time.monotonic()  # before the stream opens: the server's join timer starts when it arrives
        rogue = RogueClient(live.port, client_id=1)

        refused = rogue.refusal()
        rogue.close()

        assert refused.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "deploy.join_timeout=0.3" in refused.details()
        assert 0.3 <= time.monotonic() - started < 0.3 + SECOND
        _await_closed(live, 1, "DEADLINE_EXCEEDED")
        _wait_until(lambda: live.runtime.service.streams == 0)
    finally:
        live.close()


def test_streams_over_the_per_client_and_total_caps_are_refused_with_resource_exhausted(tmp_path) -> None:
    # Prepare: streams that have not joined yet; client 0 holds its one allowed stream
    live = LiveServer(tiny_config("deploy.join_timeout=20", "deploy.max_streams=3", "deploy.max_streams_per_client=1",
                                  f"out_dir={tmp_path}"))
    service = live.runtime.service
    try:
        held = [RogueClient(live.port, client_id=0)]
        _wait_until(lambda: service.streams == 1)

        # Execute: a second stream of client 0, then a fourth stream in all
        second = RogueClient(live.port, client_id=0)
        second_refused = second.refusal()
        held += [RogueClient(live.port, client_id=k) for k in (1, 2)]
        _wait_until(lambda: service.streams == 3)
        fourth = RogueClient(live.port, client_id=1)
        fourth_refused = fourth.refusal()

        # Assert: refused, logged with the client id, and every slot is given back when the streams end
        assert second_refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "deploy.max_streams_per_client" in second_refused.details()
        _await_closed(live, 0, "RESOURCE_EXHAUSTED")
        assert fourth_refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "(deploy.max_streams)" in fourth_refused.details()
        _await_closed(live, 1, "RESOURCE_EXHAUSTED")
        for r in [*held, second, fourth]:
            r.close()
        _wait_until(lambda: service.streams == 0 and not service.streams_of)
    finally:
        live.close()


def _wait_until(condition, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


TOKENS = {0: "token-of-client-zero-0001", 1: "token-of-client-one-00001", 2: "token-of-client-two-00002"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    directory = tmp_path_factory.mktemp("guarded")
    (directory / "tokens.yaml").write_text("".join(f"{k}: {t}\n" for k, t in TOKENS.items()))
    live = LiveServer(tiny_config(f"out_dir={directory}"), tokens_file=str(directory / "tokens.yaml"))
    yield live
    live.close()


@pytest.mark.parametrize(
    "metadata",
    [
        [("x-mpsl-client-id", "9" * 5000), ("authorization", f"Bearer {TOKENS[0]}")],
        [("x-mpsl-client-id", "-1"), ("authorization", f"Bearer {TOKENS[0]}")],
        [("x-mpsl-client-id", "0x0"), ("authorization", f"Bearer {TOKENS[0]}")],
        [("x-mpsl-client-id", ""), ("authorization", f"Bearer {TOKENS[0]}")],
        [("x-mpsl-client-id", "0"), ("x-mpsl-client-id", "1"), ("authorization", f"Bearer {TOKENS[0]}")],
        [("x-mpsl-client-id", "0"), ("authorization", "Bearer " + "a" * 5000)],
        [("x-mpsl-client-id", "0"), ("authorization", f"Bearer {TOKENS[1]}")],
        [("authorization", f"Bearer {TOKENS[0]}")],
        [("x-mpsl-client-id", "0")],
    ],
    ids=["5000-digit-id", "negative-id", "hex-id", "empty-id", "two-ids", "5000-char-token", "another-clients-token",
         "no-id", "no-token"],
)
def test_malformed_or_wrong_credentials_are_unauthenticated_and_logged(guarded, metadata) -> None:
    rogue = RogueClient(guarded.port, metadata=metadata)
    rogue.send(pb.ClientMessage(join=pb.Join(client_id=0, samples=1)))
    started = time.monotonic()

    refused = rogue.refusal()
    rogue.close()

    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED and time.monotonic() - started < SECOND
    _await_closed(guarded, None, "UNAUTHENTICATED")
    assert not any("9" * 100 in str(e) or "a" * 100 in str(e) for e in guarded.events)  # the log stays short


def test_status_needs_a_clients_token_when_the_server_has_tokens(guarded, tmp_path) -> None:
    target = f"127.0.0.1:{guarded.port}"

    with pytest.raises(MpslError, match="UNAUTHENTICATED"):
        asyncio.run(status(target, None))
    with pytest.raises(MpslError, match="UNAUTHENTICATED"):
        asyncio.run(status(target, None, token="not-a-token-of-anyone"))
    info = asyncio.run(status(target, None, token=TOKENS[2]))

    assert info["state"] in ("waiting", "training") and info["connected"] == []


def test_public_status_answers_without_a_token(tmp_path) -> None:
    (tmp_path / "tokens.yaml").write_text("".join(f"{k}: {t}\n" for k, t in TOKENS.items()))
    live = LiveServer(tiny_config(f"out_dir={tmp_path}"), tokens_file=str(tmp_path / "tokens.yaml"),
                      public_status=True)
    try:
        info = asyncio.run(status(f"127.0.0.1:{live.port}", None))
    finally:
        live.close()

    assert info["state"] in ("waiting", "training")


def test_without_tokens_a_second_stream_cannot_take_over_a_connected_client_id(lone) -> None:
    # Prepare
    first = RogueClient(lone.port, client_id=0)
    first.join_until_embed()

    # Execute
    taker = RogueClient(lone.port, client_id=0)
    taker.send(pb.ClientMessage(join=pb.Join(client_id=0, samples=1)))
    started = time.monotonic()
    refused = taker.refusal()
    taker.close()

    # Assert: refused at once, and the first stream still owns the id
    assert refused.code() == grpc.StatusCode.ALREADY_EXISTS and time.monotonic() - started < SECOND
    _await_closed(lone, 0, "ALREADY_EXISTS")
    assert [c.client_id for c in lone.runtime.hub.connected()] == [0]
    first.close()
    _wait_until(lambda: lone.runtime.hub.connected() == [])
    again = RogueClient(lone.port, client_id=0)
    assert again.join_until_embed() >= 0
    again.close()


def test_a_client_that_keeps_timing_out_is_refused_with_a_retry_after(tmp_path) -> None:
    # Prepare: a client that joins and never answers, twice in a row
    live = LiveServer(tiny_config("deploy.step_timeout=0.2", "deploy.quarantine_after=2", "deploy.quarantine_s=30",
                                  f"out_dir={tmp_path}"))
    try:
        for _ in range(2):
            silent = RogueClient(live.port, client_id=1)
            silent.join_until_embed()
            assert silent.refusal().code() == grpc.StatusCode.DEADLINE_EXCEEDED
            silent.close()
        _await(live, lambda e: isinstance(e, Quarantined) and (e.client, e.seconds, e.timeouts) == (1, 30, 2),
               "quarantine of client 1 for 30 s")

        # Execute
        again = RogueClient(live.port, client_id=1)
        refused = again.refusal()
        again.close()

        # Assert
        assert refused.code() == grpc.StatusCode.UNAVAILABLE and "timed out 2 times in a row" in refused.details()
        assert 29 <= int(dict(refused.trailing_metadata())["retry-after"]) <= 30
        _await_closed(live, 1, "UNAVAILABLE")
    finally:
        live.close()


def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(tmp_path) -> None:
    # Prepare: a CA that signs the server's certificate and one client's; a second client signs its own
    ca, _, ca_pair = certificate(tmp_path, "ca", ca=True)
    server_cert, server_key, _ = certificate(tmp_path, "server", issuer=ca_pair)
    client_cert, client_key, _ = certificate(tmp_path, "client", issuer=ca_pair)
    stranger_cert, stranger_key, _ = certificate(tmp_path, "stranger")
    live = LiveServer(tiny_config(f"out_dir={tmp_path}"), tls=(str(server_cert), str(server_key)), client_ca=str(ca))
    target = f"127.0.0.1:{live.port}"
    try:
        # Execute
        admitted = asyncio.run(status(target, str(ca), client_cert=(str(client_cert), str(client_key))))
        refused = []
        for cert in (None, (str(stranger_cert), str(stranger_key))):
            with pytest.raises(MpslError, match="no status") as error:
                asyncio.run(status(target, str(ca), client_cert=cert))
            refused.append(error.value)
    finally:
        live.close()

    # Assert
    assert admitted["state"] in ("waiting", "training") and len(refused) == 2
    assert [e.tls for e in live.events if isinstance(e, Listening)] == ["mutual"]
