"""The CPU batch plan (batching.backend_plan): little padding on mixed lengths, few shapes,
every row once; and extraction's features do not depend on the plan."""

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

    def spy(backend):
        return lambda _backend, *a: plans.append(real(backend, *a)) or plans[-1]

    feats = {}
    for backend in ("cpu", "gpu"):
        monkeypatch.setattr(runner, "backend_plan", spy(backend))
        feats[backend] = spin_jax.extract(model, texts, **opts)
    assert {(b, s) for _, b, s in plans[0]} != {(b, s) for _, b, s in plans[1]}
    for name in ("hidden", "ffn"):
        a, b = (np.asarray(feats[k].read(name)) for k in ("cpu", "gpu"))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
