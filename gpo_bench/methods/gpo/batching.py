"""GPO's batches: a group's points (`GroupPoints`), one member's sampled context and targets (`Part`), and
`make_batch`, which lays the parts of every member out as one `Batch` of flat index tensors built on the host
and copied to the device once (padded to a `StaticShape` for a compiled step)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch


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
