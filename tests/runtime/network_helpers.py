"""A live server runtime in a background thread, and a hand-driven client for hostile messages."""

from __future__ import annotations

import json
import logging
import queue
import socket
import struct
import threading
from collections.abc import Iterator

import grpc

from mpsl.config import Config
from mpsl.deploy.common import NetworkThread
from mpsl.deploy.server_app import ServerApp
from mpsl.runtime.network import mpsl_pb2 as pb
from mpsl.runtime.network import mpsl_pb2_grpc as pb_grpc
from mpsl.runtime.network.events import Event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EventLog(logging.Handler):
    """Keeps the event records the applications log (`with EventLog() as events: ...`)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []
        self.logger = logging.getLogger("mpsl.deploy")

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(record.event)  # type: ignore[attr-defined]

    def of(self, kind: type[Event]) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def __enter__(self) -> EventLog:
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


class LiveServer:
    """ServerApp on 127.0.0.1 in its own event loop thread; its SplitServer stays inspectable."""

    def __init__(self, cfg: Config, tokens_file: str | None = None) -> None:
        self.port = free_port()
        self.runtime = ServerApp(cfg, f"127.0.0.1:{self.port}", False, tokens_file, None)
        self.network = NetworkThread()
        self.network.run(self.runtime.start(), timeout=60)
        self.training = threading.Thread(target=self.runtime.trainer.run, daemon=True)
        self.training.start()

    def close(self) -> None:
        self.network.run(self.runtime.stop(), timeout=30)
        self.training.join(10)
        self.network.close()


class RogueClient:
    """Speaks the wire protocol by hand, so a test can send exactly the bytes it wants."""

    def __init__(self, port: int, client_id: int = 0, token: str | None = None) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.outgoing: queue.Queue[pb.ClientMessage | None] = queue.Queue()
        metadata = [("x-mpsl-client-id", str(client_id))] + ([("authorization", f"Bearer {token}")] if token else [])
        self.incoming = pb_grpc.SplitLearningStub(self.channel).Session(self._requests(), metadata=metadata)
        self.client_id = client_id

    def _requests(self) -> Iterator[pb.ClientMessage]:
        while (message := self.outgoing.get()) is not None:
            yield message

    def send(self, message: pb.ClientMessage) -> None:
        self.outgoing.put(message)

    def next(self) -> pb.ServerMessage:
        return next(self.incoming)

    def join_until_embed(self) -> int:
        """Join, acknowledge the epoch start, and return the step the server asks tokens for."""
        self.send(pb.ClientMessage(join=pb.Join(client_id=self.client_id, samples=10)))
        while True:
            message = self.next()
            kind = message.WhichOneof("kind")
            if kind == "embed":
                return message.embed.step
            if kind == "start_epoch":
                self.send(pb.ClientMessage(done=pb.Done()))

    def close(self) -> None:
        self.outgoing.put(None)
        self.channel.close()


def frame(msg_type: str, fields: dict, tensors: list[tuple[str, str, list[int], bytes]]) -> bytes:
    """An MPSL frame written by hand (magic, version, header length, JSON header, raw tensor bytes)."""
    header = json.dumps({"type": msg_type, "fields": fields,
                         "tensors": [{"name": n, "dtype": d, "shape": s} for n, d, s, _ in tensors]}).encode()
    return struct.pack("<4sBI", b"MPSL", 1, len(header)) + header + b"".join(raw for *_, raw in tensors)
