"""Typed, frozen run configuration: defaults follow the paper, YAML files and `key=value` overrides refine it.

Every error names the offending key and says what was expected, so a typo never silently falls back
to a default. A key whose value names a registry entry (a fusion, a partition, a dataset...) is a plain
string here: its registry declares the key and `mpsl.registry.check_choices` checks it against what is
registered, plugins included, so the names are listed in one place only. Literals are left for the
choices no plugin can extend.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mpsl.errors import ConfigError

TextKind = Literal["text", "clip-text", "sentence"]  # what mpsl.data.text turns sentences into


@dataclass(frozen=True)
class DataConfig:
    name: str = "avdigits"
    root: str | None = None  # the folder holding a dataset in its official layout (the paper's datasets)
    cache_dir: str | None = None  # None: $XDG_CACHE_HOME/mpsl, else ~/.cache/mpsl
    # samples per split: avdigits builds this many (None: 4000 / 1000); file datasets keep a seeded random
    # subset of this size (None: all of them)
    train_size: int | None = None
    test_size: int | None = None
    seed: int = 0  # seeds the dataset's construction (or subset), not training
    # training samples held out as a validation split (a seeded random subset, by data.seed); 0: none. Every
    # selection (mpsl tune) reads it; the test split is only reported
    val_size: int = 0
    image_size: int = 224  # file datasets: images and video frames are resized and centre-cropped to this
    hflip: bool = False  # file datasets: mirror each training image left-right with probability 1/2 per read
    audio_frames: int | None = None  # fbank frames (10 ms) per audio clip; None: the dataset's default
    # text modalities: text (WordPiece ids for the encoder's own words), clip-text (CLIP ids for the client's
    # frozen CLIP text tower), sentence (a frozen sentence encoder's vectors); null: text for one sentence
    # per sample, sentence for several (retrieval's five captions)
    text: TextKind | None = None
    text_tokenizer: str | None = None  # local Hugging Face folder (clip-text: a CLIP); None: the packaged MiniLM
    text_length: int = 32  # tokens per sentence (truncated / padded)


@dataclass(frozen=True)
class PartitionConfig:
    kind: str = "dirichlet"  # a name in mpsl.data.PARTITIONS (`mpsl list`), a plugin's too
    alpha: float = 0.5  # Dirichlet concentration (dirichlet: of labels, quantity: of sizes); small = strong skew
    min_size: int = 10  # resample until every client holds at least this many samples
    # missing modalities: this fraction of the clients holds only one modality (`missing_keep`, or one
    # drawn per client when null); the server runs them on the tokens they have
    missing_fraction: float = 0.0
    missing_keep: str | None = None


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ()  # suffixes of Linear layers in the blocks, e.g. [qkv, proj]; empty: all of them


@dataclass(frozen=True)
class EncoderConfig:
    source: str = "minilm"  # a name in mpsl.models.ENCODERS
    path: str | None = None  # local model directory; None: the packaged default of `source`
    # last_k: the last `trainable_blocks` blocks train (paper); frozen: none (Meta-Transformer style);
    # lora: low-rank adapters (peft) on the blocks' Linear layers, the blocks themselves frozen
    finetune: str = "last_k"  # a name in mpsl.models.finetune.FINETUNING
    trainable_blocks: int | None = None  # the last k blocks train; None: half of them (paper)
    lora: LoraSettings = field(default_factory=LoraSettings)
    dropout: float = 0.0
    # architecture of the random sources (`random`: BERT blocks, `vit`: ViT blocks); `preset` (e.g. vit-b16)
    # sets width/depth/heads/mlp_ratio at once and gives timm/open_clip checkpoints their head count
    preset: str | None = None  # a name in mpsl.models.PRESETS
    width: int = 384
    depth: int = 6
    heads: int = 12
    mlp_ratio: float = 4.0
    act: str = "gelu"  # ViT MLP activation in mpsl.models.vit.ACTIVATIONS (OpenAI CLIP weights: quick_gelu)


@dataclass(frozen=True)
class TokenizerConfig:
    patch: tuple[int, int] = (16, 16)
    stride: tuple[int, int] | None = None  # None: same as patch (no overlap)


@dataclass(frozen=True)
class RetrievalSettings:
    """Retrieval's similarity: paper = raw dot products; CLIP style = normalize, temperature 0.07, learned."""

    normalize: bool = False  # L2-normalize image and caption embeddings
    temperature: float = 1.0  # similarities are divided by it
    learn_temperature: bool = False


