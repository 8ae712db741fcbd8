"""Batched in-process clients: every simulated client of a step in one stacked computation (GPU-first).

Each client keeps what a SplitClient keeps: its own tokenizers and head, its own Adam moments, step counts
and learning rate, its own data order (its SplitClient object still draws the batches) and `samples_seen`.
Only the execution is shared, so per-client Python work no longer dominates a step at 100-1,000 clients:

    parameters  one flat tensor per block (a modality's tokenizer, the head): [N, P_block]. Client k's
                ClientModel parameters are views into row k, so evaluation, averaging and checkpoints read the
                trained weights, and loading a state into a client model writes into the stack.
    forward     clients grouped by (batch size, modalities held): one vmap(functional_call) per group and block,
                exact per client with no padding (there is usually one group).
    loss        the head, the task's loss and its hits vmapped the same way; one backward per group.
    optimizer   one call of torch's fused multi-tensor Adam kernel (what the loop's Adam(fused=True) runs)
                over the stacked tensors, with per-client step counts and learning rates: a client that did not
                take part (exhausted, dropped, lacking the modality) keeps its weights and moments bit for bit,
                as torch's Adam skips a parameter whose gradient is None.
    bytes       no codec: each message is counted from its shapes (serde.encoded_nbytes) as fp32 frames,
                exactly what the per-client handles count.

The math is that of N separate SplitClients, each with torch.optim.Adam and StepLR, up to float rounding.
`unsupported` names the client models and tasks it cannot promise that for; the experiment then runs the
per-client loop instead.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, vmap

from mpsl.errors import ClientUnavailable, ProtocolError
from mpsl.models.encoder import SharedEncoder
from mpsl.models.heads import ClassifierHead, RetrievalHead
from mpsl.models.split import ClientModel
from mpsl.models.tokenizers import PatchTokenizer, SentenceTokenizer, TextTokenizer
from mpsl.protocol.client import SplitClient
from mpsl.protocol.group import Offer
from mpsl.protocol.messages import CutGrad, EpochMetrics, FeatureGrad, Features, Tokens
from mpsl.protocol.privacy import clip_per_sample, gaussian, protect_grad
from mpsl.protocol.serde import all_finite
from mpsl.runtime.traffic import Traffic, count
from mpsl.tasks import Task

# Modules whose forward is a per-sample function of the input and the client's parameters, with no randomness,
# no state changed in forward and no Python control flow on values: vmapping them is exactly the loop's math.
SUPPORTED: tuple[type[nn.Module], ...] = (
    ClientModel, nn.ModuleDict, PatchTokenizer, TextTokenizer, SentenceTokenizer, ClassifierHead, RetrievalHead,
    nn.Conv2d, nn.LayerNorm, nn.Linear, nn.Embedding, nn.Identity,
)


def unsupported(model: ClientModel, task: Task) -> str | None:
    """Why batched clients could compute something other than the per-client loop for this client model and
    task (a reason to run the loop instead); None when they compute the same."""
    for name, module in model.named_modules():
        if isinstance(module, SharedEncoder):
            return f"client module {name} holds encoder blocks (model.client_blocks), which have no batched execution"
        if type(module) not in SUPPORTED:
            return (f"client module {name or 'model'} is a {type(module).__name__}, which has no batched execution "
                    "(batched clients run tokenizers and heads built only from "
                    f"{', '.join(t.__name__ for t in SUPPORTED)})")
        if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.sparse):
            return f"client module {name} renormalizes or has sparse gradients"
    params = list(model.named_parameters())
    frozen = [n for n, p in params if not p.requires_grad]
    if frozen:
        return f"client parameter {frozen[0]} is frozen (batched clients train every client parameter)"
    dtypes = {p.dtype for _, p in params}
    if len(dtypes) > 1 or any(not d.is_floating_point for d in dtypes):
        return f"client parameters mix dtypes {sorted(map(str, dtypes))}"
    if not callable(getattr(task, "hits", None)):
        return f"task {type(task).__name__} has no tensor-valued hits() to vmap"
    return None


class _Block:
    """One part of every client's model (a modality's tokenizer, or the head), the clients' parameters
    flattened side by side, with their Adam state. A client trains all of a block in a step or none of it:
    the granularity at which the per-client loop's Adam skips parameters that got no gradient."""

    def __init__(self, name: str, modules: Sequence[nn.Module], device: torch.device) -> None:
        self.name = name
        self.module = copy.deepcopy(modules[0]).train()  # what functional_call runs with each client's parameters
        first = list(modules[0].named_parameters())
        self.names = [n for n, _ in first]
        self.shapes = [p.shape for _, p in first]
        self.sizes = [p.numel() for _, p in first]
        self.offsets = list(itertools.accumulate(self.sizes, initial=0))
        rows = []
        for k, module in enumerate(modules):
            params = list(module.named_parameters())
            if [(n, p.shape) for n, p in params] != [(n, p.shape) for n, p in first]:
                raise ValueError(f"client {k}'s {name} differs in its parameters from client 0's")
            rows.append(torch.cat([p.detach().reshape(-1) for _, p in params]) if params  # [P]
                        else torch.zeros(0, device=device))
        self.flat = torch.stack(rows).requires_grad_(True)  # [N, P]: row k is client k's block
        self.exp_avg = torch.zeros_like(self.flat, requires_grad=False)  # [N, P]
        self.exp_avg_sq = torch.zeros_like(self.flat, requires_grad=False)  # [N, P]
        self.steps = torch.zeros(len(modules), dtype=torch.float64)  # [N] Adam steps each client took on this block
        storage = self.flat.detach()
        for k, module in enumerate(modules):  # client k's parameters become views into row k
            for (param_name, p), start, shape in zip(first, self.offsets, self.shapes, strict=False):
                view = storage[k, start:start + shape.numel()].view(shape)  # [P_j] -> [*shape]
                owner, _, leaf = param_name.rpartition(".")
                setattr(module.get_submodule(owner), leaf, nn.Parameter(view, requires_grad=p.requires_grad))

    @property
    def numel(self) -> int:
        return self.offsets[-1]

    def params(self, rows: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The parameters of clients `rows` (all of them when None), each stacked: name -> [n, *shape]."""
        flat = self.flat if rows is None else self.flat.index_select(0, rows)  # [n, P]
        # split, not slices: its backward is one concatenation into [n, P] rather than a zero-filled [n, P] per
        # parameter
        pieces = flat.split(self.sizes, dim=1)  # [n, P_j] each
        return {name: piece.view(len(flat), *shape)  # [n, P_j] -> [n, *shape]
                for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)}


@dataclass
class _Group:
    """Clients of one step with the same batch size and modalities: their labels and tokens, stacked."""

    members: list[int]  # client indices, in client order
    size: int  # b, every member's batch size
    labels: torch.Tensor  # [n, b]
    tokens: dict[str, torch.Tensor]  # m -> [n, b, T_m, D], with the graph to the blocks until cut_grad

    def labels_of(self, members: list[int]) -> torch.Tensor:
        """[len(members), b]: the labels of some of this group's clients."""
        if members == self.members:
            return self.labels
        rows = {k: i for i, k in enumerate(self.members)}
        return self.labels[[rows[k] for k in members]]  # [n', b]


@dataclass
class _OpenStep:
    step: int
    groups: list[_Group]
    group_of: dict[int, _Group]  # client index -> its group
    shares: dict[int, float] = field(default_factory=dict)  # client index -> loss weight of its head gradient
    metrics: dict[int, tuple[float, int, int]] = field(default_factory=dict)  # client index -> loss sum, hits, b


class BatchedClients:
    """N simulated clients behind the ClientGroup verbs, run as one batched computation per step."""

    def __init__(self, clients: Sequence[SplitClient], task: Task, lr: float, weight_decay: float = 0.0,
                 lr_step: int | None = None, lr_gamma: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        if not clients:
            raise ValueError("no clients to batch")
        reason = unsupported(clients[0].model, task)
        if reason is not None:
            raise ValueError(f"batched clients cannot run this model: {reason}")
        if any(c.optimizer is not None or c.scheduler is not None for c in clients):
            raise ValueError("batched clients own their optimizer and schedule: build the SplitClients without")
        self.clients = list(clients)
        self.task = task
        self._index = {c.client_id: k for k, c in enumerate(self.clients)}
        if len(self._index) != len(self.clients):
            raise ValueError(f"client ids repeat in {[c.client_id for c in self.clients]}")
        models = [c.model for c in self.clients]
        self.modalities = models[0].modalities
        self.device = _device(models[0])
        self.blocks = {f"tokenizers.{m}": _Block(f"tokenizers.{m}", [mod.tokenizers[m] for mod in models], self.device)
                       for m in self.modalities}
        self.blocks["head"] = _Block("head", [mod.head for mod in models], self.device)
        self.lr = torch.full((len(self.clients),), float(lr), dtype=torch.float64)  # [N], each client's StepLR
        self.epochs_ended = 0
        self.lr_step, self.lr_gamma = lr_step, lr_gamma
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.traffic = [Traffic() for _ in self.clients]
        self._open: _OpenStep | None = None

    # --- the ClientGroup verbs -------------------------------------------------------------------------

    def start_epoch(self, epoch: int) -> None:
        for c in self.clients:
            c.start_epoch(epoch)
        self._open = None

    def embed(self, step: int) -> dict[int, Offer]:
        self._open = None
        for b in self.blocks.values():  # a step that ended without cut gradients (skipped, dropped) leaves nothing
            b.flat.grad = None
        drawn: dict[tuple[int, tuple[str, ...]], list[tuple[int, dict[str, torch.Tensor], torch.Tensor]]] = {}
        for k, c in enumerate(self.clients):  # in client order, as the loop reads (a reader may draw random flips)
            batch = c.next_batch()
            if batch is None:
                continue
            inputs = batch.inputs
            held = tuple(m for m in self.modalities if m in inputs)
            drawn.setdefault((len(batch), held), []).append((k, inputs, batch.labels))
        groups: list[_Group] = []
        for (size, held), members in drawn.items():
            ks = [k for k, _, _ in members]
            rows = self._rows(ks)
            tokens = {}
            for m in held:
                x = torch.stack([inputs[m] for _, inputs, _ in members]).to(self.device)  # [n, b, *shape_m]
                tokens[m] = self._tokenize(self.blocks[f"tokenizers.{m}"], rows, x)  # [n, b, T_m, D]
                _check_finite(f"tokens.{m}", tokens[m], [self.clients[k].client_id for k in ks])
            tokens = self._protect(ks, tokens)
            labels = torch.stack([y for _, _, y in members]).to(self.device)  # [n, b]
            groups.append(_Group(ks, size, labels, tokens))
        self._open = _OpenStep(step, groups, {k: g for g in groups for k in g.members})

        sent: dict[int, Tokens] = {}
        for g in groups:
            views = {m: t.detach().unbind(0) for m, t in g.tokens.items()}  # m -> n x [b, T_m, D]
            for i, k in enumerate(g.members):
                msg = Tokens(self.clients[k].client_id, step, {m: views[m][i] for m in g.tokens})
                count(self.traffic[k], msg, "up")
                sent[k] = msg
        return {c.client_id: sent.get(k) for k, c in enumerate(self.clients)}

    def features(self, msgs: Mapping[int, Features]) -> dict[int, FeatureGrad | ClientUnavailable]:
        open_step = self._require_open()
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for cid, msg in msgs.items():
            k = self._client(cid, msg.step)
            group = open_step.group_of[k]
            if msg.features.shape[0] != group.size:
                raise ProtocolError(f"client {cid}: features for {msg.features.shape[0]} samples, "
                                    f"batch has {group.size}")
            count(self.traffic[k], msg, "down")
            by_shape.setdefault(tuple(msg.features.shape), []).append(k)
        replies: dict[int, FeatureGrad] = {}
        head = self.blocks["head"]
        for shape, members in by_shape.items():
            ids = [self.clients[k].client_id for k in members]
            feats = torch.stack([msgs[cid].features for cid in ids]).to(self.device)  # [n, b, R, D] or [n, b, C]
            _check_finite("features", feats, ids)
            feats.requires_grad_(True)
            labels = _labels(open_step, members)  # [n, b]
            shares = torch.tensor([msgs[cid].loss_weight for cid in ids], dtype=feats.dtype, device=self.device)  # [n]
            losses, hits = vmap(self._head_loss)(head.params(self._rows(members)), feats, labels)  # [n], [n]
            (shares * losses).sum().backward()  # head gradients (w_k dL_k) accumulate until cut_grad steps them
            grads = feats.grad  # [n, b, ...]: d(w_k L_k) / d features_k
            _check_finite("grad", grads, ids)
            for k, cid, g, loss, hit in zip(members, ids, grads.unbind(0), losses.tolist(), hits.tolist(),
                                            strict=True):
                client = self.clients[k]
                g = protect_grad(g, msgs[cid].loss_weight, client.privacy, client.noise)
                open_step.metrics[k] = (loss * shape[0], int(hit), shape[0])
                reply = (FeatureGrad(open_step.step, g, loss, int(hit), shape[0]) if client.privacy.step_metrics
                         else FeatureGrad(open_step.step, g, None, None, shape[0]))
                count(self.traffic[k], reply, "up")
                open_step.shares[k] = msgs[cid].loss_weight
                replies[cid] = reply
        return {cid: replies[cid] for cid in msgs}

    def cut_grad(self, msgs: Mapping[int, CutGrad]) -> dict[int, ClientUnavailable | None]:
        open_step = self._require_open()
        taking: dict[int, CutGrad] = {}  # client index -> its message
        for cid, msg in msgs.items():
            k = self._client(cid, msg.step)
            if k not in open_step.shares:
                raise ProtocolError(f"client {cid}: cut gradient for step {msg.step} before its features")
            sent = open_step.group_of[k].tokens
            if set(msg.grads) != set(sent):
                raise ProtocolError(f"client {cid}: gradient for {sorted(msg.grads)}, sent {sorted(sent)}")
            count(self.traffic[k], msg, "down")
            taking[k] = msg
        self._rescale_head(taking, open_step.shares)
        outputs, upstream = [], []
        for g in open_step.groups:
            if not any(k in taking for k in g.members):
                continue  # every member dropped out: its graph is simply released
            for m, tokens in g.tokens.items():
                rows = [taking[k].grads[m].to(self.device) if k in taking else tokens.new_zeros(tokens.shape[1:])
                        for k in g.members]  # n x [b, T_m, D]
                if any(r.shape != tokens.shape[1:] for r in rows):
                    raise ProtocolError(f"cut gradient for {m}: shapes {[tuple(r.shape) for r in rows]}, "
                                        f"tokens were {tuple(tokens.shape[1:])}")
                grad = torch.stack(rows).to(self.device)  # [n, b, T_m, D], zeros for clients that dropped out
                _check_finite(f"grads.{m}", grad, [self.clients[k].client_id for k in g.members])
                outputs.append(tokens)
                upstream.append(grad)
        torch.autograd.backward(outputs, upstream)
        trained: dict[str, list[int]] = {"head": list(taking)}  # block -> the clients that trained it
        for k in taking:
            for m in open_step.group_of[k].tokens:
                trained.setdefault(f"tokenizers.{m}", []).append(k)
        active = {name: torch.zeros(len(self.clients), dtype=torch.bool) for name in self.blocks}  # [N] each
        for name, ks in trained.items():
            active[name][ks] = True
        self._adam(active)
        for k in taking:
            c = self.clients[k]
            c.samples_seen += open_step.group_of[k].size
            c.metrics = [a + b for a, b in zip(c.metrics, open_step.metrics[k], strict=True)]
        self._open = None
        return {cid: None for cid in msgs}

    def end_epoch(self) -> dict[int, EpochMetrics | ClientUnavailable]:
        """StepLR per client: the rate is multiplied by gamma after every lr_step epochs. Each client reports
        its epoch's metrics."""
        self.epochs_ended += 1
        if self.lr_step is not None and self.epochs_ended % self.lr_step == 0:
            self.lr.mul_(self.lr_gamma)  # [N], float64 as StepLR's Python floats
        reports: dict[int, EpochMetrics | ClientUnavailable] = {}
        for k, c in enumerate(self.clients):
            reports[c.client_id] = c.end_epoch()
            count(self.traffic[k], reports[c.client_id], "up")
        return reports

    # --- the batched computation ------------------------------------------------------------------------

    def _tokenize(self, block: _Block, rows: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """x [n, b, *shape] -> tokens [n, b, T, D], each client through its own tokenizer parameters."""
        check = getattr(block.module, "check_inputs", None)
        if check is not None:  # value checks cannot run inside vmap: all clients' inputs at once, before it
            check(x.flatten(0, 1))  # [n*b, *shape]
        return vmap(lambda p, xk: functional_call(block.module, p, (xk,)))(block.params(rows), x)

    def _protect(self, members: list[int], tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """privacy.token_clip / token_noise on every member's tokens, m -> [n, b, T_m, D]: each sample clipped
        over all its modalities, each client's noise from its own generator in the per-client loop's order."""
        privacy = self.clients[members[0]].privacy
        if privacy.token_clip is None:
            return tokens
        names = list(tokens)
        n, b = next(iter(tokens.values())).shape[:2]
        flat = clip_per_sample([tokens[m].flatten(0, 1) for m in names], privacy.token_clip)  # [n*b, T_m, D] each
        clipped = {m: t.view(n, b, *t.shape[1:]) for m, t in zip(names, flat, strict=True)}  # [n, b, T_m, D]
        if privacy.token_noise == 0:
            return clipped
        std = privacy.token_noise * privacy.token_clip
        noise: dict[str, list[torch.Tensor]] = {m: [] for m in names}
        for k in members:
            for m in names:
                noise[m].append(gaussian(clipped[m].shape[1:], std, self.clients[k].noise, clipped[m]))  # [b, T_m, D]
        return {m: clipped[m] + torch.stack(noise[m]) for m in names}  # [n, b, T_m, D]

    def _head_loss(self, params: dict[str, torch.Tensor], features: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One client's head, loss and hits (vmapped over clients): features [b, ...], labels [b] -> [], []."""
        predictions = functional_call(self.blocks["head"].module, params, (features,))  # [b, C] or [b, R, D]
        return self.task.loss(predictions, labels), self.task.hits(predictions.detach(), labels)

    def _rescale_head(self, taking: Mapping[int, CutGrad], shares: Mapping[int, float]) -> None:
        """A client dropped out after the features went down: the others' shares were renormalized, so each
        head gradient (computed with w_k) is rescaled to the final w'_k, as SplitClient.cut_grad does."""
        head = self.blocks["head"]
        changed = {k: msg.loss_weight / shares[k] for k, msg in taking.items() if msg.loss_weight != shares[k]}
        if head.flat.grad is None or not changed:
            return
        scale = torch.ones(len(self.clients), dtype=head.flat.dtype)  # [N]
        scale[list(changed)] = torch.tensor(list(changed.values()), dtype=head.flat.dtype)
        head.flat.grad.mul_(scale.to(self.device)[:, None])  # [N, P] * [N, 1]

    @torch.no_grad()
    def _adam(self, active: Mapping[str, torch.Tensor]) -> None:
        """torch.optim.Adam(fused=True) for every client and block at once: one call of the same fused kernel
        the per-client loop runs, over the stacked tensors.

        A row (client) moves only if it trained the block this step; its step count and learning rate are its
        own. Rows are passed as the whole stack when they all share a step count and rate (the usual case),
        else as gathered copies per (step count, rate), written back after the update.
        """
        beta1, beta2 = self.betas
        by_lr: dict[float, tuple[list[torch.Tensor], ...]] = {}  # lr -> params, grads, exp_avgs, exp_avg_sqs, steps
        gathered: list[tuple[_Block, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for b in self.blocks.values():
            mask = active[b.name]  # [N] on the host
            if not b.numel or b.flat.grad is None or not mask.any():
                continue
            b.steps[mask] += 1
            rows = mask.nonzero()[:, 0]  # [n] clients that trained this block
            keys = torch.stack([b.steps[rows], self.lr[rows]], dim=1)  # [n, 2]
            if bool((keys == keys[0]).all()):  # the usual step: one step count and one rate
                classes, which = keys[:1], torch.zeros(len(rows), dtype=torch.long)  # [1, 2], [n]
            else:
                classes, which = torch.unique(keys, dim=0, return_inverse=True)  # [c, 2], [n]
            for j, (step, lr) in enumerate(classes.tolist()):
                members = rows[which == j]  # [n_j]
                if len(members) == len(self.clients):
                    tensors = (b.flat, b.flat.grad, b.exp_avg, b.exp_avg_sq)  # [N, P] each, updated in place
                else:
                    index = members.to(self.device)
                    tensors = tuple(t.detach().index_select(0, index)  # [n_j, P] each
                                    for t in (b.flat, b.flat.grad, b.exp_avg, b.exp_avg_sq))
                    gathered.append((b, index, tensors[0], tensors[2], tensors[3]))
                lists = by_lr.setdefault(lr, ([], [], [], [], []))
                for target, t in zip(lists, (*tensors, torch.tensor(step, dtype=torch.float32, device=self.device)),
                                     strict=True):
                    target.append(t)
        for lr, (params, grads, exp_avgs, exp_avg_sqs, steps) in by_lr.items():
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                               weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False,
                               grad_scale=None, found_inf=None)
        for b, index, param, exp_avg, exp_avg_sq in gathered:
            b.flat.index_copy_(0, index, param)  # [n_j, P] rows back into [N, P]
            b.exp_avg.index_copy_(0, index, exp_avg)
            b.exp_avg_sq.index_copy_(0, index, exp_avg_sq)
        for b in self.blocks.values():
            b.flat.grad = None

    # --- bookkeeping ------------------------------------------------------------------------------------

    def _rows(self, members: list[int]) -> torch.Tensor | None:
        """Row indices of `members` in the stacks; None when they are every client in order (no gather)."""
        if members == list(range(len(self.clients))):
            return None
        return torch.tensor(members, device=self.device)

    def _require_open(self) -> _OpenStep:
        if self._open is None:
            raise ProtocolError("a message for a step that no client has embedded")
        return self._open

    def _client(self, cid: int, step: int) -> int:
        """The index of client `cid`, which must have sent tokens for this open step."""
        k = self._index.get(cid)
        if k is None:
            raise ProtocolError(f"no client {cid} in this group")
        open_step = self._require_open()
        if step != open_step.step or k not in open_step.group_of:
            held = open_step.step if k in open_step.group_of else None
            raise ProtocolError(f"client {cid}: message for step {step}, but the open step is {held}")
        return k


def _labels(open_step: _OpenStep, members: list[int]) -> torch.Tensor:
    """[n, b] labels of `members`, in that order (usually one whole group: no copy)."""
    first = open_step.group_of[members[0]]
    if all(open_step.group_of[k] is first for k in members):
        return first.labels_of(members)
    return torch.cat([open_step.group_of[k].labels_of([k]) for k in members])  # n x [1, b] -> [n, b]


def _device(module: nn.Module) -> torch.device:
    return next(itertools.chain(module.parameters(), module.buffers()), torch.empty(0)).device


def _check_finite(name: str, t: torch.Tensor, clients: list[int]) -> None:
    """What decoding refuses on the wire, refused here too: NaN or infinite values."""
    if not all_finite(t.detach()):
        raise ProtocolError(f"tensor {name} of clients {clients}: contains NaN or infinite values")
