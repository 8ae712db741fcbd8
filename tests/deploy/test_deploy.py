"""`mpsl server` and `mpsl client` as separate processes on 127.0.0.1: the deployment a user runs.

Every process logs its events as JSON lines (`--log-format json`); the tests read them back as records."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mpsl.config import load_config
from mpsl.data import load_dataset
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.runtime.network.events import (
    Checkpoint,
    Dropped,
    Event,
    Finished,
    Listening,
    Refused,
    Restored,
    Resumed,
    Step,
    read_events,
)
from tests.helpers import TINY
from tests.runtime.network_helpers import free_port

# 10 KB chunks: every frame is cut in pieces; a shared client seed, so the clients start as the simulation's do
DEPLOY = ["deploy.step_timeout=20", "deploy.chunk_mb=0.01", "privacy.client_seed=4242"]


class Cluster:
    """A server and clients started with `python -m mpsl`, each logging its events to its own file."""

    def __init__(self, tmp: Path, *overrides: str) -> None:
        self.tmp, self.port = tmp, free_port()
        self.overrides = [*TINY, *DEPLOY, f"out_dir={tmp / 'runs'}", *overrides]
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "a")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen([sys.executable, "-m", "mpsl", *args, "--log-format", "json"], stdout=log,
                                stderr=subprocess.STDOUT, cwd=self.tmp, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.procs[name] = proc
        return proc

    def server(self, *extra: str, name: str = "server") -> subprocess.Popen:
        return self.start(name, "server", "cfg.yaml", *self.overrides, "--listen", f"127.0.0.1:{self.port}", *extra)

    def client(self, k: int, *extra: str) -> subprocess.Popen:
        return self.start(f"client{k}", "client", "cfg.yaml", *self.overrides, "--server", f"127.0.0.1:{self.port}",
                          "--client-id", str(k), *extra)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def events(self, name: str, kind: type[Event] = Event) -> list:
        """The records `name` has logged so far, of one kind (default: all), in order."""
        return [e for e in read_events(self.log(name)) if isinstance(e, kind)]

    def wait_for(self, name: str, kind: type[Event], match: Callable[[Event], bool] = lambda e: True,
                 timeout: float = 120) -> Event:
        """The first event of `kind` that `match`es, once `name` has logged it."""
        deadline = time.monotonic() + timeout
        while not (found := [e for e in self.events(name, kind) if match(e)]):
            assert self.procs[name].poll() is None, f"{name} exited:\n{self.log(name)}"
            assert time.monotonic() < deadline, f"no {kind.__name__} event in {name}'s log:\n{self.log(name)}"
            time.sleep(0.1)
        return found[0]

    def finish(self, name: str, timeout: float = 180) -> int:
        try:
            return self.procs[name].wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not finish:\n{self.log(name)}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture()
def cluster(tmp_path: Path):
    (tmp_path / "cfg.yaml").write_text("name: net\n")
    clusters: list[Cluster] = []

    def make(*overrides: str) -> Cluster:
        clusters.append(Cluster(tmp_path, *overrides))
        return clusters[-1]

    yield make
    for c in clusters:
        c.stop_all()


@pytest.mark.parametrize("missing", ["0.0", "0.67"], ids=["all-modalities", "two-clients-hold-one"])
def test_three_client_processes_train_the_same_model_as_the_in_process_runtime(cluster, tmp_path: Path,
                                                                              missing: str) -> None:
    # Prepare
    net = cluster("train.epochs=2", "deploy.min_participants=3", f"partition.missing_fraction={missing}")

    # Execute
    net.server()
    for k in range(3):
        net.client(k)
    codes = [net.finish(name) for name in ("server", "client0", "client1", "client2")]

    # Assert: the same steps as the simulation, so the same weights
    assert codes == [0, 0, 0, 0], net.log("server")
    cfg = load_config(None, net.overrides)
    reference = Mpsl(cfg, load_dataset(cfg.data))
    assert sum(len(c.data.modalities) == 1 for c in reference.clients) == round(3 * float(missing))
    for epoch in range(cfg.train.epochs):
        reference.train_round(epoch, progress=False)
    run = tmp_path / "runs" / "net"
    for saved, model in ((run / "server" / "server.safetensors", reference.server.model),
                         (run / "client-1" / "client.safetensors", reference.clients[1].model)):
        weights = load_file(saved)
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(weights[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
    assert len(net.events("server", Step)) == reference.step


def test_a_killed_client_is_dropped_and_the_others_finish(cluster) -> None:
    net = cluster("train.epochs=30", "deploy.min_participants=2")
    net.server()
    for k in range(3):
        net.client(k)
    net.wait_for("server", Step, lambda e: e.participants == (0, 1, 2))  # all three are training

    net.procs["client2"].send_signal(signal.SIGKILL)

    assert net.finish("server") == 0, net.log("server")
    events = net.events("server")
    drop = next(i for i, e in enumerate(events) if isinstance(e, Dropped) and e.client == 2)
    assert len([e for e in events[drop:] if isinstance(e, Finished)]) == 1
    later = [e for e in events[drop:] if isinstance(e, Step) and 2 not in e.dropped]  # one in flight may count it
    assert later and all(2 not in e.participants for e in later)


def test_a_killed_server_resumes_from_its_checkpoint_and_the_clients_reconnect(cluster) -> None:
    net = cluster("train.epochs=12", "deploy.min_participants=3", "deploy.checkpoint_every=5")
    net.server()
    for k in range(3):
        net.client(k)
    net.wait_for("server", Checkpoint, lambda e: e.step == 15)

    net.procs["server"].send_signal(signal.SIGKILL)
    net.procs["server"].wait()
    net.server("--resume", name="server2")

    assert net.finish("server2") == 0, net.log("server2")
    assert [net.finish(f"client{k}") for k in range(3)] == [0, 0, 0]
    (resumed,) = net.events("server2", Resumed)
    steps = [e.step for e in net.events("server2", Step)]
    assert resumed.step >= 15 and steps[0] == resumed.step + 1  # nothing before the checkpoint is trained again
    assert steps == list(range(resumed.step + 1, resumed.step + 1 + len(steps)))
    assert len(net.events("server2", Finished)) == 1
    for k in range(3):
        assert Restored(client=k, step=resumed.step) in net.events(f"client{k}")


def test_a_client_with_a_wrong_token_is_refused(cluster, tmp_path: Path) -> None:
    (tmp_path / "tokens.yaml").write_text("0: token-of-client-zero-0001\n1: token-of-client-one-00001\n")
    (tmp_path / "wrong.txt").write_text("not-the-token-of-client-0\n")
    net = cluster("num_clients=2")
    net.server("--tokens", "tokens.yaml")

    net.client(0, "--token-file", "wrong.txt")

    assert net.finish("client0", timeout=60) == 2
    assert "UNAUTHENTICATED" in net.log("client0") and "Traceback" not in net.log("client0")
    refused = net.wait_for("server", Refused)
    assert refused.reason == "unknown client id or wrong token" and net.events("server", Step) == []


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_clients_trust_only_the_servers_certificate(cluster, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "server")
    other, _ = _self_signed(tmp_path, "other")
    net = cluster("num_clients=1")
    net.server("--tls-cert", str(cert), "--tls-key", str(key))

    net.client(0, "--tls-ca", str(other), "--retry-for", "2")
    assert net.finish("client0", timeout=60) == 2
    assert "no connection" in net.log("client0")

    net.client(0, "--tls-ca", str(cert))
    assert net.finish("client0", timeout=120) == 0, net.log("client0")
    assert net.finish("server") == 0
    assert [e.tls for e in net.events("server", Listening)] == ["on"]
