"""Group Preference Optimization (Zhao, Dang & Grover, ICLR 2024), faithful to the authors' model.

Each candidate is one point: x = its embedding, y = the group's probability for it. Context tokens
are MLP([x; y]), target tokens MLP([x; 0]); a 6-layer post-LN transformer encoder without positional
encoding in which every token attends to the context tokens only; a (mu, s) head; p = softmax of mu
within each target item; loss = Gaussian NLL of y under N(p, exp(s)^2).

Speed without changing the function:
- no token attends to a target, so each layer runs attention with only the group's context as keys
  (cost T x C instead of (C+T)^2); a test checks equality with the authors' masked
  `nn.TransformerEncoder`;
- the last layer computes the target tokens only (the context's outputs there are never read);
- the embedding MLP's first layer is applied once per distinct candidate vector of a batch (to the whole
  feature table when the batch holds most of it, so that the backward keeps no gathered copy);
- seeds train together: on CUDA `GPOEnsemble` holds S networks' parameters stacked on a leading axis,
  every linear layer is one batched matmul over the S members, and Adam (elementwise) updates each
  member exactly as it would alone; on the CPU each seed trains in its own process, all at once. Each
  seed keeps its own sampling stream, validation and early stopping, so `fit_seeds` equals separate
  runs (tested: up to float rounding on CUDA's layout, exactly in processes);
- attention: on CUDA one `scaled_dot_product_attention` call per layer for all groups of all members
  (padded to the longest group, keys masked); on the CPU a loop over groups, which measured faster
  there (`benchmarks/gpo_gpu.py --attention`); both paths are tested equal;
- a step's batch (sampling, layout, distinct feature rows, target counts) is built on the host and copied
  to the device once, through pinned memory: a CUDA step never waits for the device (a GPU test runs
  steps under torch's sync debug mode);
- `compile: true` pads every training batch to one static shape (`StaticShape`, bounded from the data)
  and compiles the model (CUDA: CUDA graphs), so that one graph serves every step.

Deviations from the authors' code, each a fix: validation groups (not the test groups) pick the
checkpoint; the loss is the mean over real target points (theirs counts padding in the mean);
validation context draws are fixed by the seed (theirs change at every evaluation)."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from queue import Empty

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..cards import Limit
from ..files import write_atomic
from ..metrics import item_score
from ..protocol import Episode, derived_rng, draw_episode
from ..registry import METHODS
from ..workers import queue_manager, stop_workers, usable_cores, worker_pool
from .base import Method, Setup, item_softmax

log = logging.getLogger(__name__)


def build_mlp(d_in: int, d_hidden: int, depth: int) -> nn.Sequential:
    """Linear(d_in, h) and depth-1 more Linear(h, h), ReLU between (the authors' build_mlp)."""
    layers: list[nn.Module] = [nn.Linear(d_in, d_hidden)]
    for _ in range(depth - 1):
        layers += [nn.ReLU(), nn.Linear(d_hidden, d_hidden)]
    return nn.Sequential(*layers)


class GPONetwork(nn.Module):
    """One GPO network as the authors build it (embedding MLP, `nn.TransformerEncoder`, head): the
    parameter layout and initialisation of every ensemble member, and the reference in the tests."""

    def __init__(self, d_x: int, d_model: int, layers: int, heads: int, d_ff: int, mlp_depth: int) -> None:
        super().__init__()
        self.embed = build_mlp(d_x + 1, d_model, mlp_depth)
        layer = nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, 2))


