"""`mpsl client`: one device's SplitClient over the network, with its own checkpoints.

Clients dial out, train their tokenizers (and head) on local data and never send labels. The party is
built by `mpsl.parties` exactly as the simulation builds it.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from mpsl.checkpoints import save_module
from mpsl.config import Config, client_batch_size, client_batch_sizes
from mpsl.data import load_dataset
from mpsl.deploy.common import (
    SWITCH_INTERVAL,
    Checkpoints,
    checkpoint_dir,
    expected_shapes,
    limits,
    load_state,
    log_to_stderr,
    report,
)
from mpsl.errors import MpslError
from mpsl.files import write_atomically
from mpsl.parties import client_shards, split_client, templates
from mpsl.protocol import CutGrad, EpochMetrics, FeatureGrad, Features, SplitClient, Tokens
from mpsl.registry import check_choices
from mpsl.runtime.network.address import with_default_port
from mpsl.runtime.network.dialer import dial
from mpsl.runtime.network.events import ClientResumed, ClientSeed, Restored
from mpsl.runtime.network.security import channel_credentials, read_secret
from mpsl.tasks import TASKS


class ClientApp:
    """A SplitClient with its own checkpoints (the newest coordinated ones) and its final model."""

    def __init__(self, client: SplitClient, out_dir: Path, keep: int = 3) -> None:
        self.client = client
        self.client_id = client.client_id
        self.out_dir = out_dir
        self.checkpoints = Checkpoints(out_dir, keep)

    @property
    def epoch(self) -> int | None:
        return self.client.epoch

    def start_epoch(self, epoch: int) -> None:
        self.client.start_epoch(epoch)

    def embed(self, step: int) -> Tokens | None:
        return self.client.embed(step)

    def features(self, msg: Features) -> FeatureGrad:
        return self.client.features(msg)

    def cut_grad(self, msg: CutGrad) -> None:
        self.client.cut_grad(msg)

    def end_epoch(self) -> EpochMetrics:
        return self.client.end_epoch()

    def samples(self) -> int:
        return len(self.client.data)

    def save(self, step: int, epoch: int) -> None:
        self.checkpoints.save({"step": step, **self.client.state_dict()}, step, epoch)

    def restore(self, step: int, epoch: int) -> bool:
        path = self.checkpoints.path(step, epoch)
        if not path.is_file():
            return False
        self.client.load_state_dict(load_state(path))
        report(Restored(self.client_id, step))
        return True

    def restore_latest(self) -> int | None:
        saved = self.checkpoints.newest()
        if not saved:
            return None
        state = load_state(saved[0])
        self.client.load_state_dict(state)
        return int(state["step"])

    def finish(self) -> None:
        save_module(self.client.model, self.out_dir / "client.safetensors")


SEED_FILE = "client-seed"  # in the client's folder: its own seed, when privacy.client_seed is null


def with_client_seed(cfg: Config, client_id: int, folder: Path) -> Config:
    """`cfg` with the seed this client starts from and noises with. privacy.client_seed when set (the clients
    share it; the server's config need not hold it); null: a seed of this client's own, drawn once from the
    operating system and kept in `folder`, so no other party, the server included, can rebuild its start or its
    noise, whatever config it has. Its tokenizers and head then start apart from the other clients'."""
    if cfg.privacy.client_seed is not None:
        report(ClientSeed(client_id, "config", None))
        return cfg
    path = folder / SEED_FILE
    if path.is_file():
        text = path.read_text().strip()
        if not text.isdigit():
            raise MpslError(f"{path}: expected this client's seed (digits), found {text[:20]!r}; delete the file to "
                            "draw a new one (the client then starts from new weights)")
        seed, origin = int(text), "kept"
    else:
        seed, origin = secrets.randbits(48), "drawn"

        def write(tmp: Path) -> None:  # readable by this user only, before the seed is in it
            tmp.touch(mode=0o600)
            tmp.chmod(0o600)
            tmp.write_text(f"{seed}\n")

        write_atomically(path, write)
    report(ClientSeed(client_id, origin, str(path)))
    return cfg.replace(**{"privacy.client_seed": seed})


async def run_client(cfg: Config, target: str, client_id: int, resume: bool, token_file: str | None,
                     ca: str | None, retry_for: float, whole_split: bool = False,
                     client_cert: tuple[str, str] | None = None, log_format: str = "text") -> None:
    """`client_cert`: (certificate, key) presented to a server that requires client certificates."""
    log_to_stderr(log_format)
    sys.setswitchinterval(SWITCH_INTERVAL)
    if client_cert and not ca:
        raise MpslError("--tls-cert and --tls-key need --tls-ca: client certificates are presented in TLS")
    if not 0 <= client_id < cfg.num_clients:
        raise MpslError(f"--client-id {client_id}: must be in 0..{cfg.num_clients - 1} (num_clients)")
    check_choices(cfg)
    folder = checkpoint_dir(cfg, f"client-{client_id}")
    cfg = with_client_seed(cfg, client_id, folder)
    dataset = load_dataset(cfg.data, cfg.progress)
    if whole_split:  # the device's own data: everything its loader returns, batch ceil(B / N)
        shard, batch = dataset.train, client_batch_size(cfg)
    else:  # simulating num_clients devices on one dataset: this client's partition of it
        shards = client_shards(cfg, dataset)
        shard, batch = shards[client_id], client_batch_sizes(cfg, [len(s) for s in shards])[client_id]
    template, _ = templates(cfg, dataset.spec)
    task = TASKS.get(dataset.spec.task)()
    app = ClientApp(split_client(cfg, client_id, shard, batch, template, task), folder, cfg.deploy.keep_checkpoints)
    if resume:
        report(ClientResumed(client_id, app.restore_latest()))
    expected = expected_shapes(template, dataset.spec, cfg.deploy.max_client_batch or cfg.train.batch_size)
    await dial(app, with_default_port(target), read_secret(token_file) if token_file else None,
               channel_credentials(ca, *(client_cert or (None, None))) if ca else None,
               limits(cfg, expected), retry_for, report)
