"""A live server runtime in a background thread, and a hand-driven client for hostile messages."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import grpc

from mpsl.config import Config, client_batch_sizes
from mpsl.deploy.common import NetworkThread, expected_shapes, limits
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
        if (event := getattr(record, "event", None)) is not None:
            self.events.append(event)

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
    """ServerApp on 127.0.0.1 in its own event loop thread; its SplitServer and its log stay inspectable."""

    def __init__(self, cfg: Config, tokens_file: str | None = None, tls: tuple[str, str] | None = None,
                 client_ca: str | None = None, public_status: bool = False, port: int | None = None,
                 resume: bool = False) -> None:
        self.port = port or free_port()
        self.cfg = cfg
        self._log = EventLog().__enter__()
        self.runtime = ServerApp(cfg, f"127.0.0.1:{self.port}", resume, tokens_file, tls, client_ca, public_status)
        self.network = NetworkThread()
        self.network.run(self.runtime.start(), timeout=60)
        self.training = threading.Thread(target=self.runtime.trainer.run, daemon=True)
        self.training.start()

    @property
    def events(self) -> list[Event]:
        return list(self._log.events)

    def close(self) -> None:
        self.network.run(self.runtime.stop(), timeout=30)
        self.training.join(10)
        self.network.close()
        self._log.__exit__()


class RogueClient:
    """Speaks the wire protocol by hand, so a test can send exactly the bytes it wants."""

    def __init__(self, port: int, client_id: int = 0, token: str | None = None,
                 metadata: list[tuple[str, str]] | None = None) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.outgoing: queue.Queue[pb.ClientMessage | None] = queue.Queue()
        if metadata is None:
            metadata = [("x-mpsl-client-id", str(client_id))]
            metadata += [("authorization", f"Bearer {token}")] if token else []
        # a deadline, so a server that never answers fails the test instead of hanging it
        self.incoming = pb_grpc.SplitLearningStub(self.channel).Session(self._requests(), metadata=metadata,
                                                                        timeout=120)
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

    def refusal(self) -> grpc.RpcError:
        """Read until the server ends the stream; the status it ended it with."""
        try:
            while True:
                self.next()
        except grpc.RpcError as exc:
            return exc

    def close(self) -> None:
        self.outgoing.put(None)
        self.channel.close()


class HonestClients:
    """Real clients (ClientApp over the dialer, as `mpsl client` runs them) on one event loop thread."""

    def __init__(self, cfg: Config, port: int, ids: list[int], out_dir: Path) -> None:
        from mpsl.data import load_dataset
        from mpsl.deploy.client_app import ClientApp
        from mpsl.parties import client_shards, split_client, templates
        from mpsl.runtime.network.dialer import dial
        from mpsl.tasks import TASKS

        dataset = load_dataset(cfg.data)
        shards = client_shards(cfg, dataset)
        batches = client_batch_sizes(cfg, [len(s) for s in shards])
        template, _ = templates(cfg, dataset.spec)  # as `mpsl client` builds it
        task = TASKS.get(dataset.spec.task)()
        expected = expected_shapes(template, dataset.spec, cfg.deploy.max_client_batch or cfg.train.batch_size)
        apps = [ClientApp(split_client(cfg, k, shards[k], batches[k], template, task), out_dir / f"client-{k}",
                          cfg.deploy.keep_checkpoints) for k in ids]
        self.apps = apps
        for app in apps:
            app.out_dir.mkdir(parents=True, exist_ok=True)
        self.network = NetworkThread()

        async def run_all() -> None:
            await asyncio.gather(*(dial(app, f"127.0.0.1:{port}", None, None, limits(cfg, expected), 30.0,
                                        lambda event: None) for app in apps))

        self.done: Future = asyncio.run_coroutine_threadsafe(run_all(), self.network.loop)

    def finish(self, timeout: float) -> None:
        try:
            self.done.result(timeout)
        finally:
            self.network.close()


def frame(msg_type: str, fields: dict, tensors: list[tuple[str, str, list[int], bytes]]) -> bytes:
    """An MPSL frame written by hand (magic, version, header length, JSON header, raw tensor bytes)."""
    header = json.dumps({"type": msg_type, "fields": fields,
                         "tensors": [{"name": n, "dtype": d, "shape": s} for n, d, s, _ in tensors]}).encode()
    return struct.pack("<4sBI", b"MPSL", 1, len(header)) + header + b"".join(raw for *_, raw in tensors)


def certificate(directory: Path, name: str, issuer: tuple[object, object] | None = None,
                ca: bool = False) -> tuple[Path, Path, tuple[object, object]]:
    """A PEM certificate and key for localhost / 127.0.0.1, self-signed or signed by `issuer` (cert, key);
    returns the paths and the (cert, key) objects for signing others."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name if ca else "localhost")])
    signer_cert, signer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(signer_cert.subject if signer_cert else subject)  # type: ignore[attr-defined]
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=ca or issuer is None, path_length=None), critical=True)
            .sign(signer_key, hashes.SHA256()))  # type: ignore[arg-type]
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, (cert, key)
