"""The server side of the gRPC runtime: one stream per connected client, and handles over them.

The training loop runs in a worker thread and sees each client as a `RemoteHandle` (the same
ClientHandle the in-process runtime provides); the asyncio event loop owns the streams. A client
that does not answer within the step timeout, or whose stream breaks, raises ClientUnavailable in
the step and is disconnected; it rejoins by dialing in again.

Nothing a peer sends can stall the others: every malformed message closes only its own stream
(INVALID_ARGUMENT, logged with the client id) and the step goes on at once; streams are counted
and capped, must join within `join_timeout`, and a client that keeps timing out is refused for a
growing period (UNAVAILABLE with a retry-after).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from mpsl.errors import ClientUnavailable, ProtocolError
from mpsl.protocol import Codec, CutGrad, EpochMetrics, FeatureGrad, Features, Tokens
from mpsl.protocol.serde import DecodeBounds
from mpsl.runtime.network import mpsl_pb2 as pb
from mpsl.runtime.network import mpsl_pb2_grpc as pb_grpc
from mpsl.runtime.network.events import Disconnected, Dropped, Event, Joined, Quarantined, Refused
from mpsl.runtime.network.framing import Reassembler, chunks
from mpsl.runtime.network.security import any_token_matches, read_credentials, token_matches
from mpsl.runtime.network.validate import Expected
from mpsl.runtime.traffic import Traffic

_CLOSE = object()  # outbox sentinel: end the stream (with conn.abort's status, if set)


@dataclass(frozen=True)
class Limits:
    step_timeout: float
    chunk_bytes: int
    max_frame_bytes: int  # the largest encoded message a client may send
    max_header_bytes: int = 64 * 1024  # its JSON header
    min_chunk_bytes: int = 1  # every piece of a frame but the last is at least this big
    join_timeout: float = 10.0  # seconds a new stream has to send its Join
    max_streams: int = 64  # open Session streams, joined or not
    max_streams_per_client: int = 2  # open Session streams of one client id
    quarantine_after: int = 2  # step timeouts in a row before a client is refused for a while
    quarantine_s: float = 10.0  # the first such period; it doubles with each further timeout (0: never)
    quarantine_max_s: float = 300.0

    def bounds(self) -> DecodeBounds:
        return DecodeBounds(max_header_bytes=self.max_header_bytes, max_tensors=64)

    def reassembler(self) -> Reassembler:
        return Reassembler(self.max_frame_bytes, self.min_chunk_bytes)


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
        self.timed_out = False  # a request went unanswered for step_timeout
        self.answered = False  # a feature gradient arrived: the client took part in a step

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
            self.timed_out = True
            self.fail(grpc.StatusCode.DEADLINE_EXCEEDED,
                      f"no {expect} within deploy.step_timeout={self.limits.step_timeout:g} s")
            raise ClientUnavailable(f"client {self.client_id} did not answer within {self.limits.step_timeout:g} s")
        raise ClientUnavailable(f"client {self.client_id} disconnected: {self.abort[1] if self.abort else 'closed'}")

    def receive(self, message: pb.ClientMessage, assembler: Reassembler) -> None:
        """Check one incoming message against the oldest open request; anything else is a ProtocolError
        (and closes the stream). The whole path from chunk to checked message raises nothing else."""
        kind = message.WhichOneof("kind")
        if not self.expecting:
            raise ProtocolError(f"unexpected {kind}: nothing was asked")
        expect, step, shape = self.expecting[0]
        if kind != "frame" and assembler.pending:
            raise ProtocolError(f"{kind} in the middle of a frame")
        if kind == "frame":
            if expect not in ("tokens", "feature_grad", "epoch_metrics"):
                raise ProtocolError(f"a frame, expected {expect}")
            self.traffic.up += len(message.frame.data)
            frame = assembler.add(message.frame.data, message.frame.last)
            if frame is None:
                return
            msg = self.codec.decode(frame, self.limits.bounds())  # bounded header, dtypes, byte lengths, finite
            if expect == "tokens" and isinstance(msg, Tokens):
                self.expected.check_tokens(msg, self.client_id, step)
            elif expect == "feature_grad" and isinstance(msg, FeatureGrad):
                self.expected.check_grad(msg, step, shape or ())
                self.answered = True
            elif expect == "epoch_metrics" and isinstance(msg, EpochMetrics):
                self.expected.check_metrics(msg)
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

    def attach(self, conn: Connection, replace: bool = True) -> bool:
        """Make `conn` the client's connection; a live older one is replaced, or with replace=False kept
        (and False returned)."""
        with self._lock:
            old = self._connections.get(conn.client_id)
            if old is not None and not replace and not old.closed.is_set():
                return False
            self._connections[conn.client_id] = conn
        if old is not None:
            old.fail(grpc.StatusCode.ABORTED, "replaced by a newer connection of the same client")
        return True

    def live(self, client_id: int) -> bool:
        with self._lock:
            conn = self._connections.get(client_id)
            return conn is not None and not conn.closed.is_set()

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

    def refuse(self, reason: str) -> None:
        """Close this client's stream with INVALID_ARGUMENT: the server's guard left it out of a step."""
        self.loop.call_soon_threadsafe(self.conn.fail, grpc.StatusCode.INVALID_ARGUMENT, reason)

    def end_epoch(self) -> EpochMetrics:
        return self._call([pb.ServerMessage(end_epoch=pb.EndEpoch(epoch=self.conn.epoch or 0))], "epoch_metrics", -1)

    def checkpoint(self, step: int, epoch: int) -> None:
        self._call([pb.ServerMessage(checkpoint=pb.Checkpoint(step=step, epoch=epoch))], "done", step)

    def finish(self) -> None:
        asyncio.run_coroutine_threadsafe(self._finish(), self.loop).result()

    async def _finish(self) -> None:
        self.conn.outbox.put_nowait(pb.ServerMessage(finish=pb.Finish()))
        self.conn.abort = (grpc.StatusCode.OK, "training finished")
        self.conn.outbox.put_nowait(_CLOSE)


class Quarantine:
    """Clients that stall the step: after `after` step timeouts in a row (no answered step between them)
    a client is refused for `base_s` seconds, twice as long for each further timeout, at most `max_s`."""

    def __init__(self, after: int, base_s: float, max_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.after, self.base_s, self.max_s, self.clock = after, base_s, max_s, clock
        self._timeouts: dict[int, int] = {}
        self._until: dict[int, float] = {}

    def record(self, client_id: int, answered: bool, timed_out: bool) -> float:
        """Account for one finished stream; the seconds the client is now refused for (0: none)."""
        if answered:
            self._timeouts.pop(client_id, None)
        if not timed_out:
            return 0.0
        count = self._timeouts[client_id] = self._timeouts.get(client_id, 0) + 1
        if self.base_s <= 0 or count < self.after:
            return 0.0
        seconds = min(self.base_s * 2.0 ** min(count - self.after, 64), self.max_s)
        self._until[client_id] = self.clock() + seconds
        return seconds

    def remaining(self, client_id: int) -> float:
        return max(self._until.get(client_id, 0.0) - self.clock(), 0.0)

    def timeouts(self, client_id: int) -> int:
        return self._timeouts.get(client_id, 0)


class Refusal(Exception):
    """Why a stream is turned away before it joins: a status code, a reason, and maybe when to retry."""

    def __init__(self, code: grpc.StatusCode, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.retry_after = code, reason, retry_after


async def _read_message(context: grpc.aio.ServicerContext) -> Any:
    """The next ClientMessage (or grpc.aio.EOF); bytes that are no ClientMessage are a ProtocolError."""
    try:
        return await context.read()
    except DecodeError:
        raise ProtocolError("a message that is not a valid ClientMessage protobuf") from None


def _printable(text: str, limit: int = 400) -> str:
    """A status detail that gRPC can always send: ASCII, short."""
    text = text.encode("ascii", "backslashreplace").decode()
    return text if len(text) <= limit else text[:limit] + "..."


class SplitLearningService(pb_grpc.SplitLearningServicer):
    """Authenticates, then relays between a client's stream and its Connection; `log` receives its events."""

    def __init__(self, hub: Hub, tokens: dict[int, str] | None, num_clients: int, codec: Codec,
                 expected: Expected, limits: Limits, welcome: Callable[[], pb.Welcome],
                 log: Callable[[Event], None], public_status: bool = False) -> None:
        self.hub, self.tokens, self.num_clients = hub, tokens, num_clients
        self.codec, self.expected, self.limits = codec, expected, limits
        self.welcome, self.log, self.public_status = welcome, log, public_status
        self.quarantine = Quarantine(limits.quarantine_after, limits.quarantine_s, limits.quarantine_max_s)
        self.streams = 0  # open Session streams (event-loop state: no lock)
        self.streams_of: dict[int, int] = {}  # the same, per authenticated client id

    async def _refuse(self, context: grpc.aio.ServicerContext, refusal: Refusal, client_id: int | None) -> None:
        self.log(Refused(context.peer(), _printable(refusal.reason, 200), client_id, refusal.code.name))
        trailing = () if refusal.retry_after is None else (("retry-after", str(math.ceil(refusal.retry_after))),)
        await context.abort(refusal.code, _printable(refusal.reason), trailing_metadata=trailing)

    def _authenticate(self, context: grpc.aio.ServicerContext) -> int:
        """The client id the call's metadata proves, else a Refusal; total over any metadata."""
        try:
            client_id, presented = read_credentials(context.invocation_metadata())
        except ValueError as exc:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, f"malformed credentials: {exc}") from None
        if client_id is None or not token_matches(self.tokens, client_id, presented):
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "unknown client id or wrong token")
        return client_id

    def _admit(self, client_id: int) -> None:
        """After authentication: range, quarantine, and the per-client stream limits."""
        if client_id >= self.num_clients:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED,
                          f"client id {client_id} is outside 0..{self.num_clients - 1} (num_clients)")
        if (wait := self.quarantine.remaining(client_id)) > 0:
            raise Refusal(grpc.StatusCode.UNAVAILABLE,
                          f"client {client_id} timed out {self.quarantine.timeouts(client_id)} times in a row; "
                          f"refused for {math.ceil(wait)} s more", retry_after=wait)
        if self.tokens is None and self.hub.live(client_id):
            raise Refusal(grpc.StatusCode.ALREADY_EXISTS,
                          f"client {client_id} is connected; without --tokens a second stream cannot replace it")
        if self.streams_of.get(client_id, 0) >= self.limits.max_streams_per_client:
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"client {client_id} has {self.limits.max_streams_per_client} streams open "
                          "(deploy.max_streams_per_client)")

    async def _join(self, context: grpc.aio.ServicerContext, client_id: int) -> pb.ClientMessage:
        try:
            first = await asyncio.wait_for(_read_message(context), self.limits.join_timeout)
        except TimeoutError:
            raise Refusal(grpc.StatusCode.DEADLINE_EXCEEDED,
                          f"no join within deploy.join_timeout={self.limits.join_timeout:g} s") from None
        except ProtocolError as exc:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "join" or first.join.client_id != client_id:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a join for this client")
        return first

    async def Session(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        client_id: int | None = None
        counted = False
        self.streams += 1
        try:
            client_id = self._authenticate(context)
            if self.streams > self.limits.max_streams:
                raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{self.limits.max_streams} streams are open (deploy.max_streams)")
            self._admit(client_id)
            self.streams_of[client_id] = self.streams_of.get(client_id, 0) + 1
            counted = True
            first = await self._join(context, client_id)
            conn = Connection(client_id, context.peer(), self.codec, self.expected, self.limits)
            if not self.hub.attach(conn, replace=self.tokens is not None):
                raise Refusal(grpc.StatusCode.ALREADY_EXISTS,
                              f"client {client_id} is connected; without --tokens a second stream cannot replace it")
        except Refusal as refusal:
            await self._refuse(context, refusal, client_id)
        else:
            self.log(Joined(client_id, context.peer(), first.join.samples))
            await self._serve(conn, context)
        finally:
            self.streams -= 1
            if counted and client_id is not None:
                self.streams_of[client_id] -= 1
                if not self.streams_of[client_id]:
                    del self.streams_of[client_id]

    async def _serve(self, conn: Connection, context: grpc.aio.ServicerContext) -> None:
        reader = asyncio.create_task(self._read(conn, context))
        try:
            await context.write(pb.ServerMessage(welcome=self.welcome()))
            while (item := await conn.outbox.get()) is not _CLOSE:
                await context.write(item)
            if conn.abort is not None and conn.abort[0] != grpc.StatusCode.OK:
                await context.abort(conn.abort[0], _printable(conn.abort[1]))
        finally:
            reader.cancel()
            conn.closed.set()
            self.hub.detach(conn)
            code, reason = conn.abort or (grpc.StatusCode.UNAVAILABLE, "connection lost")
            shown = _printable(reason, 200)
            self.log(Disconnected(conn.client_id, shown) if code == grpc.StatusCode.OK
                     else Dropped(conn.client_id, shown, code.name))
            if seconds := self.quarantine.record(conn.client_id, conn.answered, conn.timed_out):
                self.log(Quarantined(conn.client_id, seconds, self.quarantine.timeouts(conn.client_id)))

    async def _read(self, conn: Connection, context: grpc.aio.ServicerContext) -> None:
        assembler = self.limits.reassembler()
        try:
            while (message := await _read_message(context)) is not grpc.aio.EOF:
                conn.receive(message, assembler)
            conn.fail(grpc.StatusCode.UNAVAILABLE, "the client closed its stream")  # before training finished
        except ProtocolError as exc:
            conn.fail(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            conn.fail(grpc.StatusCode.CANCELLED, "the stream broke")
        except Exception as exc:  # a bug must still end this stream at once, not stall the step until its timeout
            conn.fail(grpc.StatusCode.INTERNAL, f"server error reading the stream: {type(exc).__name__}: {exc}")

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusReply:
        """Progress and connected clients; with tokens, only for a caller presenting one (or --public-status)."""
        if self.tokens is not None and not self.public_status:
            try:
                _, presented = read_credentials(context.invocation_metadata())
            except ValueError:
                presented = None
            if not any_token_matches(self.tokens, presented):
                await self._refuse(context, Refusal(grpc.StatusCode.UNAUTHENTICATED,
                                                    "status needs a client's token (or the server's --public-status)"),
                                   None)
        return pb.StatusReply(json=json.dumps(self.hub.status()))


def concurrent_map(pool: Any) -> Callable[[Callable[[Any], Any], Iterable[Any]], list[Any]]:
    """fan_out for mpsl_step: talk to all clients of a step at once."""
    return lambda fn, items: list(pool.map(fn, list(items)))
