"""Where tensors live and in what precision they are computed: one place for every party and method.

`runtime.device` picks the device once per process; models are moved there when their party is
built, batches are copied there (from pinned memory, without blocking) when they are read, and
tensors leave it only to cross a process boundary (the codec copies them to the host).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from mpsl.errors import ConfigError
from mpsl.registry import Registry

# model.precision: the autocast dtype of every method's training forward (None: plain fp32)
PRECISIONS: Registry[torch.dtype | None] = Registry("precision", config_keys=("model.precision",))
for _name, _dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
    PRECISIONS.register(_name)(_dtype)


def resolve_device(name: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU; an unavailable device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            built = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}"
            raise ConfigError(f"runtime.device: {name} asked for, but no CUDA device is available "
                              f"(torch {torch.__version__} built {built}); use runtime.device=cpu or auto")
        # `cuda` is the current device: 0, or this replica's GPU under torchrun (mpsl.runtime.distributed)
        index = int(name.partition(":")[2] or torch.cuda.current_device())
        if index >= torch.cuda.device_count():
            raise ConfigError(f"runtime.device: {name} asked for, but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("runtime.device: mps asked for, but the MPS backend is not available")
    if name not in ("cpu", "mps"):
        raise ConfigError(f"runtime.device: {name!r} is not auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module with neither)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copy a batch to `device`; from pinned host memory the copy does not block the host."""
    if device.type == "cpu":
        return tensors
    return {k: v.to(device, non_blocking=True) for k, v in tensors.items()}


def pin(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Page-locked host copies, which a CUDA copy can overlap with compute; a no-op for other devices."""
    if device.type != "cuda":
        return tensors
    return {k: v.pin_memory() for k, v in tensors.items()}


def check_precision(precision: str) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise ConfigError(f"model.precision: {PRECISIONS.unknown(precision)}")
    return PRECISIONS.get(precision)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision on `device` (bf16, or fp16 that needs a gradient scaler); fp32 runs as is."""
    dtype = check_precision(precision)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16, the only precision whose gradients underflow without one."""
    return torch.amp.GradScaler(device.type) if check_precision(precision) == torch.float16 else None


def compile_module(module: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile in place (parameter names and checkpoints stay the same). Compilation happens on the
    first forward; the run loop turns a failure there into `compile_failure`'s one-line error."""
    if enabled:
        module.compile()
    return module


def compile_failure(exc: BaseException) -> ConfigError | None:
    """The one-line error for a torch.compile failure; None for any other exception."""
    try:
        from torch._dynamo.exc import TorchDynamoException
    except ImportError:  # a torch without dynamo cannot have failed to compile
        return None
    if not isinstance(exc, TorchDynamoException):
        return None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"runtime.compile: torch.compile could not compile the encoder ({type(exc).__name__}: "
                       f"{first}); run with runtime.compile=false")
