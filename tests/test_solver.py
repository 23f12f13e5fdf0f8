"""The optax proximal solver: the same optimum as a hand-written FISTA, exact zeros, and a
user's optax optimizer for the smooth part."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spin_jax import devices, lanes, probes, solver
from tests.test_probes import make_problem, objective_np

jax.config.update("jax_default_matmul_precision", "highest")

N, F = 2000, 500


def fista_np(X, y, n_classes, lam, iters=3000):
    """FISTA with gradient restart, written out in float64 numpy: the solver probes.py had
    before it was expressed in optax (intercept unpenalised, step 1/L, L = c ||[X 1]||^2/N)."""
    X = np.asarray(X, np.float64)
    n, f = X.shape
    K = 1 if n_classes == 2 else n_classes
    T = y[:, None].astype(np.float64) if K == 1 else np.eye(n_classes)[y]
    A = np.hstack([X, np.ones((n, 1))])
    L = (0.25 if K == 1 else 0.5) * np.linalg.norm(A, 2) ** 2 / n
    thresh = np.append(np.full(f, lam / L), 0.0)[:, None]

    def grad(theta):
        z = A @ theta
        p = 1 / (1 + np.exp(-z)) if K == 1 else np.exp(z - z.max(1, keepdims=True))
        p = p if K == 1 else p / p.sum(1, keepdims=True)
        return A.T @ (p - T) / n

    x = y_ = np.zeros((f + 1, K))
    t = 1.0
    for _ in range(iters):
        v = y_ - grad(y_) / L
        x_new = np.sign(v) * np.maximum(np.abs(v) - thresh, 0.0)
        diff = x_new - x
        t_new = 0.5 * (1 + np.sqrt(1 + 4 * t * t))
        beta = (t - 1) / t_new
        if np.vdot(y_ - x_new, diff) > 0:
            beta, t_new = 0.0, 1.0
        x, y_, t = x_new, x_new + beta * diff, t_new
    return x[:-1], x[-1]


def problem(n_classes):
    X, y = make_problem(0, N, F, n_classes, informative=tuple(range(0, 40, 4)), scale=0.7)
    lams = probes.default_lams(jnp.asarray(X), jnp.asarray(y), n_classes, num=8, ratio=1e-2)
    return X, y, lams[:4]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_optax_fista_equals_the_hand_written_solver(n_classes):
    X, y, lams = problem(n_classes)
    lam = float(lams[-1])
    fit = probes.fit_path(jnp.asarray(X), jnp.asarray(y), n_classes, lams, tol=1e-7)
    W, b = np.asarray(fit.weights[-1]), np.asarray(fit.intercept[-1])
    W_ref, b_ref = fista_np(X, y, n_classes, lam)
    ours, ref = objective_np(X, y, W, b, lam), objective_np(X, y, W_ref, b_ref, lam)
    assert abs(ours - ref) / ref <= 1e-4, (ours, ref)
    zeros = W == 0  # exact zeros, and where the reference has them
    assert 0.5 < zeros.mean() < 1.0
    assert np.mean(zeros == (W_ref == 0)) > 0.99


@pytest.mark.parametrize("n_classes", [2, 3])
def test_adam_smooth_part_reaches_the_objective(n_classes):
    """optax's adam for the smooth part, the prox in adam's metric: 1000 steps at lr 1e-2
    reach FISTA's objective within 1e-6 (measured: 1e-9 on both problems; 3000 steps at lr
    1e-3 within 2e-6), with FISTA's exact zeros."""
    X, y, lams = problem(n_classes)
    lam = float(lams[-1])
    args = (jnp.asarray(X), jnp.asarray(y), n_classes, lams[-1:])
    ref = probes.fit_path(*args, tol=1e-7)
    fit = probes.fit_path(*args, tol=1e-9, max_iter=1000, smooth=solver.smooth("adam", 1e-2))
    ours = objective_np(X, y, fit.weights[-1], fit.intercept[-1], lam)
    best = objective_np(X, y, ref.weights[-1], ref.intercept[-1], lam)
    assert abs(ours - best) / best <= 1e-6, (ours, best)
    zeros, ref_zeros = np.asarray(fit.weights[-1]) == 0, np.asarray(ref.weights[-1]) == 0
    assert zeros.mean() > 0.5 and np.mean(zeros == ref_zeros) > 0.99


