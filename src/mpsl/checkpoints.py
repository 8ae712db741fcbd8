"""Final models as safetensors, written atomically, and loaded back strictly for `mpsl eval`."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from mpsl.errors import MpslError
from mpsl.files import write_atomically
from mpsl.models import WholeModel

FILES = {"client": "client.safetensors", "server": "server.safetensors"}


def save_checkpoint(model: WholeModel, out_dir: Path) -> list[Path]:
    """client.safetensors (tokenizers + head) and server.safetensors (encoder side), each written then renamed."""
    return [save_module(getattr(model, part), out_dir / name) for part, name in FILES.items()]


def save_module(module: nn.Module, path: Path) -> Path:
    return write_atomically(path, lambda tmp: save_model(module, str(tmp)))


def load_checkpoint(model: WholeModel, run_dir: Path) -> None:
    """Every tensor of both halves must be in the files, with the same names and shapes."""
    for part, name in FILES.items():
        path = run_dir / name
        if not path.is_file():
            raise MpslError(f"{path} is missing: the run did not finish, or was made before checkpoints existed")
        try:
            missing, unexpected = load_model(getattr(model, part), str(path), strict=False)
        except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
            raise MpslError(f"{path} cannot be loaded into the configured model: {str(exc).splitlines()[0]}") from None
        if missing or unexpected:
            raise MpslError(f"{path} does not match the configured model: missing {sorted(missing)[:5]}, "
                            f"unexpected {sorted(unexpected)[:5]}")
