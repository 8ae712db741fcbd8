"""The edge side of the gRPC runtime: dial out, authenticate, answer the server's requests.

The device's `SplitClient` does the work, on the event loop's own thread (the device has nothing
else to do meanwhile, and one torch-calling thread keeps torch's thread pool uncontended); this
module only moves its messages. Tensors travel in the dtype the server announces in its Welcome (its
deploy.wire_dtype): the client encodes with the server's setting, never its own. Connection loss
is retried with backoff for `retry_for` seconds (a restarted server is found again); a refusal
(wrong token, invalid message) is final and raised as an error. A server that says when to come back
(UNAVAILABLE with a retry-after, after this client timed out repeatedly) is waited for that long, and
that wait does not count against `retry_for`: the server is there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import grpc

from mpsl.errors import MpslError, ProtocolError
from mpsl.protocol import Codec, CutGrad, EpochMetrics, FeatureGrad, Features, Tokens
from mpsl.protocol.serde import DTYPES
from mpsl.runtime.network import mpsl_pb2 as pb
from mpsl.runtime.network import mpsl_pb2_grpc as pb_grpc
from mpsl.runtime.network.events import ClientFinished, ConnectionLost, Event, NoCheckpoint, RetryLater, Welcomed
from mpsl.runtime.network.framing import Reassembler, chunks
from mpsl.runtime.network.security import AUTH_KEY, CLIENT_ID_KEY
from mpsl.runtime.network.service import Limits, grpc_options

FINAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}


class ClientApp(Protocol):
    """What the network drives on the device (deploy.client_app.ClientApp): a SplitClient plus its checkpoints."""

    client_id: int
    epoch: int | None

    def start_epoch(self, epoch: int) -> None: ...
    def embed(self, step: int) -> Tokens | None: ...
    def features(self, msg: Features) -> FeatureGrad: ...
    def cut_grad(self, msg: CutGrad) -> None: ...
    def end_epoch(self) -> EpochMetrics: ...
    def save(self, step: int, epoch: int) -> None: ...
    def restore(self, step: int, epoch: int) -> bool: ...
    def finish(self) -> None: ...
    def samples(self) -> int: ...


class _Session:
    def __init__(self, client: ClientApp, limits: Limits, log: Callable[[Event], None]) -> None:
        self.client, self.limits, self.log = client, limits, log
        self.codec: Codec | None = None  # in the server's wire dtype, from its Welcome
        self.session: str | None = None  # the server process this client's state has trained with

    def _codec(self) -> Codec:
        if self.codec is None:
            raise ProtocolError("the server sent a request before its welcome")
        return self.codec

    def _frames(self, msg: object) -> list[pb.ClientMessage]:
        frame = self._codec().encode(msg)
        pieces = chunks(frame, self.limits.chunk_bytes)
        return [pb.ClientMessage(frame=pb.Chunk(data=d, last=last)) for d, last in pieces]

    def answer(self, message: pb.ServerMessage, assembler: Reassembler) -> list[pb.ClientMessage] | None:
        """The replies to one server message; None once training is finished."""
        c = self.client
        kind = message.WhichOneof("kind")
        done = [pb.ClientMessage(done=pb.Done())]
        if kind == "welcome":
            w = message.welcome
            if w.wire_dtype not in DTYPES:
                announced = repr(w.wire_dtype) if w.wire_dtype else "no"
                raise ProtocolError(f"the server announces {announced} wire dtype (its deploy.wire_dtype), which "
                                    f"this client cannot encode (registered: {', '.join(DTYPES)})")
            self.codec = Codec(w.wire_dtype)
            self.log(Welcomed(c.client_id, w.epoch + 1, w.step, w.wire_dtype))
            # a server that resumed and that this state has not trained with: back to the point it resumed from,
            # whether training has moved on since or not (updates after that point were lost with the server)
            if w.resume_step >= 0 and w.session != self.session and not c.restore(w.resume_step, w.resume_epoch):
                self.log(NoCheckpoint(c.client_id, w.resume_step))
            self.session = w.session
            return []
        if kind == "start_epoch":
            if c.epoch != message.start_epoch.epoch:  # same epoch: resumed mid-epoch, keep the data order
                c.start_epoch(message.start_epoch.epoch)
            return done
        if kind == "embed":
            tokens = c.embed(message.embed.step)
            return [pb.ClientMessage(exhausted=pb.Exhausted(step=message.embed.step))] if tokens is None \
                else self._frames(tokens)
        if kind == "frame":
            frame = assembler.add(message.frame.data, message.frame.last)
            if frame is None:
                return []
            msg = self._codec().decode(frame)
            if isinstance(msg, Features):
                return self._frames(c.features(msg))
            if isinstance(msg, CutGrad):
                c.cut_grad(msg)
                return done
            raise MpslError(f"the server sent an unexpected {type(msg).__name__}")
        if kind == "end_epoch":
            return self._frames(c.end_epoch())
        if kind == "checkpoint":
            c.save(message.checkpoint.step, message.checkpoint.epoch)
            return done
        if kind == "finish":
            c.finish()
            return None
        raise MpslError(f"the server sent an unknown message {kind!r}")


async def dial(client: ClientApp, target: str, token: str | None, credentials: grpc.ChannelCredentials | None,
               limits: Limits, retry_for: float, log: Callable[[Event], None]) -> None:
    """Serve the server's requests until it says training is finished; `log` receives the client's events."""
    session = _Session(client, limits, log)
    metadata = [(CLIENT_ID_KEY, str(client.client_id))] + ([(AUTH_KEY, f"Bearer {token}")] if token else [])
    last_contact, delay = time.monotonic(), 0.5
    while True:
        channel = (grpc.aio.secure_channel(target, credentials, options=grpc_options(limits)) if credentials
                   else grpc.aio.insecure_channel(target, options=grpc_options(limits)))
        try:
            call = pb_grpc.SplitLearningStub(channel).Session(metadata=metadata)
            await call.write(pb.ClientMessage(join=pb.Join(client_id=client.client_id, samples=client.samples())))
            assembler = limits.reassembler()
            while (message := await call.read()) is not grpc.aio.EOF:
                last_contact, delay = time.monotonic(), 0.5
                replies = session.answer(message, assembler)
                if replies is None:
                    await call.done_writing()
                    log(ClientFinished(client.client_id))
                    return
                for reply in replies:
                    await call.write(reply)
            reason = "the server closed the stream"
        except grpc.aio.AioRpcError as exc:
            if exc.code() in FINAL:
                raise MpslError(f"the server refused this client: {exc.code().name}: {exc.details()}") from None
            reason = f"{exc.code().name}: {exc.details()}"
            if (wait := _retry_after(exc)) is not None:
                log(RetryLater(client.client_id, reason, wait))
                await asyncio.sleep(wait)
                last_contact, delay = time.monotonic(), 0.5
                continue
        finally:
            await channel.close()
        if time.monotonic() - last_contact > retry_for:
            raise MpslError(f"no connection to {target} for {retry_for:g} s ({reason})")
        log(ConnectionLost(client.client_id, reason, delay))
        await asyncio.sleep(delay)
        delay = min(2 * delay, 5.0)


def _retry_after(exc: grpc.aio.AioRpcError) -> float | None:
    """Seconds the server asked this client to wait (UNAVAILABLE with retry-after metadata), else None."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after" and isinstance(value, str) and value.isdigit() and len(value) <= 6:
            return float(value)
    return None
