"""`mpsl server` and `mpsl client` as separate processes on 127.0.0.1: the deployment a user runs."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mpsl.config import load_config
from mpsl.data import load_dataset
from mpsl.experiment.methods.split_learning import Mpsl
from tests.helpers import TINY
from tests.runtime.network_helpers import free_port

DEPLOY = ["deploy.step_timeout=20", "deploy.chunk_mb=0.01"]  # 10 KB chunks: every frame is cut in pieces


class Cluster:
    """A server and clients started with `python -m mpsl`, each logging to its own file."""

    def __init__(self, tmp: Path, *overrides: str) -> None:
        self.tmp, self.port = tmp, free_port()
        self.overrides = [*TINY, *DEPLOY, f"out_dir={tmp / 'runs'}", *overrides]
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "a")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen([sys.executable, "-m", "mpsl", *args], stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.tmp, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.procs[name] = proc
        return proc

    def server(self, *extra: str, name: str = "server") -> subprocess.Popen:
        return self.start(name, "server", "cfg.yaml", *self.overrides, "--listen", f"127.0.0.1:{self.port}", *extra)

    def client(self, k: int, *extra: str) -> subprocess.Popen:
        return self.start(f"client{k}", "client", "cfg.yaml", *self.overrides, "--server", f"127.0.0.1:{self.port}",
                          "--client-id", str(k), *extra)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def wait_for(self, name: str, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            assert self.procs[name].poll() is None, f"{name} exited:\n{self.log(name)}"
            assert time.monotonic() < deadline, f"{text!r} not in {name}'s log:\n{self.log(name)}"
            time.sleep(0.1)

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
    assert net.log("server").count("event=step ") == reference.step


def test_a_killed_client_is_dropped_and_the_others_finish(cluster) -> None:
    net = cluster("train.epochs=30", "deploy.min_participants=2")
    net.server()
    for k in range(3):
        net.client(k)
    net.wait_for("server", "participants=0,1,2 ")  # all three are training

    net.procs["client2"].send_signal(signal.SIGKILL)

    assert net.finish("server") == 0, net.log("server")
    log = net.log("server")
    assert "event=dropped client=2" in log and "event=finished" in log
    later = [line for line in log[log.index("event=dropped client=2"):].splitlines()
             if "event=step " in line and "dropped=2" not in line]  # a step in flight may still count it
    assert later and not any("participants=0,1,2" in line for line in later)


def test_a_killed_server_resumes_from_its_checkpoint_and_the_clients_reconnect(cluster) -> None:
    net = cluster("train.epochs=12", "deploy.min_participants=3", "deploy.checkpoint_every=5")
    net.server()
    for k in range(3):
        net.client(k)
    net.wait_for("server", "event=checkpoint step=15 ")

    net.procs["server"].send_signal(signal.SIGKILL)
    net.procs["server"].wait()
    net.server("--resume", name="server2")

    assert net.finish("server2") == 0, net.log("server2")
    assert [net.finish(f"client{k}") for k in range(3)] == [0, 0, 0]
    resumed = net.log("server2")
    assert "event=resumed step=" in resumed and "event=finished" in resumed
    step = int(resumed.split("event=resumed step=")[1].split()[0])
    assert step >= 15 and f"event=step step={step + 1} " in resumed
    assert f"event=step step={step} " not in resumed  # nothing before the checkpoint is trained again
    for k in range(3):
        assert f"event=restored client={k} step={step}" in net.log(f"client{k}")


def test_a_client_with_a_wrong_token_is_refused(cluster, tmp_path: Path) -> None:
    (tmp_path / "tokens.yaml").write_text("0: token-of-client-zero-0001\n1: token-of-client-one-00001\n")
    (tmp_path / "wrong.txt").write_text("not-the-token-of-client-0\n")
    net = cluster("num_clients=2")
    net.server("--tokens", "tokens.yaml")

    net.client(0, "--token-file", "wrong.txt")

    assert net.finish("client0", timeout=60) == 2
    assert "UNAUTHENTICATED" in net.log("client0") and "Traceback" not in net.log("client0")
    net.wait_for("server", "event=refused")


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
    assert net.finish("server") == 0 and "tls=on" in net.log("server")
