from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mpsl.config import (
    DEMO_CONFIG,
    OPEN_MAPPINGS,
    Config,
    client_batch_size,
    client_batch_sizes,
    load_config,
    to_dict,
)
from mpsl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    """Settings by dotted name; a mapping of the user's own names (tune.chosen) is one setting."""
    keys = set()
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        nested = isinstance(value, dict) and dotted not in OPEN_MAPPINGS
        keys |= _leaf_keys(value, f"{dotted}.") if nested else {dotted}
    return keys


def test_demo_config_is_valid_and_shows_every_key() -> None:
    # Prepare
    text = DEMO_CONFIG.read_text()

    # Execute
    cfg = load_config(DEMO_CONFIG)

    # Assert: the file people copy documents every setting there is
    assert _leaf_keys(yaml.safe_load(text)) == _leaf_keys(to_dict(Config()))
    assert cfg.name == "avdigits-demo" and cfg.data.name == "avdigits"
    assert (REPO / "configs" / "avdigits.yaml").read_text() == text


def test_the_demo_trains_fedavg_at_a_recorded_tuning_and_mpsl_at_the_configured_rates() -> None:
    from mpsl.experiment.tune import method_config

    # Execute
    cfg = load_config(DEMO_CONFIG)
    fedavg, mpsl = method_config(cfg, "fedavg"), method_config(cfg, "mpsl")

    # Assert: FedAvg's rates come from tune.chosen, not from the rates tuned for MPSL's server steps
    assert set(cfg.tune.chosen) == {"fedavg"}
    assert fedavg.train.server_lr == cfg.tune.chosen["fedavg"]["train.server_lr"] != cfg.train.server_lr
    assert fedavg.train.client_lr == cfg.tune.chosen["fedavg"]["train.client_lr"] != cfg.train.client_lr
    assert (mpsl.train.server_lr, mpsl.train.client_lr) == (cfg.train.server_lr, cfg.train.client_lr)


def test_paper_config_is_the_papers_setup_and_asks_for_its_folders() -> None:
    # Prepare
    from mpsl.data import load_dataset
    from mpsl.errors import DataError

    # Execute
    cfg = load_config(REPO / "configs" / "paper.yaml")

    # Assert
    assert (cfg.num_clients, cfg.train.batch_size, cfg.train.epochs, cfg.seed) == (100, 500, 15, 2024)
    assert cfg.model.encoder.preset == "vit-b16" and cfg.model.encoder.trainable_blocks == 6
    with pytest.raises(DataError, match="data.root"):
        load_dataset(cfg.data)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_names_a_registered_dataset(path: Path) -> None:
    from mpsl.data import DATASETS

    cfg = load_config(path)
    assert cfg.data.name in DATASETS
    assert path.resolve().parent == DEMO_CONFIG.parent  # the file is packaged, configs/ only links to it


def test_a_packaged_config_is_found_by_its_name_unless_a_file_of_that_name_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: run from a folder without, then with, a file called "emoji"
    monkeypatch.chdir(tmp_path)

    # Execute
    packaged = load_config("emoji", ["train.epochs=2"])
    (tmp_path / "emoji").write_text("name: my-own\n")
    own = load_config("emoji")

    # Assert
    assert packaged.name == "emoji-retrieval" and packaged.data.image_size == 64 and packaged.train.epochs == 2
    assert own.name == "my-own" and own.data.image_size == 224


def test_an_unknown_config_name_lists_the_packaged_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError) as err:
        load_config("emojis")

    assert "emojis does not exist" in str(err.value) and "packaged: avdigits, clipart, emoji, paper" in str(err.value)