@dataclass(frozen=True)
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    image: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(patch=(16, 16)))  # ViT-B/16
    audio: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(patch=(16, 16), stride=(10, 10)))  # AST
    # early: one joint sequence; late: one pass per modality; dual (retrieval): the first modality and
    # each sentence of the others embedded on their own (mpsl.models.FUSIONS). null: the dataset's own
    # (paper's) choice
    fusion: str | None = None
    pooling: str = "cls"  # one feature per modality (mpsl.models.POOLINGS): its CLS output, or its token mean
    # the cut: this many of the encoder's first blocks run on every client (0: right after the tokenizers, paper);
    # the tokens the server sees are then no linear map of the raw input, at the clients' compute
    client_blocks: int = 0
    head: Literal["client", "server"] = "client"  # client: labels never leave the client
    # FedCLIP-style attention adapter on the pooled features (Linear-Tanh-Linear-Softmax, multiplied
    # onto them): per-modality, shared by all, or none (mpsl.models.ADAPTERS). `fedavg-adapter` turns it on.
    adapter: str = "none"
    # the client-side frozen text encoder of `clip-text` modalities (the paper's text recipe): a local
    # Hugging Face CLIP directory whose text tower turns each sentence into one vector
    text_encoder: str | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16: the server encoder under autocast (fp16: grad scaler)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)  # retrieval datasets only


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 64  # global batch B
    # equal: every client sends ceil(B / N) per step (paper); proportional: client k sends its share
    # n_k / n of B, so all clients run out together and every step's batch mixes all of them
    client_batch: Literal["equal", "proportional"] = "equal"
    server_lr: float = 1e-4
    client_lr: float = 1e-4
    lr_step: int = 5  # StepLR period in epochs (paper: 5)
    lr_gamma: float = 0.1
    weight_decay: float = 0.0
    # mpsl, beyond the paper: every this many global steps the clients' models are averaged (FedAvg weighted by
    # their samples, sent up and down as Weights and counted); each keeps its own Adam state. None: never
    client_sync_every: int | None = None


@dataclass(frozen=True)
class FLConfig:
    """Federated baselines (fedavg, fedavg-adapter, splitfed); one round = every client's local epochs."""

    local_epochs: int = 1
    clients_per_round: int | None = None  # None: all clients every round (paper)
    adapter: str = "per-modality"  # what fedavg-adapter trains (mpsl.models.ADAPTERS)


