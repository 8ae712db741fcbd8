"""results.json: what one method's run measured, as a typed, frozen and versioned record.

`mpsl run` writes one `RunResult` per method; the reports, `mpsl report`, `mpsl eval` and the reuse
of finished methods read it back with `RunResult.load`, which refuses a file of another schema
version, a missing key or a value of the wrong type with one line naming the file and the key.

On disk every field is a key of the same name, with two exceptions that keep the layout people
already read: the `cost` record's fields (`flops`, `client_memory_bytes`, `params`) sit at the top
level, and each history entry holds its test metrics beside its own keys (`test_accuracy`, ...).
Change the layout, bump SCHEMA_VERSION.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpsl.config import Config, from_dict, to_dict
from mpsl.errors import ConfigError, MpslError
from mpsl.files import read_json, write_json

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
_FLAT = {"flatten": True}  # field metadata: the field's own keys sit in its parent's JSON object


@dataclass(frozen=True)
class EpochRecord:
    """One epoch (FL: round): training loss and accuracy over the samples used, the test metrics after it,
    and the cumulative bytes per client so far."""

    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    steps: int
    bytes_up_per_client: float
    bytes_down_per_client: float
    seconds: float
    test: dict[str, float] = field(metadata=_FLAT)  # keyed as RunResult.final: test_accuracy, test_i2t_r1, ...
    val: dict[str, float] = field(default_factory=dict)  # the same metrics on the validation split (val_accuracy)


@dataclass(frozen=True)
class Comm:
    """Encoded bytes (framing included; `payload_*`: tensor bytes alone) and messages, per client on average."""

    bytes_up_per_client: float
    bytes_down_per_client: float
    bytes_up_per_client_per_round: float
    bytes_down_per_client_per_round: float
    payload_bytes_up_per_client: float
    payload_bytes_down_per_client: float
    messages_per_client: float


@dataclass(frozen=True)
class FlopsPerSample:
    """Forward + backward FLOPs per training sample: on a client, on the server, of the whole model."""

    client_per_sample: float
    server_per_sample: float
    model_per_sample: float
    client_share: float  # client / model


@dataclass(frozen=True)
class ClientMemory:
    """Bytes one client holds while training one mini-batch of `batch_size` samples."""

    parameters: int
    optimizer: int
    activations: int
    total: int
    batch_size: int


@dataclass(frozen=True)
class TrainableParams:
    client_trainable: int
    server_trainable: int
    model_trainable: int
    encoder_total: int  # every encoder parameter, trainable or not


@dataclass(frozen=True)
class Cost:
    """What training costs a client and the server, measured on one client mini-batch."""

    flops: FlopsPerSample
    client_memory_bytes: ClientMemory
    params: TrainableParams


@dataclass(frozen=True)
class Trial:
    """One setting of a tuning grid and the final validation score it reached."""

    overrides: dict[str, float]  # dotted config keys -> values
    val: float


@dataclass(frozen=True)
class Tuning:
    """The grid `--tune` trained this method over, each with the same budget, and which one was kept."""

    metric: str  # the validation key compared, e.g. val_accuracy
    trials: tuple[Trial, ...]
    chosen: int  # index into trials: the best score (the first of equals)


@dataclass(frozen=True)
class Versions:
    mpsl: str
    torch: str
    python: str
    git_commit: str | None  # '+dirty' with uncommitted changes; None outside git


@dataclass(frozen=True)
class Privacy:
    """The (epsilon, delta) of the run's privacy noise (privacy.token_noise, privacy.grad_noise), from the
    dp-accounting RDP accountant (mpsl.analysis.privacy); epsilon None: that mechanism is off or noiseless."""

    delta: float
    epsilon_tokens: float | None  # the inputs, through the cut-layer tokens
    epsilon_labels: float | None  # the labels, through the returned feature gradients


@dataclass(frozen=True)
class RunResult:
    """One method trained on one config: its history, final metrics, traffic, cost and provenance."""

    method: str
    dataset: str
    task: str
    metric: str  # the headline key of `final` and of each history entry's test metrics
    num_clients: int
    epochs: int
    seed: int
    config: Config  # as the method trained with it (Method.configure applied)
    history: tuple[EpochRecord, ...]
    # final test metrics, open-ended by nature: the task's (test_accuracy; test_i2t_r1 ...), single-modality
    # ablations (test_accuracy_image_only), the mean of the clients' own models (..._personalized_mean)
    final: dict[str, float]
    personalized: tuple[float, ...]  # the headline score of each client's own model; empty if none is kept
    comm: Comm
    cost: Cost = field(metadata=_FLAT)
    samples_per_client: tuple[int, ...]
    modalities_per_client: tuple[tuple[str, ...], ...]
    client_batch_size: int
    wall_seconds: float
    versions: Versions
    tuning: Tuning | None = None  # set when this result was picked by --tune
    privacy: Privacy | None = None  # split-learning methods: what the privacy settings spent
    schema_version: int = SCHEMA_VERSION

    @property
    def headline(self) -> float:
        """The final headline score (classification: accuracy; retrieval: mean Recall@K)."""
        return self.final[self.metric]

    @property
    def personalized_mean(self) -> float | None:
        return self.final.get(f"{self.metric}_personalized_mean")

    def to_json(self) -> dict[str, Any]:
        tree = _plain(self)
        return {"schema_version": tree.pop("schema_version"), **tree}

    @classmethod
    def from_json(cls, data: Any, source: str = "results") -> RunResult:
        """The record of a parsed results.json; `source` (the file) leads every error."""
        if not isinstance(data, dict):
            raise MpslError(f"{source} is not an mpsl results file (not a JSON object)")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            found = "no schema_version (an older mpsl, or not a results file)" if version is None \
                else f"schema_version {version!r}"
            raise MpslError(f"{source} has {found}; this mpsl reads schema_version {SCHEMA_VERSION} "
                            "(train that method again, e.g. with --force)")
        return _Reader(source).record(cls, data, "")

    def save(self, path: Path) -> Path:
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> RunResult:
        return cls.from_json(read_json(path), str(path))


def _plain(value: Any) -> Any:
    """Records -> JSON values (tuples become lists, flattened fields merge into their parent)."""
    if isinstance(value, Config):
        return to_dict(value)
    if dataclasses.is_dataclass(value):
        tree: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = _plain(getattr(value, f.name))
            if f.metadata.get("flatten"):
                tree.update(item)
            else:
                tree[f.name] = item
        return tree
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _keys(cls: type) -> set[str]:
    """The JSON keys a record's fields take up in its object."""
    hints = typing.get_type_hints(cls)
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flatten"):
            keys.add(f.name)
        elif dataclasses.is_dataclass(hints[f.name]):
            keys |= _keys(hints[f.name])
    return keys