def test_overrides_are_typed_and_nested() -> None:
    cfg = load_config(None, ["train.epochs=7", "model.head=server", "train.server_lr=1e-3",
                             "model.image.patch=[4, 2]", "methods=[mpsl]"])

    assert cfg.train.epochs == 7
    assert cfg.model.head == "server"
    assert cfg.train.server_lr == pytest.approx(1e-3)
    assert cfg.model.image.patch == (4, 2)
    assert cfg.methods == ("mpsl",)


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("num_clients: 4\ntrain:\n  epochs: 2\n  batch_size: 10\n")

    cfg = load_config(path, ["train.epochs=5"])

    assert (cfg.num_clients, cfg.train.epochs, cfg.train.batch_size) == (4, 5, 10)
    assert client_batch_size(cfg) == 3  # ceil(10 / 4)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["train.epochz=2"], "train.epochz"),
        (["train.epochs=two"], "train.epochs"),
        (["train.epochs=0"], "train.epochs"),
        (["model.head=cloud"], "model.head"),
        (["model.fusion=3"], "model.fusion"),
        (["partition.alpha=-1"], "partition.alpha"),
        (["num_clients=5000", "data.train_size=4000"], "num_clients"),  # more clients than samples
        (["model.image.patch=[4]"], "model.image.patch"),
        (["eval.personalized=maybe"], "eval.personalized"),
        (["train=3"], "train"),
        (["nonsense"], "key=value"),
        (["guard.max_token_abs=0"], "guard.max_token_abs"),
        (["guard.max_grad_abs=-1"], "guard.max_grad_abs"),
        (["guard.clip_to_median=0.5"], "guard.clip_to_median"),
        (["deploy.keep_checkpoints=1"], "deploy.keep_checkpoints"),
        (["train.client_sync_every=0"], "train.client_sync_every"),
        (["tune.lr_factors=[]"], "tune.lr_factors"),
        (["data.val_size=-1"], "data.val_size"),
        (["tune.chosen={fedavg: {train.server_lrr: 1.0e-5}}"], "tune.chosen.fedavg.train.server_lrr"),
        (["tune.chosen={fedavg: {data.train_size: 10}}"], "tune.chosen.fedavg.data.train_size"),
        (["tune.chosen={fedavg: {train.server_lr: fast}}"], "tune.chosen.fedavg.train.server_lr"),
        (["tune.chosen={fedavg: 1.0e-5}"], "tune.chosen.fedavg"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], names: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)

    message = str(err.value)
    assert names in message
    assert "\n" not in message


