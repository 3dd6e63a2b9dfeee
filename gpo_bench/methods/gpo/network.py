"""GPO's network: the authors' transformer (embedding MLP, post-LN encoder layers in which every token attends to
the group's context tokens only, a (mu, log std) head) as `GPONetwork`, and `GPOEnsemble`, which holds S such
networks' parameters stacked on a leading axis so that every linear layer of the S members is one batched
matmul. Attention runs as a loop over groups (CPU) or one padded `scaled_dot_product_attention` call (CUDA);
`gaussian_nll` is the training loss."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from .batching import Batch, Queries


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