@dataclass(frozen=True)
class TuneConfig:
    """`mpsl compare --tune`: the grid each method is trained over, with the same epoch/round budget, picking
    the setting with the best final validation score (data.val_size must hold out a validation split)."""

    # factors on the configured learning rates: split methods try every pair (server x client); FedAvg and
    # centralized scale both together (one whole model)
    lr_factors: tuple[float, ...] = (0.1, 1.0, 10.0)
    local_epochs: tuple[int, ...] = (1, 2)  # FedAvg, FedAvg-adapter: fl.local_epochs tried with every rate
    # method -> {dotted key: value}: the setting a recorded tuning kept (`compare --tune` writes it to
    # runs/<name>/tuned.yaml), applied whenever that method trains without --tune
    chosen: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how this process computes; results do not depend on it beyond float rounding."""

    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N | mps
    compile: bool = False  # torch.compile the encoder (server side, and the whole model for FL/centralized)
    prefetch: int = 2  # mini-batches each party reads ahead on a background thread (0: read when needed)
    # simulation only. batched: all clients of a step as one stacked computation (vmap over stacked parameters,
    # one multi-tensor Adam), bytes counted from shapes; loop: one SplitClient after another through per-client
    # handles. A client model batched clients cannot run exactly (e.g. a frozen CLIP text tower) runs the loop.
    clients: Literal["batched", "loop"] = "batched"
    # server replicas under torchrun (README: Scaling out): the backend of their gradient sums. auto: nccl on CUDA,
    # else gloo; nccl needs CUDA. Ignored by a single process
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    # simulation only. inprocess: every party in this process; ray: the clients in Ray actors (section `ray`),
    # the MPSL server in one more actor; the FL and SplitFed baselines train their clients in the actors
    kind: Literal["inprocess", "ray"] = "inprocess"


@dataclass(frozen=True)
class RayConfig:
    """runtime.kind: ray (needs `pip install 'mpsl[ray]'`); the in-process runtime ignores this section."""

    address: str | None = None  # null: start Ray in this process; auto: join the `ray start` cluster; or host:port
    actors: int = 2  # client actors; each holds a contiguous slice of the clients (many clients per actor)
    actor_cpus: float = 1.0  # CPUs each client actor reserves (Ray's scheduling unit; also its torch threads)
    server_gpus: float = 0.0  # GPUs the MPSL server actor asks for (0: it runs on a CPU)
    local_cpus: int | None = None  # CPUs of the Ray instance started when address is null; null: all of them
    timeout_s: float = 600.0  # seconds any actor call may take; then the run stops with an error naming the actor


@dataclass(frozen=True)
class DeployConfig:
    """`mpsl server` / `mpsl client` over gRPC (the in-process simulation ignores this section)."""

    step_timeout: float = 30.0  # seconds a client has to answer each request; then it is dropped
    min_participants: int = 1  # fewer connected clients than this: the server waits
    max_client_batch: int | None = None  # largest mini-batch a client may send; None: train.batch_size
    # float32 | float16 | bfloat16 (mpsl.protocol.serde.DTYPES): every tensor on the wire, both ways. The
    # server's setting: it announces it to each client that joins, and clients encode with it, not their own
    wire_dtype: str = "float32"
    chunk_mb: float = 1.0  # encoded messages travel in gRPC messages of at most this size
    checkpoint_every: int = 50  # steps between checkpoints (server and clients, coordinated)
    checkpoint_dir: str | None = None  # None: runs/<name>/server or runs/<name>/client-<id>
    keep_checkpoints: int = 3  # newest checkpoints each party keeps (2+: an epoch's end has two of one step)
    # what one peer may cost the server (README: Security); every refusal names the key it hit
    join_timeout: float = 10.0  # seconds a new stream has to send its Join; then it is closed
    max_streams: int | None = None  # open client streams, joined or not; None: 2 x num_clients
    max_streams_per_client: int = 2  # open streams of one client id (a reconnect may overlap a stale one)
    min_chunk_kb: float = 8.0  # every piece of a client's frame but the last is at least this many KiB
    # a client whose requests time out `quarantine_after` times in a row (no answered step between) is
    # refused with UNAVAILABLE and a retry-after for quarantine_s seconds, doubling with every further
    # timeout up to quarantine_max_s; quarantine_s: 0 never refuses
    quarantine_after: int = 2
    quarantine_s: float = 10.0
    quarantine_max_s: float = 300.0


@dataclass(frozen=True)
class GuardConfig:
    """What the server lets into a step from one client, in every runtime (README: Security). A client out of
    bounds is left out of the step before anything is updated; over gRPC its stream is closed."""

    max_token_abs: float | None = None  # |cut-layer token values|; None: sqrt(float32 max / width) / 1000
    max_grad_abs: float = 1e4  # |feature-gradient values|
    # robust aggregation (off: null): clip each client's gradient of its own loss to this multiple of the
    # step's median norm. Exact while no client is clipped; a clipped client's update is scaled down
    clip_to_median: float | None = None


@dataclass(frozen=True)
class PrivacyConfig:
    """What the server may learn from the messages (docs/privacy.md measures each setting)."""

    # seed of the client-side initialization (tokenizers, client head) and of the clients' noise: shared by the
    # clients, never sent to the server, so the server cannot rebuild the clients' starting weights from its own
    # config. null: derived from `seed` in a simulation (reproducible); `mpsl client` refuses null
    client_seed: int | None = None
    # true: every feature gradient carries the client's step loss and correct count (debugging; they reveal labels).
    # false: clients report loss and accuracy once per epoch, summed over all their samples
    step_metrics: bool = False
    # label protection: each sample's returned feature gradient (of its own loss) is clipped to grad_clip (L2) and
    # gets Gaussian noise of std grad_noise x grad_clip; grad_clip null: off
    grad_clip: float | None = None
    grad_noise: float = 0.0
    # input protection: each sample's cut-layer tokens (all modalities together) are clipped to token_clip (L2) and
    # get Gaussian noise of std token_noise x token_clip; the (epsilon, delta) this gives is in results.json
    token_clip: float | None = None
    token_noise: float = 0.0
    delta: float = 1e-5  # the delta of the reported (epsilon, delta)
    # NoPeek: the client adds nopeek x distance correlation(raw inputs, tokens) to its loss; 0: off
    nopeek: float = 0.0


@dataclass(frozen=True)
class LoggingConfig:
    tensorboard: bool = False  # event files in runs/<name>/<method>/tensorboard (needs `tensorboard`)


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 250
    personalized: bool = True  # also evaluate every client's own (never averaged) model
    ablations: bool = True  # also evaluate with each modality blanked


@dataclass(frozen=True)
class Config:
    name: str = "mpsl"
    seed: int = 2024
    num_clients: int = 8
    methods: tuple[str, ...] = ("mpsl", "fedavg", "centralized")
    out_dir: str = "runs"
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def replace(self, **overrides: Any) -> Config:
        """A copy with dotted overrides applied and validated, e.g. replace(**{"train.epochs": 1})."""
        tree = to_dict(self)
        for key, value in overrides.items():
            _set_dotted(tree, key, value)
        return from_dict(tree)


# ---------------------------------------------------------------------------------------------
# loading


PACKAGED_CONFIGS = Path(__file__).parent / "configs"  # shipped in the package: `mpsl run emoji` finds emoji.yaml
DEMO_CONFIG = PACKAGED_CONFIGS / "avdigits.yaml"


def packaged_configs() -> dict[str, Path]:
    """The configs shipped in the package, by name (the file name without .yaml)."""
    return {p.stem: p for p in sorted(PACKAGED_CONFIGS.glob("*.yaml"))}


def find_config(name_or_path: str | Path) -> Path:
    """A config file by path, or by the name of a packaged config; a file of that name wins."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    packaged = packaged_configs()
    if str(name_or_path) in packaged:
        return packaged[str(name_or_path)]
    raise ConfigError(f"config file {name_or_path} does not exist, and no packaged config has that name "
                      f"(packaged: {', '.join(packaged)})")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (a path or a packaged config's name), then `key=value` overrides (values
    parsed as YAML scalars)."""
    tree = to_dict(Config())
    if path is not None:
        _merge(tree, _read_yaml(find_config(path)), prefix="")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=2")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return from_dict(tree)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys at the top level")
    return loaded


OPEN_MAPPINGS = ("tune.chosen",)  # keys whose value is a mapping of the user's names, set as a whole


def _merge(tree: dict[str, Any], update: dict[str, Any], prefix: str) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in tree:
            raise ConfigError(f"{dotted}: unknown key (known: {', '.join(sorted(tree))})")
        if isinstance(tree[key], dict) and isinstance(value, dict) and dotted not in OPEN_MAPPINGS:
            _merge(tree[key], value, prefix=f"{dotted}.")
        else:
            tree[key] = value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for depth, part in enumerate(parents):
        child = node.get(part)
        if not isinstance(child, dict):
            where = ".".join(parents[: depth + 1])
            raise ConfigError(f"{where}: unknown section (in override {key})")
        node = child
    if leaf not in node:
        where = ".".join(parents) or "top level"
        raise ConfigError(f"{key}: unknown key ({where} has: {', '.join(sorted(node))})")
    if isinstance(node[leaf], dict) and not isinstance(value, dict):
        raise ConfigError(f"{key}: is a section, set one of its keys ({', '.join(sorted(node[leaf]))})")
    node[leaf] = value


def dotted_value(tree: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of a config tree (to_dict), None where no such key exists."""
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) for YAML/JSON round trips."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