def test_recorded_choices_are_read_per_method_from_a_yaml_file(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "c.yaml"
    path.write_text("tune:\n  chosen:\n    fedavg: {train.server_lr: 1.0e-5, fl.local_epochs: 2}\n")

    # Execute
    cfg = load_config(path, ["tune.lr_factors=[1.0]"])

    # Assert: the mapping is taken whole (method names are not config keys) and typed as numbers
    assert cfg.tune.chosen == {"fedavg": {"train.server_lr": 1e-5, "fl.local_epochs": 2.0}}
    assert cfg.train.server_lr == Config().train.server_lr  # the run's own setting is untouched


def test_unknown_key_in_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  encodr: {}\n")

    with pytest.raises(ConfigError, match=r"model\.encodr: unknown key"):
        load_config(path)


def test_replace_round_trips_through_validation() -> None:
    cfg = Config()

    assert cfg.replace(**{"train.epochs": 1}).train.epochs == 1
    assert to_dict(cfg.replace())["model"]["encoder"]["source"] == "minilm"
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        cfg.replace(**{"train.batch_size": 0})


def test_equal_client_batches_are_ceil_b_over_n() -> None:
    cfg = load_config(None, ["num_clients=3", "train.batch_size=10"])

    assert client_batch_sizes(cfg, [100, 5, 40]) == [4, 4, 4]


def test_proportional_client_batches_finish_together() -> None:
    cfg = load_config(None, ["num_clients=3", "train.batch_size=10", "train.client_batch=proportional"])
    shards = [100, 5, 40]

    sizes = client_batch_sizes(cfg, shards)

    steps_needed = [-(-n // b) for n, b in zip(shards, sizes, strict=True)]
    assert max(steps_needed) == -(-sum(shards) // 10)  # the centralized number of steps
    assert sizes[0] > sizes[2] > sizes[1] >= 1
    assert sum(sizes) <= 10 + len(shards)  # about B per step


def test_the_default_cache_follows_xdg_cache_home(tmp_path, monkeypatch) -> None:
    from mpsl.config import DataConfig
    from mpsl.data.sources import cache_root

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    assert cache_root(DataConfig()) == tmp_path / "mpsl"
    assert cache_root(DataConfig(cache_dir=str(tmp_path / "own"))) == tmp_path / "own"


def test_a_dataset_of_known_size_refuses_too_many_clients_before_preparing_it(tmp_path) -> None:
    from mpsl.errors import ConfigError
    from mpsl.experiment.run import check_names

    cfg = load_config(None, ["num_clients=1000", f"data.cache_dir={tmp_path}"])  # avdigits: 4,000 samples

    with pytest.raises(ConfigError, match="num_clients: 1000 clients"):
        check_names(cfg)
    assert not any(tmp_path.iterdir())  # nothing was prepared


def _config_choices() -> dict:
    """Every config key that names a registry entry, with its registry (all of them imported first)."""
    import importlib

    from mpsl.registry import config_choices

    for module in ("mpsl.experiment.run", "mpsl.deploy.server_app"):  # data, models, protocol, methods
        importlib.import_module(module)

    return config_choices()


CHOICES = _config_choices()


def _value(cfg: Config, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_the_registries_declare_the_config_keys_whose_choices_they_hold() -> None:
    # Prepare
    import dataclasses
    import typing

    from mpsl import config

    # Execute
    keys = set(CHOICES)

    # Assert: every extensible choice is declared, and the config lists none of their names itself
    assert {"data.name", "partition.kind", "model.fusion", "model.pooling", "model.adapter", "fl.adapter",
            "model.encoder.source", "model.encoder.finetune", "model.encoder.act", "model.precision",
            "deploy.wire_dtype", "methods"} <= keys
    for key in keys:
        *section, leaf = key.split(".")
        cls = config.Config
        for part in section:
            cls = typing.get_type_hints(cls)[part]
        hint = typing.get_type_hints(cls)[leaf]
        assert leaf in {f.name for f in dataclasses.fields(cls)}
        assert hint in (str, str | None, tuple[str, ...], dict[str, dict[str, float]]), \
            f"{key} is typed {hint}, not a string (or mapping keyed by strings) checked by name"


def _naming(key: str, name: str) -> object:
    """The value of `key` that names `name`: a list of names, a mapping keyed by it, or the name."""
    shapes = {"methods": [name], "tune.chosen": {name: {"train.server_lr": 1e-3}}}
    return shapes.get(key, name)


@pytest.mark.parametrize(("key", "name"), [(k, n) for k, registry in CHOICES.items() for n in registry],
                         ids=lambda v: str(v))
def test_every_registered_name_is_accepted_by_the_config(key: str, name: str) -> None:
    from mpsl.registry import check_choices

    cfg = Config().replace(**{key: _naming(key, name)})
    check_choices(cfg)

    assert name in _value(cfg, key) if key in ("methods", "tune.chosen") else _value(cfg, key) == name


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_an_unknown_name_is_one_line_that_lists_the_registered_ones(key: str) -> None:
    from mpsl.registry import check_choices

    cfg = Config().replace(**{key: _naming(key, "no-such-name")})

    with pytest.raises(ConfigError) as err:
        check_choices(cfg)

    registry = CHOICES[key]
    assert str(err.value) == f"{key}: unknown {registry.kind} 'no-such-name' (registered: {', '.join(registry)})"
    assert len(registry.names()) >= 1 and "\n" not in str(err.value)


def test_a_fusion_registered_by_a_plugin_at_runtime_is_accepted(monkeypatch) -> None:
    # Prepare: what a module passed to `mpsl run -i` does
    from mpsl.models import FUSIONS
    from mpsl.registry import check_choices

    cfg = Config().replace(**{"model.fusion": "my-fusion"})
    with pytest.raises(ConfigError, match="model.fusion: unknown fusion 'my-fusion'"):
        check_choices(cfg)
    monkeypatch.setitem(FUSIONS._items, "my-fusion", FUSIONS.get("early"))

    # Execute
    check_choices(cfg)

    # Assert
    assert cfg.model.fusion == "my-fusion" and "my-fusion" in FUSIONS