class GPOEnsemble(nn.Module):
    """S GPO networks with their parameters stacked (leading axis = member), run in one pass."""

    def __init__(self, networks: list[GPONetwork]) -> None:
        super().__init__()
        first = networks[0]
        self.heads = first.encoder.layers[0].self_attn.num_heads
        self.n_layers, self.mlp_layers = len(first.encoder.layers), len(first.embed) // 2 + 1
        self.batched = False  # the CUDA layout: batched matmuls and one attention call per layer
        states = [net.state_dict() for net in networks]
        for name in states[0]:
            self.register_parameter(key(name), nn.Parameter(torch.stack([s[name] for s in states]).detach().clone()))

    def p(self, name: str) -> torch.Tensor:
        return getattr(self, key(name))

    @property
    def size(self) -> int:
        return self.p("head.0.weight").shape[0]

    def network(self, member: int) -> GPONetwork:
        """Member `member` as an authors'-layout `GPONetwork` (its parameters copied)."""
        w = self.p("embed.0.weight")
        d_model, heads = w.shape[1], self.heads
        net = GPONetwork(
            w.shape[2] - 1,
            d_model,
            self.n_layers,
            heads,
            self.p("encoder.layers.0.linear1.weight").shape[1],
            self.mlp_layers,
        )
        net.load_state_dict({name: self.p(name)[member].detach().clone() for name in net.state_dict()})
        return net

    def members(self, indices: list[int]) -> GPOEnsemble:
        """A new ensemble of the given members (parameters copied)."""
        out = copy.copy(self)
        out._parameters = {
            name: nn.Parameter(value.detach()[indices].clone()) for name, value in self._parameters.items()
        }
        return out

    def forward(self, x: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature table x [U, d] and a batch of S members' sequences → mu, s per target point, member by
        member and group by group. With `batched` set, each linear layer is one batched matmul over the
        members and each attention one call for all groups; otherwise loops (faster on the CPU)."""
        tokens = self.embed_points(x, batch.distinct, batch.position, batch.y)
        for i in range(self.n_layers - 1):
            tokens = self.layer_step(f"encoder.layers.{i}.", tokens, batch, batch.every_token)
        # only the targets' outputs of the last layer are read: the context supplies its keys and values
        d_model = tokens.shape[-1]
        targets = tokens.gather(1, batch.target_tokens[..., None].expand(-1, -1, d_model))
        targets = self.layer_step(f"encoder.layers.{self.n_layers - 1}.", tokens, batch, batch.targets, targets)
        out = self.linear("head.2", F.relu(self.linear("head.0", targets))).flatten(0, 1)[batch.target_flat]
        return out[:, 0], out[:, 1]

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """x [S, n, in] through member s's Linear `name` → [S, n, out]."""
        return batched_linear(x, self.p(name + ".weight"), self.p(name + ".bias"), self.batched)

    def embed_points(
        self, x: torch.Tensor, distinct: torch.Tensor, position: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """MLP([x[rows]; y]) for the tokens' feature rows = distinct[position] and y, both [S, L]. Its first
        layer is W_x x + w_y y + b, and W_x x is computed once per distinct row: a candidate recurs in every
        group that answered it, and at d = 4096 gathering x[rows] would hold one copy of the vector per point."""
        weight, bias = self.p("embed.0.weight"), self.p("embed.0.bias")
        n_members = len(position)
        # a batch that holds most of the table projects all of it: the backward then keeps x itself rather
        # than a gathered copy of its rows (29 MiB at OpinionQA's shapes, d = 4096)
        table, lookup = (x, distinct[position]) if 2 * len(distinct) > len(x) else (x[distinct], position)
        projected = batched_linear(table.expand(n_members, -1, -1), weight[:, :, :-1], None, self.batched)
        offsets = torch.arange(n_members, device=position.device)[:, None] * len(table)
        # index_select, not [position]: the backward of advanced indexing with repeated indices adds
        # in a thread-dependent order on the CPU, which made training non-deterministic.
        hidden = projected.flatten(0, 1).index_select(0, (lookup + offsets).flatten()).view(*position.shape, -1)
        hidden = hidden + y[..., None] * weight[:, None, :, -1] + bias[:, None]
        for i in range(2, 2 * self.mlp_layers - 1, 2):
            hidden = self.linear(f"embed.{i}", F.relu(hidden))
        return hidden

    def layer_norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x, x.shape[-1:], eps=1e-5)
        return out * self.p(name + ".weight")[:, None] + self.p(name + ".bias")[:, None]

    def layer_step(
        self, prefix: str, tokens: torch.Tensor, batch: Batch, layout: Queries, queries: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One post-LN `nn.TransformerEncoderLayer` (ReLU, no dropout) per member, in which each
        group's tokens attend to that group's context tokens only. Computed for `queries` (default: every
        token) laid out as `layout` says; the keys and values come from the context among `tokens`."""
        queries = tokens if queries is None else queries
        w, b = self.p(prefix + "self_attn.in_proj_weight"), self.p(prefix + "self_attn.in_proj_bias")
        d_model = tokens.shape[-1]
        q = batched_linear(queries, w[:, :d_model], b[:, :d_model], self.batched)
        context = tokens.gather(1, batch.context[..., None].expand(-1, -1, d_model))
        kv = batched_linear(context, w[:, d_model:], b[:, d_model:], self.batched)
        k, v = kv.chunk(2, -1)
        attention = packed_attention if self.batched else looped_attention
        attended = attention(q, k, v, batch, layout, self.heads)
        queries = self.layer_norm(prefix + "norm1", queries + self.linear(prefix + "self_attn.out_proj", attended))
        ff = self.linear(prefix + "linear2", F.relu(self.linear(prefix + "linear1", queries)))
        return self.layer_norm(prefix + "norm2", queries + ff)


def batched_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, batched: bool) -> torch.Tensor:
    """Member s's x[s] @ weight[s]^T + bias[s]: one batched matmul, or (`batched` false, for the CPU,
    where torch's bmm measured several times slower than the same products) one matmul per member."""
    if batched:
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias[:, None], x, weight.transpose(1, 2))
    biases = [None] * len(weight) if bias is None else split_members(bias)
    return join_members([F.linear(*args) for args in zip(split_members(x), split_members(weight), biases, strict=True)])


def split_members(t: torch.Tensor) -> list[torch.Tensor]:
    """t[s] for each member s: for one member a view, where `unbind`'s backward stacks (copies) the gradients."""
    return [t.squeeze(0)] if len(t) == 1 else list(t.unbind())


def join_members(parts: list[torch.Tensor]) -> torch.Tensor:
    """`torch.stack(parts)`; for one member a view rather than a copy."""
    return parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts)


