"""The CPU batch plan (batching.backend_plan): little padding on mixed lengths, few shapes,
every row once; buckets merged where a compile costs more than their padding; and
extraction's features do not depend on the plan."""

from __future__ import annotations

import numpy as np
import pytest

from spin_jax import batching, runner

MIXED = {  # lengths of mixed sets, as texts' token counts come
    "uniform": np.random.default_rng(0).integers(5, 300, 2000),
    "lognormal": np.clip(np.random.default_rng(1).lognormal(3.5, 0.7, 3000), 1, 512).astype(int),
    "reviews-like": np.random.default_rng(2).integers(3, 61, 600),
    "joined": np.random.default_rng(3).integers(50, 162, 150),
}


def padding(plan, lengths) -> float:
    return 1 - np.minimum(lengths, 512).sum() / sum(blen * size for _, blen, size in plan)


@pytest.mark.parametrize("name", list(MIXED))
@pytest.mark.parametrize("multiple", [1, 2])
def test_cpu_plan_pads_little_in_few_shapes(name, multiple):
    lengths = MIXED[name]
    plan = batching.backend_plan("cpu", lengths, 512, batching.TOKEN_BUDGET, multiple)
    rows = np.concatenate([r for r, _, _ in plan])
    np.testing.assert_array_equal(np.sort(rows), np.arange(len(lengths)))
    old = batching.backend_plan("gpu", lengths, 512, batching.TOKEN_BUDGET, multiple)
    assert padding(plan, lengths) < 0.25
    assert padding(plan, lengths) < 0.75 * padding(old, lengths)
    shapes = {(size, blen) for _, blen, size in plan}
    # One batch size per padded length, at most 2 + 2x the accelerators' count of shapes.
    assert len(shapes) == len({blen for _, blen in shapes})
    assert len(shapes) <= min(2 + 2 * len({(s, b) for _, b, s in old}), 14)
    for r, blen, size in plan:
        assert len(r) <= size <= max(batching.CPU_ROWS, multiple) and size % multiple == 0
        assert (np.minimum(lengths[r], 512) <= blen).all()
        assert size * blen <= max(batching.CPU_TOKEN_BUDGET, multiple * blen)


def test_cpu_plan_keeps_a_smaller_token_budget():
    lengths = MIXED["uniform"]
    plan = batching.backend_plan("cpu", lengths, 512, 1024)
    assert all(size * blen <= 1024 for _, blen, size in plan)


def brute_force_buckets(lengths, grid, compile_cost):
    """The cheapest subset of the reached buckets, by trying every one (few buckets)."""
    from itertools import combinations

    reached = sorted({batching.bucket_length(int(n), 10**6, grid) for n in lengths})
    best = None
    for r in range(1, len(reached) + 1):
        for subset in combinations(reached[:-1], r - 1):
            kept = (*subset, reached[-1])
            pad = sum(batching.bucket_length(int(n), 10**6, kept) for n in lengths)
            cost = pad + compile_cost * len(kept)
            if best is None or cost < best[0]:
                best = (cost, kept)
    return best[1]


@pytest.mark.parametrize("compile_cost", [0.0, 300.0, 3000.0, 30000.0, 1e9])
def test_cheapest_buckets_are_the_best_subset(compile_cost):
    lengths = MIXED["uniform"][:400]
    grid = batching.BUCKETS
    kept = batching.cheapest_buckets(lengths, 512, grid, compile_cost)
    assert kept == brute_force_buckets(lengths, grid, compile_cost)
    reached = {batching.bucket_length(int(n), 512, grid) for n in lengths}
    if compile_cost == 0:
        assert set(kept) == reached  # free compiles: the grid as it was
    if compile_cost == 1e9:
        assert kept == (max(reached),)  # compiles dear: one bucket, the longest


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_a_compile_cost_trades_shapes_for_padding(backend):
    """A small model on a GPU: fewer shapes, and a plan no costlier in padding + compiles."""
    lengths = MIXED["lognormal"]
    free = batching.backend_plan(backend, lengths, 512, batching.TOKEN_BUDGET)
    for cost in (1e3, 1e5, 1e7):
        plan = batching.backend_plan(backend, lengths, 512, batching.TOKEN_BUDGET, 1, cost)
        rows = np.concatenate([r for r, _, _ in plan])
        np.testing.assert_array_equal(np.sort(rows), np.arange(len(lengths)))
        assert all((np.minimum(lengths[r], 512) <= blen).all() for r, blen, _ in plan)
        shapes = {(b, s) for _, b, s in plan}
        assert len(shapes) <= len({(b, s) for _, b, s in free})
        assert batching.plan_cost(plan, cost) <= batching.plan_cost(free, cost)
    assert len(shapes) == 1  # at 1e7 tokens a compile, one shape serves every row
    assert batching.backend_plan(backend, np.zeros(0, int), 512, 1024, 1, 1e7) == []


def test_known_shapes_are_free():
    """A later split of shorter rows pads to a length already compiled, at its full size."""
    long, short = MIXED["uniform"], MIXED["reviews-like"]
    cost = 1e6
    first = batching.backend_plan("gpu", long, 512, batching.TOKEN_BUDGET, 1, cost)
    known = frozenset((b, s) for _, b, s in first)
    alone = batching.backend_plan("gpu", short, 512, batching.TOKEN_BUDGET, 1, cost)
    after = batching.backend_plan("gpu", short, 512, batching.TOKEN_BUDGET, 1, cost, known)
    assert {(b, s) for _, b, s in alone} - known  # alone it compiles a shape of its own
    assert {(b, s) for _, b, s in after} <= known  # after the long split: none
    assert batching.plan_cost(after, cost, known) <= batching.plan_cost(alone, cost, known)


def test_compile_tokens_follow_the_model_size():
    small, large = (batching.compile_tokens("gpu", f) for f in (4.5e7, 3e9))  # MiniLM, GPT2-XL
    assert small == pytest.approx(large * 3e9 / 4.5e7)
    assert batching.compile_tokens("gpu", 3e9) < 10 * batching.TOKEN_BUDGET * 10
    assert batching.compile_tokens("unknown", 4.5e7) == 0.0


def test_cpu_buckets_are_close():
    grid = np.array(batching.CPU_BUCKETS)
    assert (np.diff(grid) > 0).all() and grid[0] == 16 and grid[-1] == batching.BUCKETS[-1]
    assert (grid[1:] / grid[:-1] <= 2).all() and (grid[7:] / grid[6:-1] <= 1.25).all()


@pytest.mark.torch
def test_features_do_not_depend_on_the_plan(folder, monkeypatch):
    """Rows padded to other lengths, in other batches: the same pooled features."""
    import spin_jax
    from tests.test_extract import make_texts

    model = spin_jax.load_model(str(folder))
    texts = make_texts(60, seed=5, max_words=60)
    opts = dict(max_length=64, dtype="float32", progress=False, allow_empty=True)
    opts |= dict(placement="host", token_budget=512)
    plans = []
    real = batching.backend_plan

    def spy(backend):  # each backend's grid, without the compile cost (a[4]): many shapes
        return lambda _backend, *a: plans.append(real(backend, *a[:4])) or plans[-1]

    feats = {}
    for backend in ("cpu", "gpu"):
        monkeypatch.setattr(runner, "backend_plan", spy(backend))
        feats[backend] = spin_jax.extract(model, texts, **opts)
    assert {(b, s) for _, b, s in plans[0]} != {(b, s) for _, b, s in plans[1]}
    for name in ("hidden", "ffn"):
        a, b = (np.asarray(feats[k].read(name)) for k in ("cpu", "gpu"))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
