"""The server side of the gRPC runtime: one stream per connected client, and handles over them.

The training loop runs in a worker thread and sees each client as a `RemoteHandle` (the same
ClientHandle the in-process runtime provides); the asyncio event loop owns the streams. A client
that does not answer within the step timeout, or whose stream breaks, raises ClientUnavailable in
the step and is disconnected; it rejoins by dialing in again.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from mpsl.errors import ClientUnavailable, ProtocolError
from mpsl.protocol import Codec, CutGrad, FeatureGrad, Features, Tokens
from mpsl.runtime.network import mpsl_pb2 as pb
from mpsl.runtime.network import mpsl_pb2_grpc as pb_grpc
from mpsl.runtime.network.events import Disconnected, Dropped, Event, Joined, Refused
from mpsl.runtime.network.framing import Reassembler, chunks
from mpsl.runtime.network.security import AUTH_KEY, CLIENT_ID_KEY, token_matches
from mpsl.runtime.network.validate import Expected
from mpsl.runtime.traffic import Traffic

_CLOSE = object()  # outbox sentinel: end the stream (with conn.abort's status, if set)


@dataclass(frozen=True)
class Limits:
    step_timeout: float
    chunk_bytes: int
    max_frame_bytes: int  # the largest encoded message a client may send


def grpc_options(limits: Limits) -> list[tuple[str, int]]:
    """The 4 MiB default is raised deliberately to one chunk plus headroom; frames are chunked below it."""
    size = limits.chunk_bytes + 64 * 1024
    return [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]


class Connection:
    """One client's stream: what the server asked last, and the replies that answer it."""

    def __init__(self, client_id: int, peer: str, codec: Codec, expected: Expected, limits: Limits) -> None:
        self.client_id = client_id
        self.peer = peer
        self.codec = codec
        self.expected = expected
        self.limits = limits
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.abort: tuple[grpc.StatusCode, str] | None = None
        self.expecting: deque[tuple[str, int, tuple[int, ...] | None]] = deque()  # reply kind, step, grad shape
        self.deferred = 0  # replies owed to requests nobody waits for
        self.epoch: int | None = None
        self.exhausted = False
        self.traffic = Traffic()
        self.joined = time.time()

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        """Close the stream with this status; the first reason wins (a finished client may hang up)."""
        if not self.closed.is_set() and self.abort is None:
            self.abort = (code, message)
            self.closed.set()
            self.outbox.put_nowait(_CLOSE)

    async def request(self, messages: list[pb.ServerMessage], expect: str, step: int,
                      shape: tuple[int, ...] | None = None, wait: bool = True) -> Any:
        """Send `messages`; return the one reply of kind `expect`, or with wait=False let a later request
        collect it (a pipelined acknowledgement). ClientUnavailable on timeout or loss."""
        if self.closed.is_set():
            raise ClientUnavailable(f"client {self.client_id} is disconnected")
        self.expecting.append((expect, step, shape))
        for m in messages:
            self.outbox.put_nowait(m)
        if not wait:
            self.deferred += 1
            return None
        while True:
            reply = await self._next_reply(expect)
            if self.deferred:  # in order: the replies of earlier, unawaited requests come first
                self.deferred -= 1
                continue
            return reply

    async def _next_reply(self, expect: str) -> Any:
        reply = asyncio.ensure_future(self.replies.get())
        lost = asyncio.ensure_future(self.closed.wait())
        done, _ = await asyncio.wait({reply, lost}, timeout=self.limits.step_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        if reply in done:
            return reply.result()
        reply.cancel()
        if not done:
            self.fail(grpc.StatusCode.DEADLINE_EXCEEDED,
                      f"no {expect} within deploy.step_timeout={self.limits.step_timeout:g} s")
            raise ClientUnavailable(f"client {self.client_id} did not answer within {self.limits.step_timeout:g} s")
        raise ClientUnavailable(f"client {self.client_id} disconnected: {self.abort[1] if self.abort else 'closed'}")

    def receive(self, message: pb.ClientMessage, assembler: Reassembler) -> None:
        """Check one incoming message against the oldest open request; anything else closes the stream."""
        kind = message.WhichOneof("kind")
        if not self.expecting:
            raise ProtocolError(f"unexpected {kind}: nothing was asked")
        expect, step, shape = self.expecting[0]
        if kind == "frame":
            self.traffic.up += len(message.frame.data)
            frame = assembler.add(message.frame.data, message.frame.last)
            if frame is None:
                return
            msg = self.codec.decode(frame)  # dtype allow-list, byte lengths, finite values
            if expect == "tokens" and isinstance(msg, Tokens):
                self.expected.check_tokens(msg, self.client_id, step)
            elif expect == "feature_grad" and isinstance(msg, FeatureGrad):
                self.expected.check_grad(msg, step, shape or ())
            else:
                raise ProtocolError(f"a {type(msg).__name__} message, expected {expect}")
            reply: Any = msg
        elif kind == "exhausted" and expect == "tokens":
            reply = None
        elif kind == "done" and expect == "done":
            reply = True
        else:
            raise ProtocolError(f"unexpected {kind}, expected {expect}")
        self.expecting.popleft()
        self.replies.put_nowait(reply)


class Hub:
    """The connected clients, shared by the event loop (streams) and the training thread (handles)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[int, Connection] = {}
        self.progress: dict[str, Any] = {}

    def attach(self, conn: Connection) -> None:
        with self._lock:
            old = self._connections.get(conn.client_id)
            self._connections[conn.client_id] = conn
        if old is not None:
            old.fail(grpc.StatusCode.ABORTED, "replaced by a newer connection of the same client")

    def detach(self, conn: Connection) -> None:
        with self._lock:
            if self._connections.get(conn.client_id) is conn:
                del self._connections[conn.client_id]

    def connected(self) -> list[Connection]:
        with self._lock:
            return [c for _, c in sorted(self._connections.items()) if not c.closed.is_set()]

    def status(self) -> dict[str, Any]:
        return {**self.progress, "connected": [
            {"client_id": c.client_id, "peer": c.peer, "epoch": None if c.epoch is None else c.epoch + 1,
             "exhausted": c.exhausted,
             "bytes_up": c.traffic.up, "bytes_down": c.traffic.down, "connected_s": round(time.time() - c.joined)}
            for c in self.connected()]}


def _frame_messages(frame: bytes, chunk_bytes: int) -> list[pb.ServerMessage]:
    return [pb.ServerMessage(frame=pb.Chunk(data=data, last=last)) for data, last in chunks(frame, chunk_bytes)]


class RemoteHandle:
    """ClientHandle over a Connection, called from the training thread."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.client_id = conn.client_id
        self.loop = loop

    @property
    def traffic(self) -> Traffic:
        return self.conn.traffic

    @property
    def epoch(self) -> int | None:
        return self.conn.epoch

    @property
    def exhausted(self) -> bool:
        return self.conn.exhausted

    def _call(self, messages: list[pb.ServerMessage], expect: str, step: int,
              shape: tuple[int, ...] | None = None, wait: bool = True) -> Any:
        self.conn.traffic.down += sum(m.ByteSize() for m in messages)
        future = asyncio.run_coroutine_threadsafe(self.conn.request(messages, expect, step, shape, wait), self.loop)
        return future.result()

    def _encoded(self, msg: Any) -> list[pb.ServerMessage]:
        frame = self.conn.codec.encode(msg)
        return _frame_messages(frame, self.conn.limits.chunk_bytes)

    def start_epoch(self, epoch: int) -> None:
        self._call([pb.ServerMessage(start_epoch=pb.StartEpoch(epoch=epoch))], "done", -1)
        self.conn.epoch, self.conn.exhausted = epoch, False

    def embed(self, step: int) -> Tokens | None:
        tokens = self._call([pb.ServerMessage(embed=pb.Embed(step=step))], "tokens", step)
        if tokens is None:
            self.conn.exhausted = True
        return tokens

    def features(self, msg: Features) -> FeatureGrad:
        return self._call(self._encoded(msg), "feature_grad", msg.step, tuple(msg.features.shape))

    def cut_grad(self, msg: CutGrad) -> None:
        """Not awaited: the client's next answer comes after it, so its acknowledgement is collected then."""
        self._call(self._encoded(msg), "done", msg.step, wait=False)

    def end_epoch(self) -> None:
        self._call([pb.ServerMessage(end_epoch=pb.EndEpoch(epoch=self.conn.epoch or 0))], "done", -1)

    def checkpoint(self, step: int) -> None:
        self._call([pb.ServerMessage(checkpoint=pb.Checkpoint(step=step))], "done", step)

    def finish(self) -> None:
        asyncio.run_coroutine_threadsafe(self._finish(), self.loop).result()

    async def _finish(self) -> None:
        self.conn.outbox.put_nowait(pb.ServerMessage(finish=pb.Finish()))
        self.conn.abort = (grpc.StatusCode.OK, "training finished")
        self.conn.outbox.put_nowait(_CLOSE)


class SplitLearningService(pb_grpc.SplitLearningServicer):
    """Authenticates, then relays between a client's stream and its Connection; `log` receives its events."""

    def __init__(self, hub: Hub, tokens: dict[int, str] | None, num_clients: int, codec: Codec,
                 expected: Expected, limits: Limits, welcome: Callable[[], pb.Welcome],
                 log: Callable[[Event], None]) -> None:
        self.hub, self.tokens, self.num_clients = hub, tokens, num_clients
        self.codec, self.expected, self.limits = codec, expected, limits
        self.welcome, self.log = welcome, log

    async def Session(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        raw_id = str(metadata.get(CLIENT_ID_KEY, ""))
        presented = str(metadata.get(AUTH_KEY, "")).removeprefix("Bearer ")
        if not raw_id.isdigit() or not token_matches(self.tokens, int(raw_id), presented):
            self.log(Refused(context.peer(), "unknown client id or wrong token"))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown client id or wrong token")
        client_id = int(raw_id)
        if client_id >= self.num_clients:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"client id {client_id} is outside 0..{self.num_clients - 1} (num_clients)")
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "join" or first.join.client_id != client_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a join for this client")
        conn = Connection(client_id, context.peer(), self.codec, self.expected, self.limits)
        self.hub.attach(conn)
        self.log(Joined(client_id, context.peer(), first.join.samples))
        reader = asyncio.create_task(self._read(conn, context))
        try:
            await context.write(pb.ServerMessage(welcome=self.welcome()))
            while (item := await conn.outbox.get()) is not _CLOSE:
                await context.write(item)
            if conn.abort is not None and conn.abort[0] != grpc.StatusCode.OK:
                await context.abort(*conn.abort)
        finally:
            reader.cancel()
            conn.closed.set()
            self.hub.detach(conn)
            code, reason = conn.abort or (grpc.StatusCode.UNAVAILABLE, "connection lost")
            self.log((Disconnected if code == grpc.StatusCode.OK else Dropped)(client_id, reason))

    async def _read(self, conn: Connection, context: grpc.aio.ServicerContext) -> None:
        assembler = Reassembler(self.limits.max_frame_bytes)
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                conn.receive(message, assembler)
            conn.fail(grpc.StatusCode.UNAVAILABLE, "the client closed its stream")  # before training finished
        except ProtocolError as exc:
            conn.fail(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            conn.fail(grpc.StatusCode.CANCELLED, "the stream broke")

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusReply:
        return pb.StatusReply(json=json.dumps(self.hub.status()))


def concurrent_map(pool: Any) -> Callable[[Callable[[Any], Any], Iterable[Any]], list[Any]]:
    """fan_out for mpsl_step: talk to all clients of a step at once."""
    return lambda fn, items: list(pool.map(fn, list(items)))