def key(name: str) -> str:
    """A state-dict name as a parameter attribute (dots are not allowed)."""
    return name.replace(".", "__")


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., n, heads * d] → [..., heads, n, d]."""
    return t.unflatten(-1, (heads, -1)).transpose(-3, -2)


def looped_attention(q, k, v, batch: Batch, layout: Queries, heads: int) -> torch.Tensor:
    """Per member and group: softmax(q k^T / sqrt(d)) v over that group's context; zero for a group
    without context (attending to nothing contributes zero before the output projection). Groups are
    taken with `split`: slicing them made the backward pass allocate and fill a full-size gradient for
    every group."""
    scale = (q.shape[-1] // heads) ** -0.5
    members = []
    for spans, q_m, k_m, v_m in zip(layout.spans, *map(split_members, (q, k, v)), strict=True):
        sizes = [end - start for start, end, _, _ in spans]
        ctx_sizes = [ctx_end - ctx_start for _, _, ctx_start, ctx_end in spans]
        ctx_sizes.append(len(k_m) - sum(ctx_sizes))  # and the padding, as for the queries
        queries = q_m.split([*sizes, len(q_m) - sum(sizes)])
        keys, values = k_m.split(ctx_sizes), v_m.split(ctx_sizes)
        outputs = []
        for qs, ks, vs in zip(queries[:-1], keys[:-1], values[:-1], strict=True):
            if len(ks) == 0:
                outputs.append(qs.new_zeros(qs.shape))
                continue
            scores = split_heads(qs * scale, heads) @ split_heads(ks, heads).transpose(1, 2)
            attended = torch.softmax(scores, -1) @ split_heads(vs, heads)
            outputs.append(attended.transpose(0, 1).flatten(1))
        outputs.append(queries[-1].new_zeros(queries[-1].shape))  # padding
        members.append(torch.cat(outputs))
    return join_members(members)


def packed_attention(q, k, v, batch: Batch, layout: Queries, heads: int) -> torch.Tensor:
    """The same as `looped_attention` in one `scaled_dot_product_attention` call: every (member,
    group) padded to the longest group, keys outside the group's context masked. A group without
    context attends to one zero key/value, which gives zero."""
    with_zero = lambda t: torch.cat([t.flatten(0, 1), t.new_zeros(1, t.shape[-1])])  # noqa: E731
    queries = split_heads(with_zero(q)[layout.index], heads)
    keys = split_heads(with_zero(k)[batch.key_index], heads)
    values = split_heads(with_zero(v)[batch.key_index], heads)
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=batch.key_mask[:, None, None, :])
    return with_zero(out.transpose(1, 2).flatten(2))[layout.scatter_back].view_as(q)


def gaussian_nll(p: torch.Tensor, log_std: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per point -log N(y; p, exp(s)^2)."""
    # validate_args=False: the argument checks read values back to the host, a CUDA sync in every step
    return -torch.distributions.Normal(p, torch.exp(log_std), validate_args=False).log_prob(y)


@dataclass
class GroupPoints:
    """One group's items as flat candidate points (on the host: batches are built there, see `make_batch`)."""

    items: list[str]
    rows: torch.Tensor  # feature row of each point
    y: torch.Tensor  # the group's probability of each point
    item_of: torch.Tensor  # index into `items` of each point


@dataclass
class Part:
    """One group's share of a batch: its context points and its target points."""

    ctx_rows: torch.Tensor
    ctx_y: torch.Tensor
    tgt_rows: torch.Tensor
    tgt_y: torch.Tensor
    tgt_item: torch.Tensor  # item index of each target point, within the group
    n_items: int


@dataclass
class Queries:
    """The tokens a layer computes, as [S, N] (every token: N = L; the last layer's targets: N = T), and
    where each (member, group) finds its own among them."""

    spans: list[list[tuple[int, int, int, int]]]  # per member, per group: queries start, end; context start, end
    index: torch.Tensor  # packed attention: [B, N'] flat query (member * N + j) of each (member, group) row; pad = S*N
    scatter_back: torch.Tensor  # [S*N] row of each query in the flattened [B*N'] output; pad = B*N'


@dataclass
class Batch:
    """S members' sequences, each [group 1 context, group 1 targets, group 2 context, …] padded to L."""

    distinct: torch.Tensor  # [U] the distinct feature rows of the batch's tokens (padding: row 0)
    position: torch.Tensor  # [S, L] each token's index into `distinct`
    y: torch.Tensor  # [S, L] context shares; 0 for targets and padding
    context: torch.Tensor  # [S, C] position of each member's context tokens (0 for padding)
    target_tokens: torch.Tensor  # [S, T] position of each member's target tokens (0 for padding)
    target_flat: torch.Tensor  # [ΣT] flat index (member * T + j) of every real target, member by member
    target_member: torch.Tensor  # [ΣT]
    target_counts: torch.Tensor  # [S] real target points per member
    target_weight: torch.Tensor  # [ΣT] 1 for a real target point, 0 for padding (static shapes)
    tgt_y: torch.Tensor  # [ΣT]
    tgt_segment: torch.Tensor  # [ΣT] item segment of each target point, unique across the batch
    n_segments: int
    every_token: Queries
    targets: Queries
    key_index: torch.Tensor  # packed attention: [B, C'] flat context token (member * C + j); pad = S*C
    key_mask: torch.Tensor  # [B, C'] which keys a row attends to


@dataclass(frozen=True)
class StaticShape:
    """Sizes every training batch of a run is padded to (`GPO.static_shape`: bounds from the data and the
    sampling settings), so that a compiled step sees one shape: the padding tokens are never keys, never
    targets, and their target points weigh 0 in the loss."""

    length: int  # tokens per member
    width: int  # context tokens per member
    n_targets: int  # target tokens per member
    n_keys: int  # context tokens of the largest group
    every_rows: int  # tokens of the largest group
    target_rows: int  # target tokens of the largest group
    n_flat: int  # target points of all members
    n_distinct: int  # distinct feature rows
    n_segments: int  # item segments of all members (every item of every group), plus one for the padding


