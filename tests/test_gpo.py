import math

import numpy as np
import pytest
import torch

from gpo_bench.methods.base import item_softmax
from gpo_bench.methods.gpo import GPOEnsemble, GPONetwork, Part, cpu_supports_bf16, gaussian_nll, make_batch

CPU = torch.device("cpu")


def small_ensemble(members=1, d_x=6):
    networks = []
    for seed in range(members):
        torch.manual_seed(seed)
        networks.append(GPONetwork(d_x, d_model=16, layers=2, heads=4, d_ff=16, mlp_depth=4))
    return GPOEnsemble(networks).eval(), networks


def reference_forward(network, ctx_x, ctx_y, tgt_x):
    """The authors' formulation: one sequence [context; targets] through nn.TransformerEncoder with an
    additive mask that lets every token attend to the context tokens only."""
    context = network.embed(torch.cat([ctx_x, ctx_y[:, None]], -1))
    targets = network.embed(torch.cat([tgt_x, torch.zeros(len(tgt_x), 1)], -1))
    n = len(context) + len(targets)
    mask = torch.full((n, n), -math.inf)
    mask[:, : len(context)] = 0
    out = network.head(network.encoder(torch.cat([context, targets])[None], mask=mask)[0, len(context) :])
    return out[:, 0], out[:, 1]


def random_groups(g, sizes, table_rows=9):
    """Groups as (context rows, context y, target rows); rows index a shared table, as options recur."""
    return [
        (
            torch.randint(table_rows, (c,), generator=g),
            torch.rand(c, generator=g),
            torch.randint(table_rows, (t,), generator=g),
        )
        for c, t in sizes
    ]


def parts_of(groups):
    return [Part(c, y, t, torch.zeros(len(t)), torch.arange(len(t)), len(t)) for c, y, t in groups]


