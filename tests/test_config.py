from __future__ import annotations

from pathlib import Path

import pytest

from mpsl.config import Config, client_batch_size, load_config, to_dict
from mpsl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_demo_config_file_spells_out_the_defaults() -> None:
    # Prepare / Execute
    from_file = load_config(REPO / "configs" / "avdigits.yaml")

    # Assert: `mpsl demo` (the defaults) and the documented config file cannot drift apart
    assert from_file == Config()


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
        (["num_clients=5000"], "num_clients"),  # more clients than samples
        (["model.image.patch=[4]"], "model.image.patch"),
        (["eval.personalized=maybe"], "eval.personalized"),
        (["train=3"], "train"),
        (["nonsense"], "key=value"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], names: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)

    message = str(err.value)
    assert names in message
    assert "\n" not in message


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