def make_batch(members: list[list[Part]], device: torch.device, shape: StaticShape | None = None) -> Batch:
    """Per member, per group Parts (on the host) → one padded batch for `GPOEnsemble.forward` on `device`
    (with `shape`: padded to it). The batch is built on the host and copied over once, so that a CUDA step
    never waits for the host and the host never waits for the device (nothing read back inside a step)."""
    n_ctx = [[len(p.ctx_rows) for p in parts] for parts in members]
    n_tgt = [[len(p.tgt_rows) for p in parts] for parts in members]
    length = max(1, max(sum(c) + sum(t) for c, t in zip(n_ctx, n_tgt, strict=True)))
    width = max(1, max(sum(c) for c in n_ctx))
    n_targets = max(1, max(sum(t) for t in n_tgt))
    if shape is not None:
        length, width, n_targets = (
            fits(shape, "length", length),
            fits(shape, "width", width),
            fits(shape, "n_targets", n_targets),
        )
    rows = torch.zeros(len(members), length, dtype=torch.long)
    y = torch.zeros(len(members), length)
    context = np.zeros((len(members), width), dtype=np.int64)
    target_tokens = np.zeros((len(members), n_targets), dtype=np.int64)
    target_flat, target_member, tgt_y, segments = [], [], [], []
    segment_offset = 0
    every_token, targets = [], []  # per (member, group): member, queries start, count, context start, count
    for s, parts in enumerate(members):
        position = ctx_seen = tgt_seen = 0
        for part in parts:
            c, t = len(part.ctx_rows), len(part.tgt_rows)
            rows[s, position : position + c + t] = torch.cat([part.ctx_rows, part.tgt_rows])
            y[s, position : position + c] = part.ctx_y
            context[s, ctx_seen : ctx_seen + c] = np.arange(position, position + c)
            target_tokens[s, tgt_seen : tgt_seen + t] = np.arange(position + c, position + c + t)
            target_flat.append(s * n_targets + np.arange(tgt_seen, tgt_seen + t))
            target_member.append(np.full(t, s))
            tgt_y.append(part.tgt_y)
            segments.append(part.tgt_item + segment_offset)
            every_token.append((s, position, c + t, ctx_seen, c))
            targets.append((s, tgt_seen, t, ctx_seen, c))
            position, ctx_seen, tgt_seen = position + c + t, ctx_seen + c, tgt_seen + t
            segment_offset += part.n_items
    n_keys = max(1, max(c for *_, c in every_token))
    every_rows = max(1, max(n for _, _, n, _, _ in every_token))
    target_rows = max(1, max(n for _, _, n, _, _ in targets))
    if shape is not None:
        n_keys, every_rows, target_rows = (
            fits(shape, "n_keys", n_keys),
            fits(shape, "every_rows", every_rows),
            fits(shape, "target_rows", target_rows),
        )
    key_index = np.full((len(every_token), n_keys), len(members) * width)
    key_mask = np.zeros((len(every_token), n_keys), dtype=bool)
    for b, (s, _, _, ctx_start, c) in enumerate(every_token):
        key_index[b, :c] = s * width + np.arange(ctx_start, ctx_start + c)
        key_mask[b, : max(c, 1)] = True  # no context: the zero key at the pad index, which gives zero
    distinct, position = torch.unique(rows, return_inverse=True)
    as_index = lambda a: torch.as_tensor(np.concatenate(a) if isinstance(a, list) else a)  # noqa: E731
    target_flat, target_member, tgt_y, tgt_segment = map(as_index, (target_flat, target_member, tgt_y, segments))
    counts = torch.bincount(target_member, minlength=len(members))
    target_weight = torch.ones(len(target_flat))
    n_segments = segment_offset
    if shape is not None:  # padding: feature row 0; target points at position 0, in a segment of their own
        n_points = fits(shape, "n_flat", len(target_flat))
        n_segments = fits(shape, "n_segments", segment_offset + 1)
        distinct = pad(distinct, fits(shape, "n_distinct", len(distinct)), 0)
        target_flat, target_member = pad(target_flat, n_points, 0), pad(target_member, n_points, 0)
        tgt_y, target_weight = pad(tgt_y, n_points, 0), pad(target_weight, n_points, 0)
        tgt_segment = pad(tgt_segment, n_points, n_segments - 1)
    host = Batch(
        distinct=distinct,
        position=position,
        y=y,
        context=as_index(context),
        target_tokens=as_index(target_tokens),
        target_flat=target_flat,
        target_member=target_member,
        target_counts=counts,
        target_weight=target_weight,
        tgt_y=tgt_y,
        tgt_segment=tgt_segment,
        n_segments=n_segments,
        every_token=query_layout(every_token, len(members), length, every_rows),
        targets=query_layout(targets, len(members), n_targets, target_rows),
        key_index=as_index(key_index),
        key_mask=as_index(key_mask),
    )
    return to_device(host, device)


def fits(shape: StaticShape, name: str, size: int) -> int:
    """The static size `name`, after checking that `size` fits in it."""
    if size > getattr(shape, name):
        raise ValueError(f"gpo: a batch needs {name} = {size}, over its static shape's {getattr(shape, name)}")
    return getattr(shape, name)


