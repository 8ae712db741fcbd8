"""`mpsl client`: one device's SplitClient over the network, with its own checkpoints.

Clients dial out, train their tokenizers (and head) on local data and never send labels. The party is
built by `mpsl.parties` exactly as the simulation builds it.
"""

from __future__ import annotations

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
from mpsl.errors import ConfigError, MpslError
from mpsl.parties import client_shards, split_client, templates
from mpsl.protocol import CutGrad, EpochMetrics, FeatureGrad, Features, SplitClient, Tokens
from mpsl.registry import check_choices
from mpsl.runtime.network.address import with_default_port
from mpsl.runtime.network.dialer import dial
from mpsl.runtime.network.events import ClientResumed, Restored
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


def require_client_seed(cfg: Config) -> None:
    """A deployed client starts from the clients' shared secret seed: with null, a server holding this config
    could rebuild the clients' starting tokenizers and head, and their noise (docs/privacy.md). A seed of each
    client's own is no answer: clients that start apart reached 27 % instead of 78 % on the demo
    (benchmarks/client_starts.py)."""
    if cfg.privacy.client_seed is None:
        raise ConfigError("privacy.client_seed: `mpsl client` needs the seed the clients share and the server never "
                          "gets (null would let a server with this config rebuild their starting weights and noise). "
                          "Draw one once, e.g. python -c 'import secrets; print(secrets.randbits(48))', and start "
                          "every client with privacy.client_seed=<it>")


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
    require_client_seed(cfg)
    folder = checkpoint_dir(cfg, f"client-{client_id}")
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
