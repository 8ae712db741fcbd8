"""Addresses as people type them: `--listen 127.0.0.1:0` logs the port it got, a host alone means port 50051."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from mpsl.cli import DEFAULT_PORT_HELP
from mpsl.deploy.server_app import status
from mpsl.errors import MpslError
from mpsl.runtime.network.address import DEFAULT_PORT, with_default_port
from tests.helpers import TINY


@pytest.mark.parametrize(("typed", "dialed"), [
    ("127.0.0.1", "127.0.0.1:50051"), ("myserver", "myserver:50051"), ("myserver:7000", "myserver:7000"),
    ("::1", "[::1]:50051"), ("[::1]", "[::1]:50051"), ("[::1]:7000", "[::1]:7000"),
    ("unix:/tmp/mpsl.sock", "unix:/tmp/mpsl.sock"), ("dns:///myserver:7000", "dns:///myserver:7000"),
])
def test_a_host_without_a_port_gets_the_default_port(typed: str, dialed: str) -> None:
    assert with_default_port(typed) == dialed
    assert DEFAULT_PORT == 50051 and str(DEFAULT_PORT) in DEFAULT_PORT_HELP  # what --help says is what is used


def test_status_of_a_host_alone_dials_the_default_port_not_443(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: record the target instead of dialing it
    dialed: list[str] = []

    def channel(target: str, *args, **kwargs):
        dialed.append(target)
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "nobody")

    monkeypatch.setattr(grpc.aio, "insecure_channel", channel)

    # Execute
    with pytest.raises((MpslError, grpc.aio.AioRpcError)):
        asyncio.run(status("myserver", None))

    # Assert
    assert dialed == ["myserver:50051"]


def test_a_server_on_port_zero_logs_the_port_it_got_and_answers_status_there(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / "cfg.yaml").write_text("name: port\n")
    log = tmp_path / "server.log"

    # Execute
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mpsl", "server", "cfg.yaml", *TINY, f"out_dir={tmp_path}",
                                   "--listen", "127.0.0.1:0"], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while "event=listening" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        address = re.search(r"event=listening address=(\S+)", log.read_text()).group(1)
        answer = subprocess.run([sys.executable, "-m", "mpsl", "status", "--server", address], capture_output=True,
                                text=True, timeout=60, check=False)
    finally:
        server.kill()
        server.wait()

    # Assert
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["state"] == "waiting"