def pad(values: torch.Tensor, size: int, fill) -> torch.Tensor:
    return torch.cat([values, values.new_full((size - len(values),), fill)])


def to_device(value, device: torch.device):
    """A batch (or any of its fields) with every tensor on `device`; to CUDA through pinned memory, without
    blocking the host."""
    if isinstance(value, torch.Tensor):
        return value.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else value.to(device)
    if isinstance(value, (Batch, Queries)):
        return type(value)(**{f.name: to_device(getattr(value, f.name), device) for f in fields(value)})
    return value


def query_layout(groups: list[tuple[int, int, int, int, int]], n_members: int, length: int, n_rows: int) -> Queries:
    """Queries for (member, queries start, count, context start, count) per group, each member's queries
    padded to `length`, each group's row of the packed layout to `n_rows` (at least the largest group)."""
    spans: list[list[tuple[int, int, int, int]]] = [[] for _ in range(n_members)]
    index = np.full((len(groups), n_rows), n_members * length)
    scatter_back = np.full(n_members * length, len(groups) * n_rows)
    for b, (s, start, n, ctx_start, c) in enumerate(groups):
        spans[s].append((start, start + n, ctx_start, ctx_start + c))
        index[b, :n] = s * length + np.arange(start, start + n)
        scatter_back[s * length + start : s * length + start + n] = b * n_rows + np.arange(n)
    return Queries(spans, torch.as_tensor(index), torch.as_tensor(scatter_back))


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@METHODS.register("gpo", "Group Preference Optimization: meta-trained in-context transformer (ICLR 2024)")
class GPO(Method):
    SETTINGS = {
        "bf16": Limit(bool),
        "compile": Limit(bool),
        "context_items": Limit(list, item=int, length=2, low=0),
        "d_ff": Limit(int, 1),
        "d_model": Limit(int, 1),
        "eval_every": Limit(int, 1),
        "groups_per_step": Limit(int, 1, nullable=True),
        "heads": Limit(int, 1),
        "layers": Limit(int, 1),
        "lr": Limit(float, 0, open_low=True),
        "max_steps": Limit(int, 1),
        "mlp_depth": Limit(int, 1),
        "patience": Limit(int, 1, nullable=True),
        "target_items": Limit(list, item=int, length=2, low=1),
        "tf32": Limit(bool),
        "validation_shots": Limit(int, 0),
    }
    needs_features = True
    batched_on_cpu = False  # the CUDA layout (and seeds trained together) on the CPU too: for tests

    def __init__(self, settings: dict, setup: Setup) -> None:
        super().__init__(settings, setup)
        self.device = torch.device(setup.device)
        features = setup.features
        self.x = torch.as_tensor(features.matrix, dtype=torch.float32, device=self.device)
        self.points = {g: self.group_points(g) for g in setup.task.groups}
        torch.manual_seed(setup.seed)
        s = settings
        network = GPONetwork(features.dim, s["d_model"], s["layers"], s["heads"], s["d_ff"], s["mlp_depth"])
        self.model = GPOEnsemble([network]).to(self.device)
        if self.device.type == "cuda" and s.get("tf32"):
            torch.backends.cuda.matmul.allow_tf32 = True
        if s.get("bf16") and self.device.type == "cpu" and not cpu_supports_bf16():
            raise ValueError("gpo: bf16=true on a CPU without AVX-512 BF16 or AMX; drop --set bf16=true")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(s.get("bf16")))
        self.model.batched = self.device.type != "cpu" or self.batched_on_cpu  # loops measured faster on CPU
        self.checkpoint_path = setup.work_dir / "checkpoint.pt"

    def group_points(self, group_id: str) -> GroupPoints:
        features, targets = self.setup.features, self.setup.task.groups[group_id].targets
        items = sorted(targets)
        rows = np.concatenate([features.rows[i] for i in items])
        y = np.concatenate([targets[i] for i in items])
        item_of = np.concatenate([np.full(len(targets[i]), n) for n, i in enumerate(items)])
        as_tensor = lambda a, dtype: torch.as_tensor(a, dtype=dtype)  # noqa: E731
        return GroupPoints(
            items, as_tensor(rows, torch.long), as_tensor(y, torch.float32), as_tensor(item_of, torch.long)
        )

    def run_model(self, model: GPOEnsemble, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """→ p (per-item softmax) and log std, per target point."""
        with self.autocast:
            mu, log_std = model(self.x, batch)
        return item_softmax(mu.float(), batch.tgt_segment, batch.n_segments), log_std.float()

    # ---- meta-training ------------------------------------------------------------------------

    def sample_parts(self, generator: torch.Generator) -> list[Part]:
        """Per group: a random permutation of its items; n_ctx ~ U{10..100} and n_tgt ~
        U{10..min(100, N - n_ctx)} whole items (bounds shrink for groups with under 20 items)."""
        names = list(self.setup.split.train)
        per_step = self.settings.get("groups_per_step") or len(names)
        if per_step < len(names):
            names = [names[i] for i in torch.randperm(len(names), generator=generator)[:per_step].tolist()]
        (ctx_lo, ctx_hi), (tgt_lo, tgt_hi) = self.settings["context_items"], self.settings["target_items"]
        parts = []
        for name in names:
            group = self.points[name]
            n = len(group.items)
            hi = max(1, min(ctx_hi, n - min(tgt_lo, n // 2)))
            lo = min(ctx_lo, hi)
            n_ctx = int(torch.randint(lo, hi + 1, (1,), generator=generator))
            t_hi = max(1, min(tgt_hi, n - n_ctx))
            n_tgt = int(torch.randint(min(tgt_lo, t_hi), t_hi + 1, (1,), generator=generator))
            order = torch.randperm(n, generator=generator)
            role = torch.zeros(n, dtype=torch.long)
            role[order[:n_ctx]] = 1
            role[order[n_ctx : n_ctx + n_tgt]] = 2
            point_role = role[group.item_of]
            ctx, tgt = point_role == 1, point_role == 2
            parts.append(Part(group.rows[ctx], group.y[ctx], group.rows[tgt], group.y[tgt], group.item_of[tgt], n))
        return parts

    def static_shape(self, n_members: int) -> StaticShape:
        """Bounds on every batch `sample_parts` can draw for `n_members` members (as it draws them: whole
        items, the largest-option items first as the worst case), for a compiled step's static shape."""
        (ctx_lo, ctx_hi), (tgt_lo, tgt_hi) = self.settings["context_items"], self.settings["target_items"]
        bounds = []  # per group: context tokens, target tokens, all tokens, items (its segment ids)
        answered = {0}  # feature rows the groups' points use, and row 0 for padding
        for name in self.setup.split.train:
            group = self.points[name]
            answered.update(group.rows.tolist())
            n = len(group.items)
            options = np.sort(np.bincount(group.item_of.numpy(), minlength=n))[::-1]
            hi = max(1, min(ctx_hi, n - min(tgt_lo, n // 2)))
            targets = {
                n_ctx: min(n - n_ctx, max(1, min(tgt_hi, n - n_ctx))) for n_ctx in range(min(ctx_lo, hi), hi + 1)
            }
            most = max(targets.values())
            bounds.append(
                (
                    options[:hi].sum(),
                    options[:most].sum(),
                    max(options[: c + t].sum() for c, t in targets.items()),
                    n,
                )
            )
        per_step = self.settings.get("groups_per_step") or len(bounds)
        total = lambda k: int(sum(sorted((b[k] for b in bounds), reverse=True)[:per_step]))  # noqa: E731
        largest = lambda k: int(max(max(b[k] for b in bounds), 1))  # noqa: E731
        return StaticShape(
            length=max(total(2), 1),
            width=max(total(0), 1),
            n_targets=max(total(1), 1),
            n_keys=largest(0),
            every_rows=largest(2),
            target_rows=largest(1),
            n_flat=n_members * max(total(1), 1),
            n_distinct=len(answered),
            n_segments=n_members * total(3) + 1,
        )

    def fit(self) -> dict:
        return train([self])[0]

    @classmethod
    def fit_seeds(cls, settings: dict, setups: list[Setup]) -> list[tuple[GPO, dict]]:
        """Train one GPO per setup (the same task and split, different seeds); each seed draws its own
        batches and stops on its own validation, as when trained alone. On CUDA the seeds train as one
        ensemble. On the CPU each seed trains in its own process, all at once, with (usable cores) /
        (seeds) torch threads each: one step of these small matrices gained nothing from a second
        thread on this project's 2-core machine (one thread was faster), so parallel seeds are what
        fills the cores."""
        members = [cls(settings, setup) for setup in setups]
        if members[0].model.batched:
            return list(zip(members, train(members), strict=True))
        threads = max(1, usable_cores() // len(members))
        fits = train_in_processes(settings, setups, threads)
        for member, (state, _) in zip(members, fits, strict=True):
            member.model.load_state_dict(state)
        return [(member, fit) for member, (_, fit) in zip(members, fits, strict=True)]

    def trained_on(self) -> dict:
        """What a checkpoint must share with the run that resumes it: the data the method sees (the split's
        view of the task), its settings and the seed."""
        return {"data": self.setup.task.fingerprint(), "settings": self.settings, "seed": self.setup.seed}

    def validate(self) -> float:
        """Mean score over the validation groups, each with `validation_shots` fixed context items
        (personalized tasks: drawn from the user's pool, scored on the rest of the pool)."""
        task = self.setup.task
        shots, seed, split = self.settings["validation_shots"], self.setup.seed, self.setup.split
        episodes = [draw_episode(task, g, shots, seed, split, validation=True) for g in split.validation]
        per_group = []
        for episode, preds in zip(episodes, self.predict(episodes), strict=True):
            targets = task.groups[episode.group].targets
            scores = [
                item_score(task.metric, p, targets[i], task.items[i].ordinal)
                for i, p in zip(episode.targets, preds, strict=True)
            ]
            per_group.append(np.mean(scores))
        return float(np.mean(per_group))

    # ---- evaluation -----------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, episodes: list[Episode]) -> list[list[np.ndarray]]:
        """All episodes in one batch: every target item of every group in one model call."""
        self.model.eval()
        rows = self.setup.features.rows
        as_tensor = lambda a, dtype: torch.as_tensor(a, dtype=dtype)  # noqa: E731
        parts, sizes = [], []
        for episode in episodes:
            ctx_rows = [rows[i] for i in episode.context]
            tgt_sizes = [len(rows[i]) for i in episode.targets]
            parts.append(
                Part(
                    as_tensor(np.concatenate(ctx_rows) if ctx_rows else np.zeros(0), torch.long),
                    as_tensor(np.concatenate(episode.context_targets) if ctx_rows else np.zeros(0), torch.float32),
                    as_tensor(np.concatenate([rows[i] for i in episode.targets]), torch.long),
                    torch.zeros(sum(tgt_sizes)),
                    as_tensor(np.repeat(np.arange(len(tgt_sizes)), tgt_sizes), torch.long),
                    len(tgt_sizes),
                )
            )
            sizes.append(tgt_sizes)
        p, _ = self.run_model(self.model, make_batch([parts], self.device))
        p = p.double().cpu().numpy()
        out, start = [], 0
        for tgt_sizes in sizes:
            preds = []
            for size in tgt_sizes:
                preds.append(p[start : start + size] / p[start : start + size].sum())
                start += size
            out.append(preds)
        return out

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        return self.predict([episode])[0]


def train(members: list[GPO], progress=None) -> list[dict]:
    """Meta-train the members' networks together (one stacked ensemble, one Adam: elementwise, so each
    member's update is its own). Per member: its sampling stream, validation, best checkpoint and early
    stop; a member that stopped keeps its best parameters while the others go on. Checkpoints (and
    --resume) hold the whole ensemble. `progress`: a tqdm-like bar to report to (default: a new one)."""
    lead, s = members[0], members[0].settings
    seeds = [m.setup.seed for m in members]
    model = lead.model
    if len(members) > 1:
        model = GPOEnsemble([m.model.network(0) for m in members]).to(lead.device)
        model.batched = lead.model.batched
    optimizer = torch.optim.Adam(model.parameters(), lr=s["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s["max_steps"])
    generators = [torch.Generator().manual_seed(int(derived_rng("gpo-train", seed).integers(2**63))) for seed in seeds]
    fresh = {"step": 0, "best_score": -math.inf, "best_step": 0, "best_model": None, "stale": 0, "history": []}
    states = [dict(fresh, history=[]) for _ in members]
    step, done = 0, [False] * len(members)
    path = lead.checkpoint_path
    if len(members) > 1:
        path = lead.setup.work_dir.parent / ("seeds" + "-".join(map(str, seeds))) / "checkpoint.pt"
    if lead.setup.resume and path.exists():
        saved = load_checkpoint(path, members)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        for generator, state in zip(generators, saved["generators"], strict=True):
            generator.set_state(state)
        step, states, done = saved["step"], saved["states"], saved["done"]
        log.info("gpo: resumed from %s at step %d", path, step)
    timing = {"step_s": 0.0, "validate_s": 0.0}
    step_once = step_function(members, model, optimizer, scheduler)
    label = f"gpo seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
    if progress is None:
        progress = tqdm(total=s["max_steps"], initial=step, desc=label, unit="step")
    else:
        progress.update(step)
    while step < s["max_steps"] and not all(done):
        tick = time.perf_counter()
        losses = step_once(generators)
        timing["step_s"] += time.perf_counter() - tick
        step += 1
        progress.update()
        if step % s["eval_every"] == 0 or step == s["max_steps"]:
            tick = time.perf_counter()
            for i, (member, state) in enumerate(zip(members, states, strict=True)):
                if done[i]:
                    continue
                member.model = model.members([i])
                score = member.validate()
                state["history"].append((step, float(losses[i]), score))
                state["step"] = step
                if score > state["best_score"]:
                    state.update(best_score=score, best_step=step, stale=0, best_model=member.model.state_dict())
                else:
                    state["stale"] += 1
                if s.get("patience") and state["stale"] >= s["patience"]:
                    log.info(
                        "gpo seed %d: no validation gain in %d evaluations; stopping at step %d",
                        seeds[i],
                        s["patience"],
                        step,
                    )
                    done[i] = True
            timing["validate_s"] += time.perf_counter() - tick
            best = max(state["best_score"] for state in states)
            progress.set_postfix(loss=f"{float(losses.mean()):.3f}", best=f"{best:.4f}")
            save_checkpoint(path, members, model, optimizer, scheduler, generators, step, states, done)
    progress.close()
    for i, (member, state) in enumerate(zip(members, states, strict=True)):
        member.model = model.members([i])
        if state["best_model"] is not None:
            member.model.load_state_dict(state["best_model"])
    return [
        {
            "steps": state["step"],
            "best_step": state["best_step"],
            "best_validation": state["best_score"],
            "history": state["history"],
            "timing": timing,
            "trained_with_seeds": seeds,
        }
        for state in states
    ]


class QueueProgress:
    """The part of tqdm that `train` uses, in a worker process: steps and the best validation score go
    to the parent's bar through a queue."""

    def __init__(self, queue, seed: int) -> None:
        self.queue, self.seed = queue, seed

    def update(self, n: int = 1) -> None:
        self.queue.put((self.seed, n, None))

    def set_postfix(self, best: str, **_) -> None:
        self.queue.put((self.seed, 0, best))

    def close(self) -> None:
        pass


def fit_in_worker(settings: dict, setup: Setup, threads: int, queue) -> tuple[dict, dict]:
    """In a worker process: train one seed (as `GPO.fit`) with `threads` torch threads → its best
    parameters and fit facts."""
    torch.set_num_threads(threads)
    method = GPO(settings, setup)
    fit = train([method], QueueProgress(queue, setup.seed))[0]
    return method.model.state_dict(), dict(fit, threads=threads)


def train_in_processes(settings: dict, setups: list[Setup], threads: int) -> list[tuple[dict, dict]]:
    """Each setup's seed trained in its own worker process, all at once, under one progress bar →
    per seed, its best parameters and fit facts. Each worker keeps its own checkpoint (so --resume
    continues every seed)."""
    seeds = [setup.seed for setup in setups]
    best = dict.fromkeys(seeds, "-")
    bar = tqdm(
        total=settings["max_steps"] * len(seeds),
        desc=f"gpo seeds {','.join(map(str, seeds))} ({len(seeds)} processes x {threads} thread{'s' * (threads > 1)})",
        unit="step",
    )
    level = logging.getLogger("gpo_bench").getEffectiveLevel()
    with queue_manager() as manager:
        queue, pool = manager.Queue(), worker_pool(len(setups), level)
        try:
            futures = [pool.submit(fit_in_worker, settings, setup, threads, queue) for setup in setups]
            finished = False
            while not finished:
                finished = all(future.done() for future in futures)  # then drain what they sent last
                with contextlib.suppress(Empty):
                    while True:
                        seed, steps, score = queue.get(timeout=0.2)
                        bar.update(steps)
                        if score is not None:
                            best[seed] = score
                            bar.set_postfix(best=" ".join(best.values()))
            results = [future.result() for future in futures]
        except BaseException:
            stop_workers(pool)
            raise
    pool.shutdown()
    bar.close()
    return results


def step_function(members: list[GPO], model: GPOEnsemble, optimizer, scheduler) -> Callable:
    """The training step as `train` runs it: generators → per-member losses. Eager; or, with the card's
    `compile`, the model compiled in the batched layout over batches padded to one static shape, so that one
    graph serves every step (on CUDA in `reduce-overhead` mode: CUDA graphs)."""
    if not members[0].settings.get("compile"):
        return lambda generators: train_step(members, model, generators, optimizer, scheduler)
    shape, model.batched = members[0].static_shape(len(members)), True
    graphs = members[0].device.type == "cuda"
    compiled = torch.compile(model, mode="reduce-overhead" if graphs else None, dynamic=False)

    def step(generators: list[torch.Generator]) -> torch.Tensor:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return train_step(members, compiled, generators, optimizer, scheduler, shape)

    return step


def train_step(
    members: list[GPO], model, generators, optimizer, scheduler, shape: StaticShape | None = None
) -> torch.Tensor:
    """One meta-training step of every member: each samples its batch from its own generator; the loss
    is the sum over members of each member's mean NLL over its target points. `model`: the ensemble, or
    its compiled form with the batch padded to `shape`. → per-member losses."""
    model.train()
    parts = [m.sample_parts(g) for m, g in zip(members, generators, strict=True)]
    batch = make_batch(parts, members[0].device, shape)
    p, log_std = members[0].run_model(model, batch)
    nll = gaussian_nll(p, log_std, batch.tgt_y) * batch.target_weight
    losses = torch.zeros(len(members), device=nll.device).index_add(0, batch.target_member, nll) / batch.target_counts
    optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()
    optimizer.step()
    scheduler.step()
    return losses.detach()


def save_checkpoint(
    path: Path, members: list[GPO], model, optimizer, scheduler, generators, step: int, states: list, done: list
) -> None:
    saved = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generators": [g.get_state() for g in generators],
        "step": step,
        "states": states,
        "done": done,
        "trained_on": [m.trained_on() for m in members],
    }
    write_atomic(path, lambda out: torch.save(saved, out))


def load_checkpoint(path: Path, members: list[GPO]) -> dict:
    """The saved training state; a file that cannot be read, or one trained on other data, settings or
    seeds, is refused with a message naming the file and both sides."""
    mine = [m.trained_on() for m in members]
    try:
        saved = torch.load(path, map_location=members[0].device, weights_only=False)
    except Exception as error:  # noqa: BLE001  (truncated, foreign or not a torch file at all)
        raise RuntimeError(
            f"cannot resume from {path}: not a readable checkpoint ({type(error).__name__}: "
            f"{str(error)[:160]}); delete it, or run without --resume (or with --force) to train from scratch"
        ) from None
    if not isinstance(saved, dict) or "generators" not in saved:
        raise RuntimeError(f"cannot resume from {path}: written by an older gpo-bench; run again without --resume")
    theirs = saved.get("trained_on") or [{}]
    if theirs != mine:
        first, own = theirs[0] or {}, mine[0]
        keys = sorted(set(own["settings"]) | set(first.get("settings") or {}))
        settings = [
            f"{k}={(first.get('settings') or {}).get(k)!r} vs {own['settings'].get(k)!r}"
            for k in keys
            if (first.get("settings") or {}).get(k) != own["settings"].get(k)
        ]
        raise RuntimeError(
            f"cannot resume from {path}: it was trained on data {first.get('data')} (seeds "
            f"{[t.get('seed') for t in theirs]}), this run has data {own['data']} (seeds {[t['seed'] for t in mine]})"
            + (f"; settings differ (checkpoint vs this run): {', '.join(settings)}" if settings else "")
            + "; delete it, or run without --resume (or with --force) to train from scratch"
        )
    return saved
