"""A deployed client starts from a seed no other party knows unless the clients are given one to share."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from mpsl.deploy.client_app import SEED_FILE, run_client
from mpsl.errors import MpslError
from mpsl.runtime.network.events import ClientSeed
from tests.helpers import tiny_config
from tests.runtime.network_helpers import EventLog, free_port


def _start(cfg) -> list[ClientSeed]:
    """Run `mpsl client` against an address where nothing listens (it stops after its first retry)."""
    with EventLog() as log, pytest.raises(MpslError, match="no connection"):
        asyncio.run(run_client(cfg, f"127.0.0.1:{free_port()}", 0, False, None, None, retry_for=0.1))
    return log.of(ClientSeed)


def test_without_a_shared_seed_a_client_draws_its_own_once_and_keeps_it(tmp_path) -> None:
    # Prepare: two deployments of the same config (noise on), in two folders
    noisy = ("privacy.grad_clip=1", "privacy.grad_noise=0.5")
    first, second = (tiny_config(f"out_dir={tmp_path / name}", *noisy) for name in ("a", "b"))

    # Execute: the first client starts twice, the second once
    drawn, kept, other = _start(first), _start(first), _start(second)

    # Assert: a private file with a seed that the config does not determine, read back on a restart
    (d,), (k,), (o,) = drawn, kept, other
    assert (d.origin, k.origin, o.origin) == ("drawn", "kept", "drawn") and d.path == k.path
    path = Path(d.path)
    assert path.name == SEED_FILE and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip().isdigit() and path.read_text() != Path(o.path).read_text()


def test_a_configured_seed_is_used_and_nothing_is_written(tmp_path) -> None:
    cfg = tiny_config(f"out_dir={tmp_path}", "privacy.client_seed=12345")
    (event,) = _start(cfg)
    assert event.origin == "config" and event.path is None and not list(tmp_path.rglob(SEED_FILE))


def test_a_damaged_seed_file_is_one_error_naming_it(tmp_path) -> None:
    cfg = tiny_config(f"out_dir={tmp_path}")
    (drawn,) = _start(cfg)
    path = Path(drawn.path)
    path.write_text("not a seed")
    with pytest.raises(MpslError, match=f"{path}: expected this client's seed"):
        asyncio.run(run_client(cfg, "127.0.0.1:1", 0, False, None, None, retry_for=0.1))
    assert path.read_text() == "not a seed"