def from_dict(tree: dict[str, Any]) -> Config:
    cfg = _build(Config, tree, prefix="")
    validate(cfg)
    return cfg


def _build(cls: type, tree: Any, prefix: str) -> Any:
    if not isinstance(tree, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for name in names & set(tree):
        values[name] = _coerce(hints[name], tree[name], f"{prefix}{name}")
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation; conversions: int->float, "1e-4"->float, list->tuple."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(args[0], k, key): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config annotation {hint!r} of {key} is not supported")  # a bug, not user input


# ---------------------------------------------------------------------------------------------
# validation of values (registry names are checked where the registries live: mpsl.registry.check_choices)


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _validate_chosen(cfg: Config) -> None:
    """tune.chosen names existing keys of the sections a method trains with (method names: check_choices)."""
    tree = to_dict(cfg)
    for method, settings in cfg.tune.chosen.items():
        for key in settings:
            node = dotted_value(tree, key)
            _require(key.split(".")[0] in ("train", "fl") and isinstance(node, int | float)
                     and not isinstance(node, bool), f"tune.chosen.{method}.{key}",
                     "is not a numeric train.* or fl.* setting (what --tune chooses)")


def validate(cfg: Config) -> None:
    """Value checks that need no data or model: ranges and relations between keys."""
    _require(cfg.num_clients >= 1, "num_clients", f"must be at least 1, got {cfg.num_clients}")
    _require(bool(cfg.name.strip()), "name", "must not be empty")
    _require("/" not in cfg.name and cfg.name not in (".", ".."), "name", "must be a plain folder name")
    _require(len(cfg.methods) >= 1, "methods", "list at least one method")
    _require(len(set(cfg.methods)) == len(cfg.methods), "methods", "lists a method twice")
    for key in ("train_size", "test_size"):
        size = getattr(cfg.data, key)
        _require(size is None or size >= 1, f"data.{key}", "must be at least 1 (or null)")
    _require(cfg.data.val_size >= 0, "data.val_size", f"must be 0 (none) or more, got {cfg.data.val_size}")
    _require(cfg.data.image_size >= 1, "data.image_size", "must be at least 1")
    _require(cfg.data.audio_frames is None or cfg.data.audio_frames >= 16, "data.audio_frames",
             "must be at least 16 (one patch)")
    _require(cfg.data.text_length >= 2, "data.text_length", "must be at least 2")
    _require(0.0 <= cfg.partition.missing_fraction <= 1.0, "partition.missing_fraction", "must be in [0, 1]")
    _require(cfg.partition.alpha > 0, "partition.alpha", f"must be positive, got {cfg.partition.alpha}")
    _require(cfg.partition.min_size >= 1, "partition.min_size", "must be at least 1")
    if cfg.data.train_size is not None:
        check_clients_fit(cfg, cfg.data.train_size)
    enc = cfg.model.encoder
    _require(enc.trainable_blocks is None or enc.trainable_blocks >= 0, "model.encoder.trainable_blocks",
             "must be 0 or more")
    _require(0.0 <= enc.dropout < 1.0, "model.encoder.dropout", "must be in [0, 1)")
    _require(cfg.model.client_blocks >= 0, "model.client_blocks", "must be 0 or more (encoder blocks per client)")
    _require(cfg.model.retrieval.temperature > 0, "model.retrieval.temperature", "must be positive")
    _require(enc.lora.rank >= 1, "model.encoder.lora.rank", "must be at least 1")
    _require(enc.lora.alpha > 0, "model.encoder.lora.alpha", "must be positive")
    _require(0.0 <= enc.lora.dropout < 1.0, "model.encoder.lora.dropout", "must be in [0, 1)")
    _require(enc.width >= 1 and enc.depth >= 1 and enc.heads >= 1, "model.encoder", "width, depth, heads >= 1")
    _require(enc.width % enc.heads == 0, "model.encoder.width", f"{enc.width} is not divisible by heads={enc.heads}")
    for name in ("image", "audio"):
        tok: TokenizerConfig = getattr(cfg.model, name)
        _require(min(tok.patch) >= 1, f"model.{name}.patch", "sizes must be at least 1")
        _require(tok.stride is None or min(tok.stride) >= 1, f"model.{name}.stride", "must be at least 1")
    tr = cfg.train
    _require(tr.epochs >= 1, "train.epochs", f"must be at least 1, got {tr.epochs}")
    _require(tr.batch_size >= 1, "train.batch_size", f"must be at least 1, got {tr.batch_size}")
    _require(tr.server_lr > 0 and tr.client_lr > 0, "train", "learning rates must be positive")
    _require(tr.lr_step >= 1, "train.lr_step", "must be at least 1")
    _require(0 < tr.lr_gamma <= 1, "train.lr_gamma", "must be in (0, 1]")
    _require(tr.client_sync_every is None or tr.client_sync_every >= 1, "train.client_sync_every",
             f"must be at least 1 step (or null: never), got {tr.client_sync_every}")
    _require(cfg.eval.batch_size >= 1, "eval.batch_size", "must be at least 1")
    _require(len(cfg.tune.lr_factors) >= 1 and min(cfg.tune.lr_factors) > 0, "tune.lr_factors",
             f"must list positive factors, got {list(cfg.tune.lr_factors)}")
    _require(len(cfg.tune.local_epochs) >= 1 and min(cfg.tune.local_epochs) >= 1, "tune.local_epochs",
             f"must list epochs of at least 1, got {list(cfg.tune.local_epochs)}")
    _validate_chosen(cfg)
    _require(cfg.fl.local_epochs >= 1, "fl.local_epochs", f"must be at least 1, got {cfg.fl.local_epochs}")
    _require(cfg.runtime.prefetch >= 0, "runtime.prefetch", f"must be 0 or more, got {cfg.runtime.prefetch}")
    _require(DEVICE_PATTERN.fullmatch(cfg.runtime.device) is not None, "runtime.device",
             f"{cfg.runtime.device!r} is not auto, cpu, cuda, cuda:N or mps")
    _validate_ray(cfg.ray)
    dep = cfg.deploy
    _require(dep.step_timeout > 0, "deploy.step_timeout", "must be positive seconds")
    _require(dep.min_participants >= 1, "deploy.min_participants", "must be at least 1")
    _require(dep.max_client_batch is None or dep.max_client_batch >= 1, "deploy.max_client_batch",
             "must be at least 1")
    _require(0.01 <= dep.chunk_mb <= 64, "deploy.chunk_mb", f"must be in [0.01, 64], got {dep.chunk_mb}")
    _require(dep.checkpoint_every >= 1, "deploy.checkpoint_every", "must be at least 1")
    _require(dep.keep_checkpoints >= 2, "deploy.keep_checkpoints",
             f"must be at least 2 (an epoch's end saves a second checkpoint of its last step), "
             f"got {dep.keep_checkpoints}")
    g = cfg.guard
    _require(g.max_token_abs is None or g.max_token_abs > 0, "guard.max_token_abs", "must be positive (or null)")
    _require(g.max_grad_abs > 0, "guard.max_grad_abs", f"must be positive, got {g.max_grad_abs}")
    _require(g.clip_to_median is None or g.clip_to_median >= 1, "guard.clip_to_median",
             f"must be at least 1 (a multiple of the median norm) or null, got {g.clip_to_median}")
    _require(dep.join_timeout > 0, "deploy.join_timeout", "must be positive seconds")
    _require(dep.max_streams is None or dep.max_streams >= cfg.num_clients, "deploy.max_streams",
             f"must be at least num_clients={cfg.num_clients} (or null), got {dep.max_streams}")
    _require(dep.max_streams_per_client >= 1, "deploy.max_streams_per_client", "must be at least 1")
    _require(0 < dep.min_chunk_kb <= dep.chunk_mb * 1024, "deploy.min_chunk_kb",
             f"must be positive and at most deploy.chunk_mb x 1024 = {dep.chunk_mb * 1024:g}, got {dep.min_chunk_kb}")
    _require(dep.quarantine_after >= 1, "deploy.quarantine_after", "must be at least 1")
    _require(dep.quarantine_s >= 0, "deploy.quarantine_s", "must be 0 (never) or positive seconds")
    _require(dep.quarantine_max_s >= dep.quarantine_s, "deploy.quarantine_max_s",
             "must be at least deploy.quarantine_s")
    _validate_privacy(cfg.privacy)
    per_round = cfg.fl.clients_per_round
    _require(per_round is None or 1 <= per_round <= cfg.num_clients, "fl.clients_per_round",
             f"must be between 1 and num_clients={cfg.num_clients}, got {per_round}")