class _Reader:
    """Builds records from JSON values, checking every key and type against the annotations."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> typing.NoReturn:
        raise MpslError(f"{self.source}: {where + ': ' if where else ''}{problem}")

    def record(self, cls: type, data: Any, where: str) -> Any:
        if not isinstance(data, dict):
            self.fail(where, f"expected an object, got {_short(data)}")
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if not f.metadata.get("flatten") and f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            self.fail(where, f"missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        rest = {k: v for k, v in data.items() if k not in _keys(cls)}
        values: dict[str, Any] = {}
        for f in fields:
            inner = f"{where}.{f.name}" if where else f.name
            if f.metadata.get("flatten") and dataclasses.is_dataclass(hints[f.name]):
                own = _keys(hints[f.name])
                values[f.name] = self.record(hints[f.name], {k: v for k, v in data.items() if k in own}, where)
            elif f.metadata.get("flatten"):  # an open-ended mapping: every key no other field takes
                values[f.name], rest = self.value(hints[f.name], rest, where), {}
            elif f.name in data:
                values[f.name] = self.value(hints[f.name], data[f.name], inner)
        if rest:
            self.fail(where, f"unknown key{'s' if len(rest) > 1 else ''} {', '.join(sorted(rest))}")
        return cls(**values)

    def value(self, hint: Any, data: Any, where: str) -> Any:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is Config:
            if not isinstance(data, dict):
                self.fail(where, f"expected the config as an object, got {_short(data)}")
            try:
                return from_dict(data)
            except ConfigError as exc:
                self.fail(where, f"does not load as a config of this mpsl ({exc})")
        if dataclasses.is_dataclass(hint):
            return self.record(hint, data, where)
        if origin in (typing.Union, types.UnionType):
            if data is None and type(None) in args:
                return None
            return self.value(next(a for a in args if a is not type(None)), data, where)
        if origin is tuple:  # tuple[X, ...]
            if not isinstance(data, list):
                self.fail(where, f"expected a list, got {_short(data)}")
            return tuple(self.value(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if origin is dict:
            if not isinstance(data, dict):
                self.fail(where, f"expected an object, got {_short(data)}")
            return {k: self.value(args[1], v, f"{where}.{k}" if where else k) for k, v in data.items()}
        if hint is float:
            if isinstance(data, bool) or not isinstance(data, int | float):
                self.fail(where, f"expected a number, got {_short(data)}")
            return float(data)
        if hint is int:
            if isinstance(data, bool) or not isinstance(data, int):
                self.fail(where, f"expected an integer, got {_short(data)}")
            return data
        if hint is str:
            if not isinstance(data, str):
                self.fail(where, f"expected a string, got {_short(data)}")
            return data
        raise TypeError(f"results annotation {hint!r} of {where} is not supported")  # a bug, not a file's fault


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
