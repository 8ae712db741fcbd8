"""A deployed client needs the clients' shared secret seed: without it, a server holding the config could
rebuild the clients' starting weights and their noise."""

from __future__ import annotations

import asyncio

import pytest

from mpsl.deploy.client_app import run_client
from mpsl.errors import ConfigError, MpslError
from tests.helpers import tiny_config
from tests.runtime.network_helpers import free_port


def test_a_client_without_a_shared_seed_stops_before_reading_data_or_dialing(tmp_path) -> None:
    cfg = tiny_config(f"out_dir={tmp_path}", "data.name=avdigits", f"data.cache_dir={tmp_path / 'none'}")
    with pytest.raises(ConfigError, match=r"^privacy.client_seed: .*privacy.client_seed=<it>"):
        asyncio.run(run_client(cfg, "127.0.0.1:1", 0, False, None, None, retry_for=0.1))
    assert not list(tmp_path.iterdir())  # nothing prepared, nothing written


def test_a_client_with_a_shared_seed_goes_on_to_dial() -> None:
    cfg = tiny_config("privacy.client_seed=12345", "privacy.grad_clip=1", "privacy.grad_noise=0.5")
    with pytest.raises(MpslError, match="no connection"):  # nothing listens there: it stops after its first retry
        asyncio.run(run_client(cfg, f"127.0.0.1:{free_port()}", 0, False, None, None, retry_for=0.1))
