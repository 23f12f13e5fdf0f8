"""Tests of the L1 logistic probe solver: parity with scikit-learn, invariances, exact zeros."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from spin_jax import integration, lanes, probes, solver

jax.config.update("jax_default_matmul_precision", "highest")

# Small sizes are distinct primes, so a transposed axis cannot pass a shape check by accident.
# Most tests share them and a path of R_SMALL lams, so they share one compiled program.
N_SMALL, F_SMALL, R_SMALL = 503, 37, 4


def make_problem(seed, n, f, n_classes, informative=(3, 7), scale=2.0, correlated=False):
    """Standardised fp32 X [n, f] and labels y [n] drawn from a planted multinomial model."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, f))
    if correlated:  # a low-rank component, like transformer activations
        X += 2.0 * rng.standard_normal((n, 5)) @ rng.standard_normal((5, f))
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    coef = np.zeros((f, n_classes))
    for i, j in enumerate(informative):  # the i-th informative feature favours class i % C
        coef[j, i % n_classes] = scale
    y = np.argmax(X @ coef + rng.gumbel(size=(n, n_classes)), axis=1).astype(np.int32)
    return X, y


def objective_np(X, y, W, b, lam):
    """The objective of probes.py in float64 numpy: mean loss + lam * ||W||_1 (W [F, K])."""
    X, W, b = (np.asarray(a, np.float64) for a in (X, W, b))
    z = X @ W + b
    if W.shape[1] == 1:
        loss = np.logaddexp(0.0, z[:, 0]) - y * z[:, 0]
    else:
        zmax = z.max(1)
        loss = zmax + np.log(np.exp(z - zmax[:, None]).sum(1)) - z[np.arange(len(y)), y]
    return loss.mean() + lam * np.abs(W).sum()


def sklearn_l1(C, tol, max_iter):
    """L1 saga LogisticRegression; scikit-learn 1.8 replaced penalty="l1" by l1_ratio=1."""
    version = tuple(int(p) for p in sklearn.__version__.split(".")[:2])
    kind = {"l1_ratio": 1.0} if version >= (1, 8) else {"penalty": "l1"}
    return LogisticRegression(solver="saga", C=C, tol=tol, max_iter=max_iter, **kind)


@pytest.mark.parametrize("warm_start", [False, True])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_objective_matches_sklearn(n_classes, warm_start):
    n, f = 2000, 500
    X, y = make_problem(0, n, f, n_classes, informative=tuple(range(0, 40, 4)), scale=0.7)
    lams = probes.default_lams(jnp.asarray(X), jnp.asarray(y), n_classes, num=8, ratio=1e-2)
    lams = lams[:4]  # reach the target lam along a path, as the library is used
    lam = float(lams[-1])
    fit = probes.fit_path(
        jnp.asarray(X), jnp.asarray(y), n_classes, lams, tol=1e-7, warm_start=warm_start
    )
    assert bool(fit.converged[-1])
    ours = objective_np(X, y, fit.weights[-1], fit.intercept[-1], lam)

    # saga's own stopping rule stalls at fp rounding below tol ~1e-7 on the multinomial problem.
    sk = sklearn_l1(C=1.0 / (lam * n), tol=1e-6, max_iter=5000).fit(X, y)
    theirs = objective_np(X, y, sk.coef_.T, sk.intercept_, lam)

    nnz = int(np.sum(np.asarray(fit.weights[-1]) != 0))
    assert 0 < nnz < f * n_classes // 4, nnz  # a moderately sparse solution
    assert ours <= theirs * (1 + 1e-4)
    assert abs(ours - theirs) / theirs <= 1e-4