def _validate_ray(ray: RayConfig) -> None:
    _require(ray.address is None or bool(ray.address.strip()), "ray.address",
             "must be null (a local instance), auto, or host:port")
    _require(ray.actors >= 1, "ray.actors", f"must be at least 1, got {ray.actors}")
    _require(ray.actor_cpus > 0, "ray.actor_cpus", f"must be positive, got {ray.actor_cpus}")
    _require(ray.server_gpus >= 0, "ray.server_gpus", f"must be 0 or more, got {ray.server_gpus}")
    _require(ray.local_cpus is None or ray.local_cpus >= 1, "ray.local_cpus", "must be at least 1 (or null)")
    _require(ray.timeout_s > 0, "ray.timeout_s", f"must be positive seconds, got {ray.timeout_s}")


def _validate_privacy(p: PrivacyConfig) -> None:
    for clip, noise in (("grad_clip", "grad_noise"), ("token_clip", "token_noise")):
        bound, sigma = getattr(p, clip), getattr(p, noise)
        _require(bound is None or bound > 0, f"privacy.{clip}", f"must be positive (or null: off), got {bound}")
        _require(sigma >= 0, f"privacy.{noise}", f"must be 0 or more (a multiple of privacy.{clip}), got {sigma}")
        _require(sigma == 0 or bound is not None, f"privacy.{noise}",
                 f"noise is scaled by privacy.{clip}: set it too (noise without clipping bounds nothing)")
    _require(0 < p.delta < 1, "privacy.delta", f"must be in (0, 1), got {p.delta}")
    _require(p.client_seed is None or 0 <= p.client_seed < 2 ** 48, "privacy.client_seed",
             f"must be in 0..2^48 - 1 (or null), got {p.client_seed}")
    _require(p.nopeek >= 0, "privacy.nopeek", f"must be 0 or more, got {p.nopeek}")


