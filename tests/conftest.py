"""Every test starts from the same global RNG state."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory):
    """One dataset cache for the whole session, never the user's ~/.cache."""
    return tmp_path_factory.mktemp("mpsl-cache")
