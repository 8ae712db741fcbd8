"""Every test starts from the same global RNG state, in a home of its own.

The suite never reads or writes the user's caches: HOME, XDG_CACHE_HOME and HF_HOME point into one
temporary folder for the whole session (subprocesses inherit them), so a first run on a fresh machine
behaves like every later one.
"""

import os
import tempfile

import pytest
import torch

_HOME = tempfile.TemporaryDirectory(prefix="mpsl-test-home-")


def pytest_configure(config: pytest.Config) -> None:
    os.environ["HOME"] = _HOME.name
    os.environ["XDG_CACHE_HOME"] = os.path.join(_HOME.name, ".cache")
    os.environ["HF_HOME"] = os.path.join(_HOME.name, ".cache", "huggingface")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["MPLCONFIGDIR"] = os.path.join(_HOME.name, ".config", "matplotlib")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory):
    """One dataset cache for the whole session, never the user's ~/.cache."""
    return tmp_path_factory.mktemp("mpsl-cache")
