"""The Ray runtime moves messages only: clients in Ray actors train to the weights of the in-process run.

One local Ray instance (2 CPUs) serves the whole module.
"""

from __future__ import annotations

import dataclasses
import pickle
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from mpsl.config import RayConfig
from mpsl.data import load_dataset
from mpsl.errors import ConfigError, MpslError
from mpsl.experiment.methods import METHODS, Method
from mpsl.experiment.results import RunResult
from mpsl.experiment.run import run_method
from mpsl.protocol import Tokens
from mpsl.runtime.ray_actors import RayParties, check_capacity, compact, connect, slices
from tests.helpers import tiny_config

TOLERANCE = 1e-6

pytestmark = pytest.mark.xdist_group("ray")  # one local Ray instance: these tests share a worker


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance of 2 CPUs for this module, its files in a short temporary path (Ray's unix sockets
    must fit ~107 characters) and never under the home folder. This process computes on one thread, as each
    1-CPU actor does, so both runs reduce in the same order."""
    import ray

    temp = tempfile.mkdtemp(prefix="ray")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, object_store_memory=256 * 2**20,
             log_to_driver=False)
    yield ray
    ray.shutdown()
    torch.set_num_threads(threads)
    shutil.rmtree(temp, ignore_errors=True)


def _train(name: str, *overrides: str) -> Method:
    cfg = METHODS.get(name).configure(tiny_config("train.epochs=2", "train.lr_step=1", "train.lr_gamma=0.5",
                                                  "train.server_lr=1e-3", "train.client_lr=1e-3", *overrides))
    torch.manual_seed(cfg.seed)
    method = METHODS.get(name)(cfg, load_dataset(cfg.data))
    for epoch in range(cfg.train.epochs):
        method.train_round(epoch, progress=False)
    method.close()
    return method


def _assert_close_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k].detach(), pb[k].detach(), atol=TOLERANCE, rtol=0.0, msg=k)


def test_slices_are_contiguous_near_equal_and_cover_every_client_once() -> None:
    # Execute
    cut = slices(7, 3)
    few = slices(2, 5)

    # Assert
    assert cut == [[0, 1], [2, 3], [4, 5, 6]]
    assert few == [[0], [1]]  # no empty actor when there are fewer clients than actors


def test_mpsl_on_ray_ends_with_the_weights_and_bytes_of_the_in_process_run(local_ray) -> None:
    # Prepare: 3 clients over 2 actors, each client a SplitClient behind its own handle (batched clients are
    # checked through a whole run below), two epochs with a learning-rate step
    runtime = "runtime.clients=loop"

    # Execute
    local = _train("mpsl", runtime)
    remote = _train("mpsl", runtime, "runtime.kind=ray", "ray.actors=2")

    # Assert
    _assert_close_weights(remote.server.model, local.server.model)
    assert any((p != q).any() for p, q in zip(remote.server.model.parameters(),  # guard: training moved the server
                                              remote.server_template.parameters(), strict=True))
    for mine, theirs in zip(remote.clients, local.clients, strict=True):
        _assert_close_weights(mine.model, theirs.model)
        assert mine.samples_seen == theirs.samples_seen > 0
    assert remote.traffic() == local.traffic()  # counted from the same shapes, wherever the clients ran
    assert remote.traffic()[0].messages > 0


def test_a_message_holding_a_slice_of_a_stack_travels_with_its_own_elements_only() -> None:
    # Prepare: client 1's tokens as a batched group hands them over, a view into all 500 clients' stack
    stack = torch.randn(500, 2, 3, 4)  # [N, b, T, D]
    msg = Tokens(1, 7, {"image": stack.unbind(0)[1]})  # [b, T, D] view

    # Execute
    sent = compact({1: msg})[1]

    # Assert
    assert len(pickle.dumps(sent)) < len(pickle.dumps(msg)) / 50  # the stack is 500x the slice
    assert torch.equal(sent.tokens["image"], stack[1])
    assert (sent.client_id, sent.step) == (1, 7)


@pytest.mark.parametrize("name", ["fedavg", "splitfed"])
def test_a_baseline_on_ray_ends_with_the_weights_and_bytes_of_the_in_process_run(local_ray, name: str) -> None:
    # Prepare: each actor trains its clients (SplitFed: client-server pairs) of the round; the driver averages

    # Execute
    local = _train(name)
    remote = _train(name, "runtime.kind=ray", "ray.actors=2")

    # Assert
    _assert_close_weights(remote.global_model(), local.global_model())
    assert any((p != q).any() for p, q in zip(remote.global_model().server.parameters(),
                                              remote.server_template.parameters(), strict=True))
    assert remote.traffic() == local.traffic()
    assert remote.traffic()[0].messages > 0


def test_a_ray_run_of_batched_clients_saves_the_results_of_an_in_process_run(local_ray, tmp_path: Path) -> None:
    # Prepare: batched clients (the default), all in one actor. Split over several actors they would vmap over
    # fewer clients at a time, which rounds differently (~1e-8), and Adam turns that into ~1e-6 moves of the
    # attention key bias, whose gradient is zero up to rounding: equal in exact arithmetic, not in floats.
    cfg = tiny_config("methods=[mpsl]", "eval.ablations=false")
    dataset = load_dataset(cfg.data)

    # Execute
    local = run_method(cfg, dataset, "mpsl", tmp_path / "local")
    remote = run_method(cfg.replace(**{"runtime.kind": "ray", "ray.actors": 1}), dataset, "mpsl", tmp_path / "ray")

    # Assert
    saved = RunResult.load(tmp_path / "ray" / "results.json")
    assert sorted(dataclasses.asdict(saved)) == sorted(dataclasses.asdict(local))
    assert remote.comm == local.comm
    assert remote.history[0].steps == local.history[0].steps
    assert remote.final.keys() == local.final.keys()
    for key, value in local.final.items():
        assert remote.final[key] == pytest.approx(value, abs=TOLERANCE), key
    assert remote.history[0].train_loss == pytest.approx(local.history[0].train_loss, abs=TOLERANCE)


def test_without_ray_the_error_names_the_extra_that_installs_it(monkeypatch) -> None:
    # Prepare: `import ray` fails as it does where the extra is not installed
    monkeypatch.setitem(sys.modules, "ray", None)

    # Execute
    with pytest.raises(MpslError) as failure:
        connect(RayConfig())

    # Assert
    assert "pip install 'mpsl[ray]'" in str(failure.value)
    assert "\n" not in str(failure.value)


def test_a_ray_address_with_no_cluster_is_one_clear_error(monkeypatch) -> None:
    # Prepare: a port nobody listens on, and a process not yet connected to Ray
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    # Execute
    with pytest.raises(ConfigError) as failure:
        connect(RayConfig(address=f"127.0.0.1:{port}"))

    # Assert
    message = str(failure.value)
    assert message.startswith(f"ray.address=127.0.0.1:{port}: no Ray cluster there")
    assert "ray start --head" in message
    assert "\n" not in message


def test_actors_the_cluster_cannot_hold_are_refused_before_any_waits_to_be_placed(local_ray) -> None:
    # Execute: the module's instance has 2 CPUs and no GPU
    with pytest.raises(ConfigError) as cpus:
        check_capacity(RayConfig(actor_cpus=1.5), actors=2)
    with pytest.raises(ConfigError) as gpus:
        check_capacity(RayConfig(), actors=2, server_gpus=1)

    # Assert
    assert str(cpus.value) == "ray.actors: 2 client actors x ray.actor_cpus=1.5 need 3 CPUs, the Ray cluster has 2"
    assert str(gpus.value) == "ray.server_gpus: the server actor asks for 1 GPUs, the Ray cluster has 0"
    check_capacity(RayConfig(), actors=2)  # what fits passes


def test_a_slow_or_dead_actor_stops_the_run_with_an_error_naming_it_instead_of_hanging(local_ray) -> None:
    # Prepare: one actor hosting an empty party (given time to start), then answering within 3 s or failing
    parties = RayParties([dict], ["client actor 0 (clients 0-9)"], cpus=1, gpus=0, timeout=120.0)
    parties.timeout = 3.0

    # Execute
    with pytest.raises(MpslError) as slow:
        parties.call(lambda _party, s: time.sleep(s), 30.0)  # a lambda travels by value: no test module to import
    local_ray.kill(parties.actors[0])
    with pytest.raises(MpslError) as dead:
        parties.call(lambda _party, s: time.sleep(s), 0.0)

    # Assert
    assert str(slow.value) == "client actor 0 (clients 0-9): no answer within ray.timeout_s=3 s"
    assert str(dead.value).startswith("a Ray actor of client actor 0 (clients 0-9) died")