def check_clients_fit(cfg: Config, train_size: int) -> None:
    """Every client must be able to get partition.min_size samples of the training set."""
    _require(cfg.num_clients * cfg.partition.min_size <= train_size, "num_clients",
             f"{cfg.num_clients} clients x partition.min_size {cfg.partition.min_size} needs more than "
             f"{train_size} training samples")


def client_batch_size(cfg: Config, num_clients: int | None = None) -> int:
    """b = ceil(B / N), the paper's per-client mini-batch."""
    n = cfg.num_clients if num_clients is None else num_clients
    return -(-cfg.train.batch_size // n)


def client_batch_sizes(cfg: Config, shard_sizes: list[int]) -> list[int]:
    """Per-client mini-batch sizes for `train.client_batch`.

    Under label skew, equal batches leave the big clients alone for the tail of each epoch, so the
    server trains on small single-client (single-label-mix) batches; proportional batches keep
    every step a mix of all clients, of about B samples.
    """
    if cfg.train.client_batch == "equal":
        return [client_batch_size(cfg, len(shard_sizes))] * len(shard_sizes)
    steps = -(-sum(shard_sizes) // cfg.train.batch_size)  # ceil(n / B)
    return [max(1, -(-n // steps)) for n in shard_sizes]  # ceil(n_k / steps)