@pytest.mark.parametrize("packed", [False, True], ids=["loops (CPU)", "batched (CUDA layout)"])
def test_ensemble_attention_equals_masked_transformer_encoder_per_member(packed):
    """Two members with their own weights and their own groups (of different lengths, so the shorter
    member is padded) in one batch: each member's outputs equal its own network run the authors' way."""
    model, networks = small_ensemble(members=2)
    g = torch.Generator().manual_seed(1)
    table = torch.randn(9, 6, generator=g)
    members = [random_groups(g, [(5, 7), (3, 4), (8, 2)]), random_groups(g, [(2, 3), (6, 9)])]
    batch = make_batch([parts_of(groups) for groups in members], CPU)
    model.batched = packed
    with torch.no_grad():
        mu, s = model(table, batch)
        expected = [
            reference_forward(net, table[c], y, table[t])
            for net, groups in zip(networks, members, strict=True)
            for c, y, t in groups
        ]
    torch.testing.assert_close(mu, torch.cat([m for m, _ in expected]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, torch.cat([v for _, v in expected]), atol=1e-5, rtol=1e-5)


def test_batched_path_equals_the_looped_path_with_gradients_and_empty_context():
    """The CUDA layout (batched matmuls over members, one attention call per layer) against the CPU
    loops (per member, per group), run here on the CPU."""
    model, _ = small_ensemble(members=3)
    g = torch.Generator().manual_seed(3)
    table = torch.randn(9, 6, generator=g)
    members = [random_groups(g, sizes) for sizes in ([(4, 5), (0, 3)], [(7, 2)], [(1, 1), (3, 6), (2, 2)])]
    batch = make_batch([parts_of(groups) for groups in members], CPU)
    results = []
    for packed in (False, True):
        model.zero_grad()
        model.batched = packed
        mu, s = model(table, batch)
        (mu.sin().sum() + s.cos().sum()).backward()
        results.append((mu.detach(), s.detach(), [p.grad.clone() for p in model.parameters()]))
    (mu_a, s_a, grads_a), (mu_b, s_b, grads_b) = results
    torch.testing.assert_close(mu_a, mu_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_a, s_b, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(mu_a).all()
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def forward_one(model, ctx_x, ctx_y, tgt_x):
    n_ctx = len(ctx_x)
    groups = [(torch.arange(n_ctx), ctx_y, torch.arange(n_ctx, n_ctx + len(tgt_x)))]
    with torch.no_grad():
        return model(torch.cat([ctx_x, tgt_x]), make_batch([parts_of(groups)], CPU))[0]


def test_targets_do_not_see_each_other_and_context_order_does_not_matter():
    model, _ = small_ensemble()
    g = torch.Generator().manual_seed(2)
    ctx_x, ctx_y, tgt_x = torch.randn(6, 6, generator=g), torch.rand(6, generator=g), torch.randn(5, 6, generator=g)
    base = forward_one(model, ctx_x, ctx_y, tgt_x)
    changed = tgt_x.clone()
    changed[2] += 3.0
    after = forward_one(model, ctx_x, ctx_y, changed)
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(after[keep], base[keep])
    assert not torch.allclose(after[2], base[2])
    perm = torch.randperm(6, generator=g)
    torch.testing.assert_close(forward_one(model, ctx_x[perm], ctx_y[perm], tgt_x), base, atol=1e-5, rtol=1e-5)
    # and the context does matter
    assert not torch.allclose(forward_one(model, ctx_x, 1 - ctx_y, tgt_x), base)


def test_empty_context_is_allowed():
    model, _ = small_ensemble()
    out = forward_one(model, torch.zeros(0, 6), torch.zeros(0), torch.randn(4, 6))
    assert out.shape == (4,) and torch.isfinite(out).all()


def test_softmax_is_per_item_and_loss_matches_hand_computation():
    # item A has two candidates, item B three; softmax must not mix them
    mu = torch.tensor([0.0, math.log(3.0), 0.0, 0.0, math.log(2.0)])
    segment = torch.tensor([0, 0, 1, 1, 1])
    p = item_softmax(mu, segment, 2)
    torch.testing.assert_close(p, torch.tensor([0.25, 0.75, 0.25, 0.25, 0.5]))
    log_std = torch.tensor([0.0, 0.0, math.log(0.5), math.log(0.5), math.log(0.5)])
    y = torch.tensor([0.0, 1.0, 0.25, 0.25, 0.5])
    # -log N(y; p, s^2) = log s + log sqrt(2 pi) + (y - p)^2 / (2 s^2)
    terms = [0 + 0.5 * math.log(2 * math.pi) + 0.25**2 / 2] * 2 + [math.log(0.5) + 0.5 * math.log(2 * math.pi)] * 3
    assert float(gaussian_nll(p, log_std, y).mean()) == pytest.approx(np.mean(terms), abs=1e-6)


def synthetic_setup(tmp_path, seed=0, resume=False):
    from gpo_bench.cards import load_task_card
    from gpo_bench.encoders import Encoder, EncoderSpec
    from gpo_bench.features import build_features
    from gpo_bench.methods.base import Setup
    from gpo_bench.protocol import split_groups
    from gpo_bench.runner import load_task

    card = load_task_card("synthetic")
    task = load_task(card, None)
    features = build_features(task, Encoder(EncoderSpec.parse("bow"), "cpu", tmp_path / "cache"), card)
    split = split_groups(list(task.groups), card.train_frac, card.val_frac, 0)
    return Setup(task, split, seed, "cpu", tmp_path / "run", features, resume)


TINY = {
    "d_model": 16,
    "layers": 1,
    "heads": 2,
    "d_ff": 16,
    "mlp_depth": 2,
    "lr": 1e-3,
    "max_steps": 30,
    "eval_every": 10,
    "patience": None,
    "validation_shots": 5,
    "context_items": [10, 100],
    "target_items": [10, 100],
    "groups_per_step": None,
    "bf16": False,
    "tf32": False,
}


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    from gpo_bench.methods.gpo import GPO
    from gpo_bench.protocol import draw_episode

    def predictions(method):
        episodes = [draw_episode(method.setup.task, g, 5, 0) for g in method.setup.split.test]
        return np.concatenate([np.concatenate(p) for p in method.predict(episodes)])

    straight = GPO(TINY, synthetic_setup(tmp_path / "a"))
    straight_fit = straight.fit()

    calls = {"n": 0}
    original = GPO.validate

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 2:  # at step 20, before its checkpoint: the last checkpoint is step 10's
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(GPO, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        GPO(TINY, synthetic_setup(tmp_path / "b")).fit()
    monkeypatch.setattr(GPO, "validate", original)
    resumed = GPO(TINY, synthetic_setup(tmp_path / "b", resume=True))
    resumed_fit = resumed.fit()
    assert resumed_fit["history"] == straight_fit["history"] and resumed_fit["steps"] == 30
    np.testing.assert_array_equal(predictions(resumed), predictions(straight))
    # without --resume the same folder trains from scratch, and training is deterministic
    again = GPO(TINY, synthetic_setup(tmp_path / "b"))
    assert again.fit()["history"] == straight_fit["history"]


def test_gpo_learns_the_planted_group_structure(tmp_path):
    """On `synthetic_one_topic` (two group types with opposed tastes, one topic word per candidate), GPO must
    read the group's type from its few shots: for at least two of three seeds it beats `population` by at least
    0.08 and `uniform` by 0.15 for every K >= 5. A 2-layer GPO keeps this around two minutes (the three seeds
    train at once, one process each); the architecture is otherwise the card's. Split seed 1 puts both types
    among the validation groups (with split seed 0 both are of one type, and a checkpoint that ignores the
    shots can look best). Whether one seed escapes the plateau of predicting the average within 2000 steps
    hangs on float rounding: on this project's CPUs seeds 0-3 reached K = 5 at 0.87-0.89, but one of them
    (seed 0 on two threads in one CPU model, seed 1 on one thread in another) stayed at 0.77-0.79, against
    `population`'s 0.73; hence the majority of seeds, not one."""
    from gpo_bench.runner import RunSpec, execute

    def run(method, **overrides):
        spec = RunSpec(
            task="synthetic_one_topic",
            method=method,
            encoder="bow",
            shots=(5, 10, 20),
            seeds=(0, 1, 2),
            split_seed=1,
            overrides=overrides,
        )
        return execute(spec, None, tmp_path, device="cpu")["metrics"]

    gpo = run("gpo", layers=2, lr=1e-3, max_steps=2000, eval_every=100, patience=None)
    population, uniform = run("population"), run("uniform")
    for k in ("5", "10", "20"):
        seeds = [np.mean(list(groups.values())) for groups in gpo[k]["alignment"]["per_seed"].values()]
        median = float(np.median(seeds))
        assert median > population[k]["alignment"]["mean"] + 0.08, (k, seeds, population[k]["alignment"]["mean"])
        assert median > uniform[k]["alignment"]["mean"] + 0.15, (k, seeds, uniform[k]["alignment"]["mean"])


def test_embedding_gradients_are_deterministic_with_shared_vectors():
    # Many points share few vectors, as options shared by groups do: the gradient of the first layer
    # must not depend on the order in which threads add up the repeated rows.
    torch.manual_seed(0)
    model = GPOEnsemble([GPONetwork(512, d_model=128, layers=1, heads=4, d_ff=128, mlp_depth=2)])
    x, rows, y = torch.randn(3000, 512), torch.randint(3000, (1, 20000)), torch.rand(1, 20000)
    weights = torch.arange(20000.0)[:, None]
    grads = []
    distinct, position = torch.unique(rows, return_inverse=True)
    for _ in range(5):
        model.zero_grad()
        (model.embed_points(x, distinct, position, y)[0].sin() * weights).sum().backward()
        grads.append(model.p("embed.0.weight").grad.clone())
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_seeds_trained_together_equal_seeds_trained_apart(tmp_path, monkeypatch):
    """fit_seeds (one stacked ensemble, one optimizer; the CUDA layout, run here on the CPU) against one
    GPO per seed: the same validation history, best step and predictions, up to float rounding."""
    from gpo_bench.methods.gpo import GPO
    from gpo_bench.protocol import draw_episode

    monkeypatch.setattr(GPO, "batched_on_cpu", True)

    def predictions(method):
        episodes = [draw_episode(method.setup.task, g, 5, method.setup.seed) for g in method.setup.split.test]
        return np.concatenate([np.concatenate(p) for p in method.predict(episodes)])

    settings = dict(TINY, patience=1, max_steps=40)
    seeds = [0, 1, 2]
    together = GPO.fit_seeds(settings, [synthetic_setup(tmp_path / "together", seed) for seed in seeds])
    assert together[0][1]["trained_with_seeds"] == seeds
    for seed, (method, fit) in zip(seeds, together, strict=True):
        alone = GPO(settings, synthetic_setup(tmp_path / f"alone{seed}", seed))
        alone_fit = alone.fit()
        assert fit["steps"] == alone_fit["steps"] and fit["best_step"] == alone_fit["best_step"]
        for (step_a, loss_a, score_a), (step_b, loss_b, score_b) in zip(
            fit["history"], alone_fit["history"], strict=True
        ):
            assert step_a == step_b
            assert loss_a == pytest.approx(loss_b, rel=1e-4) and score_a == pytest.approx(score_b, abs=1e-5)
        np.testing.assert_allclose(predictions(method), predictions(alone), atol=1e-5)
    # the seeds are different models
    assert not np.allclose(predictions(together[0][0]), predictions(together[1][0]), atol=1e-3)


def test_padded_batches_give_the_losses_and_gradients_of_unpadded_ones(tmp_path):
    """A batch padded to the run's static shape (what a compiled step trains on) gives the same per-member
    losses and gradients as the unpadded batch; the shape holds every batch the sampler draws, and a batch
    over it is refused with the size that does not fit."""
    import dataclasses

    from gpo_bench.methods.gpo import GPO, StaticShape

    members = [GPO(TINY, synthetic_setup(tmp_path / f"seed{s}", s)) for s in range(2)]
    model = GPOEnsemble([m.model.network(0) for m in members])
    model.batched = True
    shape = members[0].static_shape(2)
    generators = [torch.Generator().manual_seed(s) for s in range(2)]
    for _ in range(20):
        parts = [m.sample_parts(g) for m, g in zip(members, generators, strict=True)]
        results = []
        for padded in (None, shape):
            batch = make_batch(parts, CPU, padded)
            model.zero_grad()
            p, log_std = members[0].run_model(model, batch)
            nll = gaussian_nll(p, log_std, batch.tgt_y) * batch.target_weight
            losses = torch.zeros(2).index_add(0, batch.target_member, nll) / batch.target_counts
            losses.sum().backward()
            results.append((losses.detach(), [param.grad.clone() for param in model.parameters()]))
        (losses, grads), (padded_losses, padded_grads) = results
        torch.testing.assert_close(padded_losses, losses, rtol=1e-5, atol=1e-6)
        for grad, padded_grad in zip(grads, padded_grads, strict=True):
            torch.testing.assert_close(padded_grad, grad, rtol=1e-4, atol=1e-6)
    assert batch.tgt_y.shape == (shape.n_flat,) and batch.distinct.shape == (shape.n_distinct,)
    too_small: StaticShape = dataclasses.replace(shape, width=5)
    with pytest.raises(ValueError, match="width = .*, over its static shape's 5"):
        make_batch(parts, CPU, too_small)


def test_a_compiled_training_run_equals_the_eager_one(tmp_path):
    """`compile: true` (torch.compile, batches padded to one static shape; on CUDA also CUDA graphs) trains
    the same model as the eager batched layout, up to float rounding."""
    from gpo_bench.methods.gpo import GPO

    histories = []
    for compiled in (False, True):
        method = GPO(dict(TINY, max_steps=20, compile=compiled), synthetic_setup(tmp_path / str(compiled), 0))
        method.model.batched = True
        histories.append(method.fit()["history"])
    for (step, loss, score), (compiled_step, compiled_loss, compiled_score) in zip(*histories, strict=True):
        assert compiled_step == step
        assert compiled_loss == pytest.approx(loss, rel=1e-5) and compiled_score == pytest.approx(score, abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_training_step_never_waits_for_the_device(tmp_path):
    """Three seeds together in the CUDA layout: after a warm-up step, training steps neither read values back
    nor copy from pageable memory (torch's sync debug mode turns any synchronisation into an error)."""
    import dataclasses

    from gpo_bench.methods.gpo import GPO, train_step

    members = [
        GPO(TINY, dataclasses.replace(synthetic_setup(tmp_path / f"seed{s}", s), device="cuda")) for s in range(3)
    ]
    model = GPOEnsemble([m.model.network(0) for m in members]).cuda()
    model.batched = True
    optimizer = torch.optim.Adam(model.parameters(), lr=TINY["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    generators = [torch.Generator().manual_seed(s) for s in range(3)]
    train_step(members, model, generators, optimizer, scheduler)  # first-time allocations may synchronise
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            losses = train_step(members, model, generators, optimizer, scheduler)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(losses).all()


def test_seeds_trained_in_processes_equal_seeds_trained_alone(tmp_path):
    """On the CPU fit_seeds trains each seed in its own process (one thread each on this machine): the
    same history, best step and predictions as training that seed alone here with as many threads."""
    from gpo_bench.methods.gpo import GPO
    from gpo_bench.protocol import draw_episode
    from gpo_bench.workers import usable_cores

    def predictions(method):
        episodes = [draw_episode(method.setup.task, g, 5, method.setup.seed) for g in method.setup.split.test]
        return np.concatenate([np.concatenate(p) for p in method.predict(episodes)])

    settings = dict(TINY, patience=1, max_steps=40)
    seeds = [0, 1, 2]
    together = GPO.fit_seeds(settings, [synthetic_setup(tmp_path / f"together{seed}", seed) for seed in seeds])
    threads = together[0][1]["threads"]
    assert threads == max(1, usable_cores() // len(seeds))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed, (method, fit) in zip(seeds, together, strict=True):
            alone = GPO(settings, synthetic_setup(tmp_path / f"alone{seed}", seed))
            alone_fit = alone.fit()
            assert fit["history"] == alone_fit["history"] and fit["best_step"] == alone_fit["best_step"]
            np.testing.assert_array_equal(predictions(method), predictions(alone))
            assert (tmp_path / f"together{seed}" / "run" / "checkpoint.pt").exists()
    finally:
        torch.set_num_threads(before)
    assert not np.allclose(predictions(together[0][0]), predictions(together[1][0]), atol=1e-3)


def test_interrupted_seeds_in_processes_stop_at_once_and_resume(tmp_path):
    """SIGINT to a `run` whose seeds train in processes (as `kill -INT`, `timeout -s INT` send it: to
    the parent only): exit 130 within seconds, no worker left behind; `--resume` continues every seed
    from its own checkpoint and finishes."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    tiny = dict(d_model=16, layers=1, heads=2, d_ff=16, mlp_depth=2, max_steps=3000, eval_every=10, patience="null")
    settings = [f"--set={k}={v}" for k, v in tiny.items()]
    argv = [sys.executable, "-m", "gpo_bench", "run", "--task", "synthetic", "--method", "gpo", "--encoder", "bow"]
    argv += ["--shots", "5", "--output-dir", str(tmp_path), *settings]
    env = dict(os.environ, GPO_BENCH_CACHE=str(tmp_path / "cache"))
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    checkpoints = []
    deadline = time.monotonic() + 120
    while len(checkpoints) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
        checkpoints = list(tmp_path.glob("runs/*/seed*/checkpoint.pt"))
    assert len(checkpoints) == 3, "the three seeds did not all write a checkpoint within 2 minutes"
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) >= 3  # the workers (and the progress queue's manager)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=30)[1]
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted; rerun the same command to resume" in stderr

    def alive(pid: str) -> bool:  # a zombie (exited, not yet reaped) does not count
        try:
            return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0]
        except (OSError, IndexError):
            return False

    deadline = time.monotonic() + 5  # workers notice their parent's exit within half a second
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [(pid, Path(f"/proc/{pid}/cmdline").read_text()[:80]) for pid in children if alive(pid)]
    assert not survivors, f"processes outlived an interrupted run: {survivors}"

    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for seed in (0, 1, 2):
        assert f"seed{seed}/checkpoint.pt at step" in resumed.stderr


@pytest.mark.slow
@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no AVX-512 BF16 / AMX")
def test_bf16_autocast_on_cpu_stays_within_the_seeds_spread(tmp_path):
    """bf16 is off by default; where it is used, its test alignment (mean over 3 seeds, trained
    together) must differ from float32's by no more than float32's spread across seeds."""
    import json

    from gpo_bench.metrics import item_score
    from gpo_bench.runner import RunSpec, execute

    def per_seed(bf16):
        overrides = dict(layers=2, lr=1e-3, max_steps=600, eval_every=100, patience=None, bf16=bf16)
        spec = RunSpec("synthetic", "gpo", encoder="bow", shots=(10,), seeds=(0, 1, 2), overrides=overrides)
        result = execute(spec, None, tmp_path, device="cpu")
        scores = {}
        for line in (tmp_path / "runs" / result["run_id"] / "predictions.jsonl").read_text().splitlines():
            row = json.loads(line)
            scores.setdefault(row["seed"], {}).setdefault(row["group"], []).append(
                item_score("alignment", row["pred"], row["target"], row["ordinal"])
            )
        return [np.mean([np.mean(v) for v in groups.values()]) for _, groups in sorted(scores.items())]

    full, half = per_seed(False), per_seed(True)
    spread = max(full) - min(full)
    assert abs(np.mean(half) - np.mean(full)) <= spread, (full, half)
