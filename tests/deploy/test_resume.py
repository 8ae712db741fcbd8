"""A server killed at any checkpoint boundary (an epoch's end included) or between two, and resumed, trains
exactly the weights of an uninterrupted run; the clients stay up and reconnect, as devices would."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from mpsl.data import load_dataset
from mpsl.deploy import server_app
from mpsl.deploy.common import Checkpoints, save_state
from mpsl.errors import MpslError
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.runtime.network.events import Finished, Resumed, Step
from tests.helpers import tiny_config
from tests.runtime.network_helpers import HonestClients, LiveServer, free_port

# 3 clients x 32 samples, client batch 4: 8 steps an epoch; checkpoints (step, epoch counter) at (4, 0), (8, 0),
# (8, 1) after the first epoch's end, (12, 1), (16, 1), (16, 2) after the second's. Every kill comes after the
# server's first checkpoint (before it, there is nothing to resume: start again without --resume)
OVERRIDES = ["partition.kind=iid", "train.epochs=2", "train.lr_step=1", "train.lr_gamma=0.5",
             "deploy.min_participants=3", "deploy.checkpoint_every=4", "deploy.step_timeout=20"]


class Killed(BaseException):
    """Ends the server's training thread on the spot, as SIGKILL ends the process."""


def _kill_at(monkeypatch, trainer: server_app.TrainingLoop, step: int, epoch: int, after: str) -> threading.Event:
    """Kill the server when it saves checkpoint (step, epoch): after the clients saved theirs but before it saved
    its own (`clients`), or just after its own (`server`); `step` ends it after that training step instead."""
    killed = threading.Event()
    save, report = trainer.checkpoints.save, server_app.report

    def saving(state, at_step, at_epoch):
        if (at_step, at_epoch) == (step, epoch) and after != "step" and not killed.is_set():
            if after == "server":
                save(state, at_step, at_epoch)
            killed.set()
            raise Killed
        return save(state, at_step, at_epoch)

    def reporting(event):
        report(event)
        if after == "step" and isinstance(event, Step) and event.step == step and not killed.is_set():
            killed.set()
            raise Killed

    monkeypatch.setattr(trainer.checkpoints, "save", saving)
    monkeypatch.setattr(server_app, "report", reporting)
    return killed


@pytest.fixture(scope="module")
def uninterrupted():
    """The simulation of the same run, with a schedule that halves both sides' rates every epoch (a schedule
    stepped twice shows): the weights every resumed run must end with."""
    cfg = tiny_config(*OVERRIDES)
    reference = Mpsl(cfg, load_dataset(cfg.data))
    for epoch in range(cfg.train.epochs):
        reference.train_round(epoch, progress=False)
    return reference


@pytest.mark.parametrize(("step", "epoch", "after"), [
    (12, 1, "clients"),  # mid-epoch, between the clients' and the server's checkpoint
    (8, 0, "clients"),  # the last step of an epoch, before its end
    (8, 1, "clients"),  # the epoch's end: clients stepped their schedules and saved, the server did not
    (16, 2, "server"),  # the last epoch's end, both saved: the resumed server only finishes
    (6, 0, "step"),  # between two checkpoints: the clients trained past the server's last one
], ids=["mid-epoch", "last-step", "epoch-end-clients-only", "end-both-saved", "between-checkpoints"])
def test_a_server_killed_anywhere_resumes_to_the_uninterrupted_weights(uninterrupted, monkeypatch, tmp_path,
                                                                       step: int, epoch: int, after: str) -> None:
    # Prepare
    cfg = tiny_config(*OVERRIDES, f"out_dir={tmp_path}")
    port = free_port()
    first = LiveServer(cfg, port=port)  # waits for its three clients before training
    killed = _kill_at(monkeypatch, first.runtime.trainer, step, epoch, after)
    clients = HonestClients(cfg, port, [0, 1, 2], tmp_path)

    # Execute: the kill, then a resumed server on the same address; the clients reconnect by themselves
    assert killed.wait(60), "the server never reached the kill point"
    first.close()
    monkeypatch.undo()
    second = LiveServer(cfg, port=port, resume=True)
    try:
        clients.finish(timeout=120)
        deadline = time.monotonic() + 10
        while not any(isinstance(e, Finished) for e in second.events):
            assert time.monotonic() < deadline
            time.sleep(0.05)

        # Assert: the same weights as the uninterrupted run, on the server and on every client
        (resumed,) = [e for e in second.events if isinstance(e, Resumed)]
        assert resumed.step <= step
        pairs = [(second.runtime.server.model, uninterrupted.server.model)]
        pairs += [(app.client.model, ref.model) for app, ref in zip(clients.apps, uninterrupted.clients, strict=True)]
        for got, want in pairs:
            for (name, a), b in zip(got.state_dict().items(), want.state_dict().values(), strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    finally:
        second.close()


def test_resume_skips_a_damaged_or_non_finite_newest_checkpoint(tmp_path) -> None:
    # Prepare: three server checkpoints; the newest is not finite, the one before cannot be read
    cfg = tiny_config(f"out_dir={tmp_path}")
    folder = tmp_path / cfg.name / "server"
    live = LiveServer(cfg)
    good = {"server": live.runtime.server.state_dict(), "epoch": 0, "step": 4, "rng": torch.get_rng_state()}
    live.close()
    checkpoints = Checkpoints(folder, keep=3)
    checkpoints.save(good, 4, 0)
    checkpoints.path(8, 0).write_bytes(b"not a checkpoint")
    poisoned = {**good, "step": 12, "server": {**good["server"], "model": {
        k: torch.full_like(v, float("nan")) for k, v in good["server"]["model"].items()}}}
    save_state(poisoned, checkpoints.path(12, 0))

    # Execute
    resumed = LiveServer(cfg, resume=True)

    # Assert: the newest good one
    try:
        assert resumed.runtime.trainer.step == 4
    finally:
        resumed.close()


def test_a_non_finite_server_state_is_never_saved_and_stops_the_server(tmp_path) -> None:
    # Prepare
    cfg = tiny_config(f"out_dir={tmp_path}", "deploy.keep_checkpoints=2")
    live = LiveServer(cfg)
    live.close()
    trainer = live.runtime.trainer
    trainer.checkpoints.save({"step": 0}, 0, 0)
    with torch.no_grad():
        next(live.runtime.server.model.parameters()).fill_(float("inf"))

    # Execute / Assert
    with pytest.raises(MpslError, match="not finite at step 0: not saved; its newest good checkpoint is .*0000"):
        trainer._checkpoint(lambda f, items: [f(i) for i in items])
    assert [p.name for p in trainer.checkpoints.newest()] == ["state-000000000-0000.pt"]