def test_masks_lanes_take_a_smooth_part_too():
    X, y, lams = problem(2)
    masks = jnp.asarray(np.arange(F)[None] < np.array([[100], [F]]), jnp.float32)
    adam = solver.smooth("adam", 1e-2)
    fit = lanes.fit_masks(
        jnp.asarray(X), jnp.asarray(y), 2, lams, masks, max_iter=200, smooth=adam
    )
    for g in range(2):
        one = probes.fit_path(
            jnp.asarray(X), jnp.asarray(y), 2, lams, featmask=masks[g], max_iter=200, smooth=adam
        )
        np.testing.assert_allclose(fit.weights[g], one.weights, atol=1e-6)
    assert np.all(np.asarray(fit.weights[0, :, 100:]) == 0)  # masked features held at 0


def test_prox_l1_soft_thresholds_and_holds_masked_rows():
    params = jnp.array([[1.0], [-0.2], [0.5], [3.0]])
    updates = jnp.array([[0.5], [0.0], [0.0], [0.0]])
    thresh, keep = jnp.array([1.0, 1.0, 0.1, 0.0]), jnp.array([1.0, 1.0, 0.0, 1.0])
    tx = solver.prox_l1(thresh, keep)
    out, _ = tx.update(updates, tx.init(params), params)
    x = optax.apply_updates(params, out)
    np.testing.assert_array_equal(np.asarray(x)[:, 0], [0.5, 0.0, 0.0, 3.0])


def test_unknown_smooth_optimizer_is_refused():
    with pytest.raises(ValueError, match="no optimizer"):
        solver.smooth("nosuch", 1e-3)
    with pytest.raises(ValueError, match="positive"):
        solver.smooth("adam", 0.0)


def test_solver_programs_take_compiler_options_on_a_gpu(monkeypatch):
    """On a GPU the learner's programs get devices.GPU_SOLVER_OPTIONS; elsewhere none."""
    seen, real = [], jax.jit
    options = {"xla_gpu_enable_triton_gemm": False}

    def jit(fun, **kwargs):
        seen.append(kwargs.get("compiler_options"))
        return real(fun, **kwargs)

    monkeypatch.setattr(devices.jax, "jit", jit)
    monkeypatch.setattr(devices, "GPU_SOLVER_OPTIONS", options)
    monkeypatch.setattr(devices.jax, "default_backend", lambda: "cpu")
    double = devices.solver_jit(lambda x: x * 2)
    assert float(double(jnp.float32(3))) == 6.0
    monkeypatch.setattr(devices.jax, "default_backend", lambda: "gpu")
    assert float(double(jnp.float32(4))) == 8.0  # XLA takes the GPU option on any backend
    assert seen == [None, options]
    double(jnp.float32(5))
    assert len(seen) == 2  # one jitted function per backend, kept
    # Called inside another program it is inlined: jax refuses options on a nested jit.
    outer = devices.solver_jit(lambda x: double(x) + 1)
    assert float(outer(jnp.float32(1))) == 3.0
    assert seen == [None, options, options]  # the inner one traced into the outer


def test_restart_inner_product_equals_vdot_and_keeps_its_rounding_barrier():
    """FISTA's restart test reads `solver._inner`: vdot's value, with the product kept
    apart from the sum (an identity reduce-precision), which XLA must not remove: on a CPU
    the fused product-and-sum of vmapped lanes cost ~14x the sum (RESULTS.md, session 13)."""
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((8, 4097, 1)), jnp.float32) for _ in range(2))
    inner = jax.jit(jax.vmap(solver._inner))
    want = np.einsum("bmk,bmk->b", np.float64(a), np.float64(b))
    np.testing.assert_allclose(inner(a, b), want, rtol=1e-5, atol=1e-4)
    if jax.default_backend() == "cpu":  # the backend it is for
        assert "reduce-precision" in inner.lower(a, b).compile().as_text()