@pytest.mark.parametrize("shared_y", [True, False])
def test_fit_many_equals_loop(shared_y):
    G, n_classes = 3, 3
    # Well-conditioned problems (N >> F, moderate lams) solved to tol 1e-7: there the iterate
    # is within ~5e-7 of the optimum, so the loop and the vmapped program, whose matmuls round
    # differently on a GPU, agree tightly. (At the default 1e-6 each stops ~4e-6 short of it,
    # at iterations that depend on that rounding.)
    problems = [make_problem(s, N_SMALL, F_SMALL, n_classes, scale=1.0) for s in range(G)]
    X = jnp.stack([jnp.asarray(p[0]) for p in problems])
    y = jnp.asarray(problems[0][1]) if shared_y else jnp.stack([p[1] for p in problems])
    featmask = jnp.asarray(np.random.default_rng(5).random((G, F_SMALL)) > 0.2)
    y0 = jnp.asarray(problems[0][1])
    lams = probes.default_lams(X[0], y0, n_classes, num=R_SMALL, ratio=0.05)

    many = probes.fit_many(X, y, n_classes, lams, featmask=featmask, tol=1e-7)
    assert many.weights.shape == (G, R_SMALL, F_SMALL, n_classes)
    # The iterations are compared at a tol far above fp32's resolution: at 1e-7 the relative
    # change is as small as the matmuls' rounding (fp32 eps 1.2e-7), so which iteration first
    # meets it is that rounding's (62 against 66 once on CPU, jax 0.10.2).
    coarse = probes.fit_many(X, y, n_classes, lams, featmask=featmask, tol=1e-5)
    for g in range(G):
        y_g = y if shared_y else y[g]
        one = probes.fit_path(X[g], y_g, n_classes, lams, featmask=featmask[g], tol=1e-7)
        np.testing.assert_allclose(many.weights[g], one.weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(many.intercept[g], one.intercept, rtol=1e-5, atol=1e-6)
        assert np.array_equal(many.converged[g], one.converged)
        one = probes.fit_path(X[g], y_g, n_classes, lams, featmask=featmask[g], tol=1e-5)
        assert np.all(np.abs(coarse.n_iter[g] - one.n_iter) <= 1)  # a rounding tie at tol


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("max_lanes", [None, 3])
def test_fit_masks_equals_fit_path_per_mask(n_classes, max_lanes):
    """Lanes that converge leave the batch between rounds; the rest go on from their state.
    max_lanes=3 steps 3 of the 20 lanes at a time (and pads the last batch with repeats)."""
    X, y = make_problem(4, N_SMALL, F_SMALL, n_classes, scale=1.0)
    X, y = jnp.asarray(X), jnp.asarray(y)
    masks = jnp.asarray(np.random.default_rng(6).random((5, F_SMALL)) > 0.4, jnp.float32)
    lams = probes.default_lams(X, y, n_classes, num=R_SMALL, ratio=0.05)
    fit = lanes.fit_masks(X, y, n_classes, lams, masks, max_lanes=max_lanes)
    K = probes.n_columns(n_classes)
    assert fit.weights.shape == (5, R_SMALL, F_SMALL, K) and fit.intercept.shape == (5, R_SMALL, K)
    n_iter = np.asarray(fit.n_iter)
    assert n_iter.max() > 2 * lanes.FIRST_ROUND and n_iter.min() < lanes.FIRST_ROUND  # rounds
    for g in range(5):
        one = probes.fit_path(X, y, n_classes, lams, featmask=masks[g])
        np.testing.assert_allclose(fit.weights[g], one.weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fit.intercept[g], one.intercept, rtol=1e-5, atol=1e-6)
        assert np.all(np.abs(n_iter[g] - one.n_iter) <= 1)  # a rounding tie at tol
        np.testing.assert_array_equal(fit.converged[g], one.converged)
        assert np.all(np.asarray(fit.weights[g])[:, np.asarray(masks[g]) == 0] == 0.0)


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("smooth", [None, solver.smooth("adam", 1e-2)])
@pytest.mark.parametrize("max_lanes", [None, 3, "chunks"])
def test_fit_masks_on_prefix_widths_equals_full_width(smooth, max_lanes, narrow, monkeypatch):
    """Masks zero beyond their first widths[g] columns (integration's, columns sorted by
    layer) are stepped on that prefix alone, and solve the same problems: fit_path's.
    "chunks": chunks of 4 and 2 lanes (both sizes at width 128, the small one alone above).
    narrow: on copies of each width's prefix, with states of their own."""
    if max_lanes == "chunks":
        if smooth is not None:
            # adam's unconverged solves (300 iterations) follow the products' rounding,
            # which depends on how many lanes share them: fit_path itself gives intercepts
            # 4.3e-6 apart (111 against 126 iterations) for one lam alone and for three.
            pytest.skip("chunks change the lanes per product: adam at max_iter follows rounding")
        monkeypatch.setattr(lanes, "chunk_sizes", lambda width, *_: (max(2, 512 // width), 2))
        max_lanes = None
    # More rows than columns, so the solution is pinned down: with N = 200 < F the problems
    # were ill-posed and a GPU's products at another width (the prefix) ended up to 7e-6
    # apart, the solver's rounding and not the prefix path (tests/test_probes.py on an H200).
    F = 300
    X, y = make_problem(7, 1500, F, 2, scale=1.0)
    X, y = jnp.asarray(X), jnp.asarray(y)
    widths = np.array([128, 300, 128, 256, 300])
    rng = np.random.default_rng(8)
    masks = (rng.random((5, F)) > 0.3) & (np.arange(F) < [[40], [300], [128], [200], [250]])
    masks = jnp.asarray(masks, jnp.float32)
    lams = probes.default_lams(X, y, 2, num=3, ratio=0.05)
    solve = dict(max_lanes=max_lanes, smooth=smooth, max_iter=300)
    fit = lanes.fit_masks(X, y, 2, lams, masks, widths=widths, narrow=narrow, **solve)
    for g in range(5):
        one = probes.fit_path(X, y, 2, lams, featmask=masks[g], max_iter=300, smooth=smooth)
        np.testing.assert_allclose(fit.weights[g], one.weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fit.intercept[g], one.intercept, rtol=1e-5, atol=1e-6)
        assert np.all(np.asarray(fit.weights[g])[:, np.asarray(masks[g]) == 0] == 0.0)


def test_chunks_cover_every_lane_once_in_two_sizes():
    for n in range(1, 200):
        for big in (1, 4, 16, 64):
            small = min(16, big)
            calls = lanes.chunks(n, big, small)
            starts = [s for s, _ in calls]
            sizes = {size for _, size in calls}
            assert starts == sorted(starts) and starts[0] == 0
            ends = [min(s + size, n) for s, size in calls]
            assert starts[1:] == ends[:-1] and ends[-1] == n  # contiguous, every lane once
            assert sizes <= {big, small}
            slots = sum(size for _, size in calls)
            assert slots < n + big  # never a whole chunk of padding
    assert lanes.chunks(70, 64, 16) == [(0, 64), (64, 16)]
    assert lanes.chunks(60, 64, 16) == [(0, 64)]  # 4 small chunks would be as many slots


def test_chunk_sizes_by_backend(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert lanes.chunk_sizes(4096, 1000, 1000, 500) == (16, 16)
    assert lanes.chunk_sizes(128, 1000, 1000, 500) == (256, 16)
    assert lanes.chunk_sizes(128, 1000, 100, 500) == (100, 16)  # memory caps the big one
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    # Big: a power of two within memory; small: enough products to outweigh the launches.
    assert lanes.chunk_sizes(128, 2450, 4398, 20000) == (4096, 1024)
    assert lanes.chunk_sizes(32768, 2450, 833, 20000) == (512, 64)
    assert lanes.chunk_sizes(128, 30, 4398, 20000) == (32, 32)  # no bigger than the lanes


def test_transposed_gradient_equals_the_plain_one():
    """On CPU the solver's X^T r reads a transposed copy (`probes.transposed`); elsewhere
    there is none. Either way the gradient is the same."""
    X, y = make_problem(3, N_SMALL, F_SMALL, 3, scale=1.0)
    X = jnp.asarray(X)
    T = probes._targets(jnp.asarray(y), 3)
    m = jnp.ones(N_SMALL) / N_SMALL
    theta = jnp.asarray(np.random.default_rng(2).normal(size=(F_SMALL + 1, 3)), jnp.float32)
    XT = probes.transposed(X)
    assert (XT is None) == (jax.default_backend() != "cpu")
    X64, th64 = np.asarray(X, np.float64), np.asarray(theta, np.float64)
    z = X64 @ th64[:-1] + th64[-1]
    p = np.exp(z - z.max(1, keepdims=True))
    r = (p / p.sum(1, keepdims=True) - np.asarray(T)) / N_SMALL
    want = np.concatenate([X64.T @ r, r.sum(0, keepdims=True)])
    for got in (probes._smooth_grad(X, T, m, theta, XT), probes._smooth_grad(X, T, m, theta)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_a_path_makes_one_transposed_copy_of_x():
    """The Lipschitz constant's power iteration and the solver's steps share one copy of
    X.T (on CPU; elsewhere there is none): a second would be X's size again."""
    X, y = make_problem(3, N_SMALL, F_SMALL, 2)
    jitted = jax.jit(probes.fit_path.__wrapped__, static_argnames=("n_classes", "max_iter"))
    text = jitted.lower(jnp.asarray(X), jnp.asarray(y), 2, jnp.asarray([0.1, 0.01])).as_text()
    assert text.count("optimization_barrier") == (jax.default_backend() == "cpu")


def test_prefix_widths():
    masks = np.zeros((3, 600), bool)
    masks[0, :5], masks[1, [3, 300]] = True, True
    widths = lambda m, cap=None: integration.prefix_widths(  # noqa: E731
        integration.mask_extents(m), m.shape[1] if cap is None else cap
    )
    np.testing.assert_array_equal(widths(masks), [128, 512, 128])
    np.testing.assert_array_equal(widths(masks[:, :400]), [128, 400, 128])
    masks[2, 199] = True  # 200 columns: the next power of two
    np.testing.assert_array_equal(widths(masks), [128, 512, 256])
    # A group's own width (it shares a wider one): no prefix past it.
    np.testing.assert_array_equal(widths(masks, 310), [128, 310, 256])


def test_masks_and_their_extents_from_the_columns_equal_the_masks_built_on_the_host():
    """integrate builds its masks on the device and their prefix widths from each column's
    rank and layer (`_masks`, `column_extents`): the host's masks, and their extents, in
    the columns' own order and in `column_order`, padding and layers past the last k
    included."""
    from spin_jax.columns import Columns

    rng = np.random.default_rng(0)
    E, ks, M, width = 3, np.arange(0, 6), 150, 256
    layer = np.sort(rng.integers(1, 7, M))  # k 0 keeps none; layer 6, past the last k, none
    cand = Columns(*(np.zeros(M, np.int64),) * 2, layer, np.arange(M), rng.integers(0, E, M))
    want = integration.integration_masks(cand, E, ks, width).reshape(E * len(ks), -1)
    for order in (None, integration.column_order(cand, width, E)):
        rank, lay = integration.mask_columns(cand, width, E, order)
        host = want if order is None else want[:, order]
        np.testing.assert_array_equal(
            integration.column_extents(rank, lay, E, ks), integration.mask_extents(host)
        )
        args = jax.device_put((rank, lay, np.arange(E, dtype=np.int32), ks.astype(np.int32)))
        got = np.asarray(integration._masks(*args, rows=len(host) + 2))
        np.testing.assert_array_equal(got, np.concatenate([host, host[-1:], host[-1:]]))
    assert integration.mask_extents(want).min() == 0 < integration.mask_extents(want).max()


def test_fit_masks_without_problems_and_bad_shrink():
    X, y = make_problem(4, N_SMALL, F_SMALL, 2)
    X, y = jnp.asarray(X), jnp.asarray(y)
    fit = lanes.fit_masks(X, y, 2, jnp.asarray([0.1]), jnp.zeros((0, F_SMALL)))
    assert fit.weights.shape == (0, 1, F_SMALL, 1) and fit.n_iter.shape == (0, 1)
    with pytest.raises(ValueError, match="shrink"):
        lanes.fit_masks(X, y, 2, jnp.asarray([0.1]), jnp.ones((1, F_SMALL)), shrink=1)


def test_fit_masks_stops_at_max_iter():
    X, y = make_problem(4, N_SMALL, F_SMALL, 3, scale=1.0)
    masks = jnp.ones((2, F_SMALL), jnp.float32)
    lams = jnp.asarray([1e-4, 1e-5])
    fit = lanes.fit_masks(jnp.asarray(X), jnp.asarray(y), 3, lams, masks, max_iter=13, tol=0.0)
    np.testing.assert_array_equal(fit.n_iter, 13)  # not a round boundary (8, 16)
    assert not np.asarray(fit.converged).any()


def test_fit_many_standardized_equals_manual():
    rng = np.random.default_rng(3)
    X = rng.normal(5.0, 3.0, (2, N_SMALL, F_SMALL)).astype(np.float32)
    y = (X[0, :, 3] > 5.0).astype(np.int32)
    lams = jnp.asarray([0.1, 0.05, 0.02, 0.01])
    fit, mean, std = probes.fit_many_standardized(jnp.asarray(X), jnp.asarray(y), 2, lams)
    for g in range(2):
        m, s = probes.standardize_stats(jnp.asarray(X[g]))
        np.testing.assert_allclose(mean[g], m, rtol=1e-6)
        np.testing.assert_allclose(std[g], s, rtol=1e-6)
        one = probes.fit_path(probes.standardize(jnp.asarray(X[g]), m, s), y, 2, lams)
        np.testing.assert_allclose(fit.weights[g], one.weights, rtol=1e-5, atol=1e-6)


def test_masked_features_are_exactly_zero():
    X, y = make_problem(1, N_SMALL, F_SMALL, 3)
    featmask = np.ones(F_SMALL, bool)
    featmask[[3, 5, 11]] = False  # 3 is informative: the solver must still keep it at 0
    lams = jnp.asarray([0.05, 0.01, 1e-3, 1e-4])
    fit = probes.fit_path(jnp.asarray(X), jnp.asarray(y), 3, lams, featmask=jnp.asarray(featmask))
    W = np.asarray(fit.weights)
    assert np.all(W[:, ~featmask] == 0.0)
    # Small lam: every kept feature is used (by some class; softmax leaves some entries 0).
    assert np.all(np.any(W[-1, featmask] != 0.0, axis=-1))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_lam_max_gives_exact_zeros(n_classes):
    X, y = make_problem(2, N_SMALL, F_SMALL, n_classes)
    lams = probes.default_lams(jnp.asarray(X), jnp.asarray(y), n_classes, num=R_SMALL)
    assert np.all(np.diff(np.asarray(lams)) < 0)
    fit = probes.fit_path(jnp.asarray(X), jnp.asarray(y), n_classes, lams)
    W = np.asarray(fit.weights)
    assert np.all(W[0] == 0.0)
    assert np.any(W[1] != 0.0)  # lam_max is tight: a bit below it, weights appear
    huge = probes.fit_path(jnp.asarray(X), jnp.asarray(y), n_classes, lams * 1e3)
    assert np.all(np.asarray(huge.weights) == 0.0)
    # With zero weights the intercept is the class log-prior (up to a shift for softmax).
    prior = np.bincount(y, minlength=n_classes) / len(y)
    proba = probes.predict_proba(jnp.asarray(X[:1]), fit.weights[0], fit.intercept[0])
    np.testing.assert_allclose(proba[0], prior, rtol=1e-4)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_path_end_equals_cold_solve(n_classes):
    X, y = make_problem(3, N_SMALL, F_SMALL, n_classes, correlated=True)
    lams = probes.default_lams(jnp.asarray(X), jnp.asarray(y), n_classes, num=R_SMALL, ratio=1e-2)
    args = (jnp.asarray(X), jnp.asarray(y), n_classes)
    path = probes.fit_path(*args, lams, tol=1e-7, warm_start=True)
    # A "path" that repeats the last lam: its first entry is a cold solve from zero weights.
    same = jnp.full_like(lams, lams[-1])
    cold = probes.fit_path(*args, same, tol=1e-7, warm_start=True)
    lam = float(lams[-1])
    obj_path = objective_np(X, y, path.weights[-1], path.intercept[-1], lam)
    obj_cold = objective_np(X, y, cold.weights[0], cold.intercept[0], lam)
    assert abs(obj_path - obj_cold) <= 1e-6 * obj_cold
    np.testing.assert_allclose(path.weights[-1], cold.weights[0], atol=2e-3)
    # The joint solve (every lam at once, from zero) reaches the path's optimum at every lam.
    joint = probes.fit_path(*args, lams, tol=1e-7)
    for r, lam in enumerate(np.asarray(lams)):
        obj_path = objective_np(X, y, path.weights[r], path.intercept[r], lam)
        obj_joint = objective_np(X, y, joint.weights[r], joint.intercept[r], lam)
        assert abs(obj_path - obj_joint) <= 1e-6 * obj_path


@pytest.mark.parametrize("n_classes", [2, 3])
def test_planted_features_have_largest_weights(n_classes):
    X, y = make_problem(4, N_SMALL, F_SMALL, n_classes)
    lams = probes.default_lams(jnp.asarray(X), jnp.asarray(y), n_classes, num=R_SMALL, ratio=1e-2)
    fit = probes.fit_path(jnp.asarray(X), jnp.asarray(y), n_classes, lams)
    strength = np.abs(np.asarray(fit.weights[-1])).max(axis=1)
    assert set(np.argsort(strength)[-2:]) == {3, 7}


@pytest.mark.parametrize("n_classes", [2, 3])
def test_padded_rows_do_not_change_the_solution(n_classes):
    X, y = make_problem(5, N_SMALL, F_SMALL, n_classes)
    pad = 17
    garbage = np.full((pad, F_SMALL), np.nan, np.float32)
    garbage[::2] = 1e30
    Xp = np.concatenate([X, garbage])
    yp = np.concatenate([y, np.full(pad, n_classes - 1, np.int32)])
    rowmask = np.arange(len(yp)) < len(y)
    lams = jnp.asarray([0.1, 0.05, 0.02, 0.01])

    ref = probes.fit_path(jnp.asarray(X), jnp.asarray(y), n_classes, lams)
    padded = probes.fit_path(
        jnp.asarray(Xp), jnp.asarray(yp), n_classes, lams, rowmask=jnp.asarray(rowmask)
    )
    np.testing.assert_allclose(padded.weights, ref.weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(padded.intercept, ref.intercept, rtol=1e-5, atol=1e-6)
    mean, std = probes.standardize_stats(jnp.asarray(Xp), jnp.asarray(rowmask))
    np.testing.assert_allclose(mean, X.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, X.std(0), rtol=1e-5)


def test_traces_once_per_shape():
    traces = []

    def counted(*args, **kwargs):
        traces.append(1)
        return probes.fit_path.__wrapped__(*args, **kwargs)

    fit = jax.jit(counted, static_argnames=("n_classes", "max_iter"))
    cached = probes.fit_many._cache_size()
    for seed in range(3):  # new values of X, y, lams and tol, same shapes
        X, y = make_problem(seed, N_SMALL, F_SMALL, 3)
        lams = jnp.asarray([0.1, 0.05, 0.02, 0.01]) * (seed + 1)
        jax.block_until_ready(fit(X, y, n_classes=3, lams=lams, tol=10.0 ** -(seed + 5)))
        jax.block_until_ready(probes.fit_many(X[None], y, 3, lams, tol=10.0 ** -(seed + 5)))
    assert len(traces) == 1
    assert probes.fit_many._cache_size() - cached <= 1


def test_standardize_constant_feature_and_bf16():
    X, y = make_problem(6, N_SMALL, F_SMALL, 2)
    X[:, 0] = 3.7  # constant
    mean, std = probes.standardize_stats(jnp.asarray(X))
    Xs = np.asarray(probes.standardize(jnp.asarray(X), mean, std))
    assert np.all(np.isfinite(Xs))
    assert np.all(Xs[:, 0] == 0.0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16bit_products_carry_a_16bit_vector(dtype):
    """X (16-bit) times an fp32 vector: hi + lo parts give ~2^-17 relative error per term
    (the GPU/TPU path of probes._dot, run here on CPU)."""
    rng = np.random.default_rng(3)
    X = jnp.asarray(rng.standard_normal((211, 67)) * 3.0, dtype)
    v = jnp.asarray(rng.standard_normal((67, 2)) * 1e-4, jnp.float32)  # tiny: fp16 range
    r = jnp.asarray(rng.standard_normal((211, 3)) * 1e-5, jnp.float32)
    X64, v64, r64 = (np.asarray(a, np.float64) for a in (X.astype(jnp.float32), v, r))
    for got, want, bound in (
        (probes._split_dot("NF,FK->NK", X, v), X64 @ v64, np.abs(X64) @ np.abs(v64)),
        (probes._split_dot("NF,NK->FK", X, r), X64.T @ r64, np.abs(X64).T @ np.abs(r64)),
    ):
        assert got.dtype == jnp.float32
        assert np.all(np.abs(np.asarray(got, np.float64) - want) <= 2.0**-16 * bound)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_split_high_part_is_cut_by_bits(dtype):
    """The high part is u with the 16-bit dtype's mantissa, cut by masking bits (exact in
    dtype), so no rounding round trip that XLA may elide decides the low part."""
    rng = np.random.default_rng(4)  # normal in fp16 too: |u| in [2**-12, 1]
    u = jnp.asarray(rng.choice([-1, 1], 999) * 2.0 ** rng.uniform(-12, 0, 999), jnp.float32)
    hi = np.asarray(jax.jit(probes._truncate, static_argnums=1)(u, dtype))
    np.testing.assert_array_equal(hi.astype(dtype).astype(np.float32), hi)  # exact in dtype
    assert np.all(np.abs(hi) <= np.abs(np.asarray(u)))  # toward zero
    ulp = np.spacing(np.abs(hi).astype(dtype)).astype(np.float32)
    assert np.all(np.abs(np.asarray(u) - hi) < ulp)
    assert np.count_nonzero(np.asarray(u) - hi) > 900  # the low part carries bits


def test_bf16_features_solve_to_the_same_objective(monkeypatch):
    """A whole solve through the split products of the GPU/TPU path (forced here on CPU)."""
    dot = probes._dot
    monkeypatch.setattr(
        probes,
        "_dot",
        lambda s, X, v: (
            dot(s, X, v) if X.dtype == jnp.float32 else probes._split_dot(s, X, v)
        ),  # fmt: skip
    )
    probes.fit_path.clear_cache()  # trace again with the patched products
    X, y = make_problem(6, N_SMALL, F_SMALL, 2)
    Xb = jnp.asarray(X).astype(jnp.bfloat16)
    Xf = np.asarray(Xb.astype(jnp.float32))  # the same values in fp32
    lams = jnp.asarray([0.1, 0.05, 0.02, 0.01])
    fit_b = probes.fit_path(Xb, jnp.asarray(y), 2, lams, tol=1e-8, max_iter=5000)
    fit_f = probes.fit_path(jnp.asarray(Xf), jnp.asarray(y), 2, lams, tol=1e-8, max_iter=5000)
    assert fit_b.weights.dtype == jnp.float32
    for r, lam in enumerate(np.asarray(lams)):
        ob = objective_np(Xf, y, fit_b.weights[r], fit_b.intercept[r], lam)
        of = objective_np(Xf, y, fit_f.weights[r], fit_f.intercept[r], lam)
        assert abs(ob - of) <= 1e-6 * of
    np.testing.assert_array_equal(fit_b.weights != 0, fit_f.weights != 0)
    probes.fit_path.clear_cache()


def test_unstandardize_gives_same_logits_on_raw_features():
    rng = np.random.default_rng(7)
    X = rng.normal(2.0, 4.0, (N_SMALL, F_SMALL)).astype(np.float32)
    y = (X[:, 3] > 2.0).astype(np.int32)
    mean, std = probes.standardize_stats(jnp.asarray(X))
    Xs = probes.standardize(jnp.asarray(X), mean, std)
    fit = probes.fit_path(Xs, jnp.asarray(y), 2, jnp.asarray([0.1, 0.05, 0.02, 0.01]))
    w_raw, b_raw = probes.unstandardize(fit.weights, fit.intercept, mean, std)
    np.testing.assert_allclose(
        probes.decision(jnp.asarray(X), w_raw, b_raw),
        probes.decision(Xs, fit.weights, fit.intercept),
        rtol=1e-4,
        atol=1e-4,
    )


def test_lipschitz_bounds_the_true_constant():
    X, _ = make_problem(8, N_SMALL, F_SMALL, 2, correlated=True)
    aug = np.concatenate([X, np.ones((N_SMALL, 1), np.float32)], axis=1).astype(np.float64)
    sigma2 = np.linalg.norm(aug, 2) ** 2 / N_SMALL
    for n_classes, curvature in [(2, 0.25), (3, 0.5)]:
        L = float(probes.lipschitz(jnp.asarray(X), None, n_classes))
        assert curvature * sigma2 <= L <= 1.1 * curvature * sigma2


@pytest.mark.parametrize("n_classes", [2, 4])
def test_metrics_match_sklearn(n_classes):
    rng = np.random.default_rng(9)
    y_true = rng.integers(0, n_classes, 101)
    y_pred = np.where(rng.random(101) < 0.6, y_true, rng.integers(0, n_classes, 101))
    y_pred[y_pred == n_classes - 1] = 0  # a class that is never predicted
    acc = probes.accuracy(jnp.asarray(y_true), jnp.asarray(y_pred))
    f1 = probes.macro_f1(jnp.asarray(y_true), jnp.asarray(y_pred), n_classes)
    np.testing.assert_allclose(acc, np.mean(y_true == y_pred), rtol=1e-6)
    np.testing.assert_allclose(f1, f1_score(y_true, y_pred, average="macro"), rtol=1e-6)
    # Batched predictions [R, N] against shared labels [N].
    both = probes.accuracy(jnp.asarray(y_true), jnp.asarray(np.stack([y_pred, y_true])))
    np.testing.assert_allclose(both, [np.mean(y_true == y_pred), 1.0], rtol=1e-6)


def test_predictions_and_c_grid():
    X, y = make_problem(10, N_SMALL, F_SMALL, 3)
    fit = probes.fit_path(jnp.asarray(X), jnp.asarray(y), 3, jnp.asarray([0.1, 0.05, 0.02, 0.01]))
    proba = probes.predict_proba(jnp.asarray(X), fit.weights, fit.intercept)
    assert proba.shape == (R_SMALL, N_SMALL, 3)
    np.testing.assert_allclose(proba.sum(-1), 1.0, rtol=1e-6)
    pred = probes.predict(jnp.asarray(X), fit.weights, fit.intercept)
    np.testing.assert_array_equal(pred, np.argmax(proba, -1))
    assert float(probes.accuracy(jnp.asarray(y), pred[-1])) > 0.6
    lams = probes.lams_from_c(probes.PAPER_C_GRID, 200)
    np.testing.assert_allclose(lams, 1.0 / (np.sort(probes.PAPER_C_GRID) * 200), rtol=1e-6)
    assert np.all(np.diff(np.asarray(lams)) < 0)


def test_fit_masks_narrow_with_three_classes_is_the_in_program_prefix_fit():
    """Prefix widths on copies of each prefix (`narrow`) solve what the in-program prefixes
    solve, with a softmax's K = 3 columns of weights a lane."""
    F = 300
    X, y = make_problem(3, 900, F, 3, scale=1.0)
    X, y = jnp.asarray(X), jnp.asarray(y)
    used = np.array([[40], [300], [128], [200]])
    masks = jnp.asarray((np.random.default_rng(4).random((4, F)) > 0.3) & (np.arange(F) < used),
                        jnp.float32)  # fmt: skip
    widths = np.array([128, 300, 128, 256])
    lams = probes.default_lams(X, y, 3, num=2, ratio=0.05)
    solve = dict(widths=widths, max_iter=200, tol=1e-5)
    want = lanes.fit_masks(X, y, 3, lams, masks, **solve)
    got = lanes.fit_masks(X, y, 3, lams, masks, narrow=True, **solve)
    assert got.weights.shape == want.weights.shape == (4, 2, F, 3)
    np.testing.assert_allclose(got.weights, want.weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.intercept, want.intercept, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.converged, want.converged)
    assert np.all(np.abs(np.asarray(got.n_iter) - np.asarray(want.n_iter)) <= 1)
