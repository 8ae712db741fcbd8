"""A deployed client refuses to add noise the server could predict: noise needs a client seed of its own."""

from __future__ import annotations

import asyncio

import pytest

from mpsl.deploy.client_app import run_client
from mpsl.errors import ConfigError
from tests.helpers import tiny_config


def test_a_client_with_noise_but_no_secret_seed_stops_before_dialing() -> None:
    cfg = tiny_config("privacy.grad_clip=1", "privacy.grad_noise=0.5")
    with pytest.raises(ConfigError, match="^privacy.client_seed: "):
        asyncio.run(run_client(cfg, "127.0.0.1:1", 0, False, None, None, retry_for=0.1))
