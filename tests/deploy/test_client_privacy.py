"""A deployed client refuses to add noise the server could predict: noise needs a client seed of its own."""

from __future__ import annotations

import asyncio

import pytest

from mpsl.deploy.client_app import run_client
from mpsl.errors import ConfigError, MpslError
from mpsl.runtime.network.events import Insecure
from tests.helpers import tiny_config
from tests.runtime.network_helpers import EventLog, free_port


def test_a_client_with_noise_but_no_secret_seed_stops_before_dialing() -> None:
    cfg = tiny_config("privacy.grad_clip=1", "privacy.grad_noise=0.5")
    with pytest.raises(ConfigError, match="^privacy.client_seed: "):
        asyncio.run(run_client(cfg, "127.0.0.1:1", 0, False, None, None, retry_for=0.1))


@pytest.mark.parametrize(("seed", "warned"), [(None, True), (12345, False)])
def test_a_client_without_a_secret_seed_logs_that_the_server_can_rebuild_its_start(seed, warned: bool) -> None:
    # Prepare: nothing listens at the address, so the client stops after its first retry
    cfg = tiny_config(*([] if seed is None else [f"privacy.client_seed={seed}"]))

    # Execute
    with EventLog() as log, pytest.raises(MpslError, match="no connection"):
        asyncio.run(run_client(cfg, f"127.0.0.1:{free_port()}", 0, False, None, None, retry_for=0.1))

    # Assert
    assert any("privacy.client_seed is null" in e.advice for e in log.of(Insecure)) == warned
