"""Server replicas (torch.distributed, gloo on the CPU) train exactly what one process trains: two ranks, each
running the step for its share of the clients, end with the one-process server and client weights, with
unequal client batches, clients running out of data at different steps and a client dropped mid-step; and
setups that cannot work are refused with one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mpsl.cli import main
from mpsl.config import Config
from mpsl.data import load_dataset
from mpsl.errors import ConfigError
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.experiment.results import RESULTS_FILE
from mpsl.experiment.run import run_experiment
from mpsl.protocol import mpsl_step
from mpsl.runtime.distributed import (
    TorchWorld,
    backend_for,
    check_replicas,
    check_same_config,
    join,
    refuse_replicas,
    replica_share,
    start,
)
from tests.helpers import Vanishes, tiny_config

ATOL = 1e-5
# (overrides, (client dropped, at step) or None): unequal (proportional) batches with client 1, rank 1's only
# client, dropped at step 1 so that rank 1 joins that step's sums with nothing of its own; and equal batches
# over a skewed partition, so clients run out of data at different steps, with the per-client loop
CASES: list[tuple[tuple[str, ...], tuple[int, int] | None]] = [
    (("train.client_batch=proportional", "runtime.clients=batched"), (1, 1)),
    (("train.client_batch=equal", "partition.alpha=0.3", "runtime.clients=loop"), None),
]


def _config(overrides: tuple[str, ...]) -> Config:
    return tiny_config("data.train_size=66", "data.test_size=8", "train.batch_size=16", "train.epochs=2", *overrides)


def _train(cfg: Config, drop: tuple[int, int] | None, world: TorchWorld | None) -> dict[str, object]:
    """Two epochs of Mpsl as its train_round runs them, with the drop; every weight and step result after."""
    method = Mpsl(cfg, load_dataset(cfg.data), world)
    server_start = [p.detach().clone() for p in method.server.model.parameters()]
    group = method.group if drop is None else Vanishes(method.group, *drop)
    losses, own_ids = [], []
    for epoch in range(cfg.train.epochs):
        method.group.start_epoch(epoch)
        while (result := mpsl_step(method.server, group, method.step)) is not None:
            losses.append((result.loss, result.count, result.correct))
            own_ids.append((result.client_ids, result.dropped))
            method.step += 1
        method.server.end_epoch()
        method.group.end_epoch()
        if world is not None:
            method._share(world)
    weights = {f"server.{n}": p for n, p in method.server.model.named_parameters()}
    for c in method.clients:
        weights |= {f"client{c.client_id}.{n}": p for n, p in c.model.named_parameters()}
    moved = any(not torch.equal(a, p) for a, p in zip(server_start, method.server.model.parameters(), strict=True))
    return {"weights": {n: p.detach().clone() for n, p in weights.items()}, "moved": moved, "steps": losses,
            "ids": own_ids,
            "seen": [c.samples_seen for c in method.clients], "traffic": [t.up + t.down for t in method.traffic()]}


def _run_config(out_dir: str) -> Config:
    return tiny_config("methods=[mpsl]", f"out_dir={out_dir}", "name=run", "eval.ablations=false")


def _replica(rank: int, size: int, init: str, out: str) -> None:
    """One rank: the config check (a mismatch first, then agreement), then every case."""
    torch.set_num_threads(1)
    world = start(rank, size, "gloo", torch.device("cpu"), init_method=init)
    try:
        try:
            check_same_config(world, _config((f"seed={rank}",)))
        except ConfigError as exc:
            torch.save(str(exc), f"{out}/mismatch{rank}.pt")
        check_same_config(world, _config(()))
        torch.save([_train(_config(o), drop, world) for o, drop in CASES], f"{out}/rank{rank}.pt")
        run_experiment(_run_config(f"{out}/replicas"), world=world)
    finally:
        world.close()


def test_two_gloo_replicas_train_the_weights_of_one_process(tmp_path: Path) -> None:
    # Execute: two ranks, and meanwhile (while they start) the one-process reference of every case
    ranks = mp.spawn(_replica, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2, join=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # three processes on the machine's cores, one thread each
    try:
        want = [_train(_config(o), drop, None) for o, drop in CASES]
        while not ranks.join():
            pass
    finally:
        torch.set_num_threads(threads)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    # Assert: each rank refused a config that differs from rank 0's (on both ranks), and then trained the
    # one-process weights: server and every client, all steps' loss and hits, samples seen and bytes
    for r in range(2):
        assert "rank(s) [1] resolved another config" in torch.load(tmp_path / f"mismatch{r}.pt")
    for case, reference in enumerate(want):
        ids = {cid for step_ids, dropped in reference["ids"] for cid in step_ids + dropped}
        assert ids == {0, 1, 2}
        for r in range(2):
            run = got[r][case]
            mine = {cid for step_ids, dropped in run["ids"] for cid in step_ids + dropped}
            assert mine == set(replica_share(r, 2, 3)), "each rank ran exactly its own share of the clients"
            assert len(run["steps"]) == len(reference["steps"]) > 2
            for (loss, count, correct), (w_loss, w_count, w_correct) in zip(run["steps"], reference["steps"],
                                                                            strict=True):
                assert (count, correct) == (w_count, w_correct)
                assert loss == pytest.approx(w_loss, abs=ATOL)
            for name, p in reference["weights"].items():
                torch.testing.assert_close(run["weights"][name], p, atol=ATOL, rtol=0.0, msg=f"rank {r} {name}")
            assert run["seen"] == reference["seen"]
            # bytes: equal up to a float's text in a frame header (a loss that differs in its last bit)
            assert run["traffic"] == pytest.approx(reference["traffic"], rel=1e-4)
    dropped = [d for _, d in want[0]["ids"] if d]
    assert dropped == [[1]], "the drop must have happened once, or the first case tests nothing"
    assert len(set(want[1]["seen"])) == 3, "the skewed case must give the clients unequal data"
    assert all(reference["moved"] for reference in want), "the server must train, or equal weights prove nothing"

    # ... and `mpsl run` as two replicas wrote, from rank 0 only, the folder one process writes, with its results
    torch.set_num_threads(1)
    try:
        run_experiment(_run_config(str(tmp_path / "alone")))
    finally:
        torch.set_num_threads(threads)
    alone, replicas = tmp_path / "alone" / "run", tmp_path / "replicas" / "run"
    assert sorted(p.relative_to(alone) for p in alone.rglob("*")) == \
        sorted(p.relative_to(replicas) for p in replicas.rglob("*"))
    one, two = (json.loads((d / "mpsl" / RESULTS_FILE).read_text()) for d in (alone, replicas))
    assert _layout(one) == _layout(two) and one["num_clients"] == two["num_clients"] == 3
    assert two["final"] == pytest.approx(one["final"], abs=1e-6)
    assert two["comm"] == pytest.approx(one["comm"], rel=1e-4)


def _layout(tree: object, prefix: str = "") -> set[str]:
    """The dotted keys of a JSON tree."""
    if isinstance(tree, dict):
        return {key for k, v in tree.items() for key in _layout(v, f"{prefix}.{k}")}
    return {prefix}


def test_more_replicas_than_clients_are_refused_before_starting() -> None:
    with pytest.raises(ConfigError, match="3 server replicas but num_clients=2"):
        check_replicas(tiny_config("num_clients=2"), 3)


def test_nccl_on_a_cpu_device_is_refused_naming_the_key() -> None:
    assert backend_for("auto", torch.device("cpu")) == "gloo"
    with pytest.raises(ConfigError, match="runtime.backend: nccl needs a CUDA device"):
        backend_for("nccl", torch.device("cpu"))


def test_one_gpu_for_every_replica_is_refused() -> None:
    with pytest.raises(ConfigError, match="runtime.device: cuda:1 would put all 2 replicas on one GPU"):
        check_replicas(tiny_config("runtime.device=cuda:1"), 2)


def test_without_torchrun_a_process_runs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert join(tiny_config()) is None
    refuse_replicas("mpsl server")  # nothing to refuse


def test_the_grpc_server_under_torchrun_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["server", "avdigits", "--listen", "127.0.0.1:0"])
    assert code == 2
    assert "mpsl server runs as one process, but torchrun --nproc-per-node K started 2" in capsys.readouterr().err

