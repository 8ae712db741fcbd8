"""Device placement, read-ahead and compilation: one setting places everything, wrong settings fail clearly."""

from __future__ import annotations

import threading

import pytest
import torch

from mpsl.data import load_dataset
from mpsl.data.loader import Lookahead, batches
from mpsl.devices import module_device, resolve_device
from mpsl.errors import ConfigError
from mpsl.experiment.methods import METHODS
from mpsl.parties import split_server
from tests.helpers import tiny_config


def test_auto_picks_cuda_when_there_is_one_and_the_cpu_otherwise() -> None:
    device = resolve_device("auto")

    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_cuda_device_this_machine_lacks_is_one_clear_error() -> None:
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"

    with pytest.raises(ConfigError, match=r"runtime\.device: cuda.* asked for"):
        resolve_device(missing)


def test_a_device_name_torch_does_not_know_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match="runtime.device: 'tpu' is not auto, cpu, cuda"):
        tiny_config("runtime.device=tpu")


@pytest.mark.parametrize("name", ["mpsl", "fedavg", "centralized"])
def test_every_method_places_its_parties_on_the_configured_device(name: str) -> None:
    cfg = METHODS.get(name).configure(tiny_config("runtime.device=cpu"))

    method = METHODS.get(name)(cfg, load_dataset(cfg.data))

    parties = [method.clients[0].model, method.server.model] if name == "mpsl" else [method.model]
    assert all(module_device(p) == torch.device("cpu") for p in parties)
    assert module_device(method.client_template) == torch.device("cpu")  # the templates stay on the host


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_lookahead_hands_out_every_item_once_in_order_whatever_its_depth(depth: int) -> None:
    reads: list[int] = []
    lock = threading.Lock()

    def read(i: int) -> int:
        with lock:
            reads.append(i)
        return i * i

    ahead = Lookahead(read, 2, 7, depth)
    taken = [ahead.take() for _ in range(5)]

    assert taken == [4, 9, 16, 25, 36]
    assert sorted(reads) == [2, 3, 4, 5, 6]
    with pytest.raises(IndexError):
        ahead.take()


def test_batches_read_ahead_are_the_rows_of_the_order_given() -> None:
    data = load_dataset(tiny_config().data).train
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(3))  # [n]

    got = list(batches(data, order, 10, torch.device("cpu"), depth=2))

    assert [len(b) for b in got] == [10] * (len(data) // 10) + ([len(data) % 10] if len(data) % 10 else [])
    assert torch.equal(torch.cat([b.labels for b in got]), data.labels[order])
    first = data.subset(order[:10]).inputs
    assert all(torch.equal(got[0].inputs[m], first[m]) for m in first)


def test_reading_ahead_does_not_change_what_mpsl_trains() -> None:
    def train(prefetch: int) -> dict[str, torch.Tensor]:
        cfg = tiny_config(f"runtime.prefetch={prefetch}", "train.epochs=2")
        method = METHODS.get("mpsl")(cfg, load_dataset(cfg.data))
        for epoch in range(2):
            method.train_round(epoch, progress=False)
        return {**{f"c0.{k}": v for k, v in method.clients[0].model.state_dict().items()},
                **{f"s.{k}": v for k, v in method.server.model.state_dict().items()}}

    synchronous, ahead = train(0), train(3)

    assert synchronous.keys() == ahead.keys()
    assert all(torch.equal(synchronous[k], ahead[k]) for k in synchronous)


def test_runtime_compile_compiles_the_server_encoder_in_place_keeping_its_parameter_names() -> None:
    cfg = tiny_config("runtime.compile=true")
    template = METHODS.get("mpsl")(cfg, load_dataset(cfg.data)).server_template
    names = [n for n, _ in template.named_parameters()]

    server = split_server(template, cfg)

    assert server.model.encoder._compiled_call_impl is not None
    assert [n for n, _ in server.model.named_parameters()] == names
