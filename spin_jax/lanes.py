"""`fit_masks`: the L1 solve of `probes.fit_path` on one shared X for many feature masks
(integration's (eta, k) problems) at every lam, each (mask, lam) a lane with its own optax
state, stepped in rounds so that converged lanes leave the batch."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import solver
from spin_jax.probes import (
    Array,
    ProbeFit,
    _init_theta,
    _lipschitz,
    _smooth_grad,
    _targets,
    n_columns,
)

# `fit_masks` steps its (mask, lam) lanes in rounds. A lane's round ends when its iteration
# count doubles (the first after FIRST_ROUND steps), so no lane is stepped more than about
# twice past its convergence; converged lanes then leave the batch. A vmapped solve that
# ran every lane to the slowest one's count did 5-20x more steps (benchmarks/RESULTS.md).
FIRST_ROUND = 8


def fit_masks(
    X: Array,
    y: Array,
    n_classes: int,
    lams: Array,
    masks: Array,
    *,
    max_iter: int = 2000,
    tol: float = 1e-6,
    max_lanes: int | None = None,
    shrink: int = 2,
    smooth: solver.Smooth | None = None,
) -> ProbeFit:
    """`fit_path` on one shared X [N, F] (standardised, no padded rows) for every feature
    mask of masks [G, F] (0/1) at every lam of lams [R].

    Each (mask, lam) pair is a lane with its own FISTA state; at most max_lanes lanes are
    stepped together (memory). The batch shrinks to the next power of two once the active
    lanes are 1/shrink of it: each new size is one more compile, so a fast device, where
    a compile costs more than the steps it saves, wants a larger `shrink`.
    Returns ProbeFit with weights [G, R, F, K], intercept [G, R, K], n_iter and converged
    [G, R]: the same solutions as `fit_path` per mask.
    """
    if shrink < 2:
        raise ValueError(f"fit_masks: shrink must be at least 2, got {shrink}")
    G, R, K = masks.shape[0], lams.shape[0], n_columns(n_classes)
    if G * R == 0:
        zeros = jnp.zeros((G, R), jnp.int32)
        return ProbeFit(jnp.zeros((G, R, X.shape[1], K)), jnp.zeros((G, R, K)), zeros, zeros > 0)
    lams = jnp.asarray(lams, jnp.float32)
    T, m_over_n, Ls, theta0 = _masks_setup(X, y, n_classes, masks)
    state = _lanes_start(theta0, n=G * R, smooth=smooth)
    steps = np.zeros(G * R, np.int64)  # each lane's iterations so far
    active = np.arange(G * R)
    size = min(len(active), max_lanes or len(active))
    problem = (X, T, m_over_n, masks, Ls, lams)
    while active.size:
        # Lanes at equal counts share a batch: a fresh lane does not wait on a slow one.
        active = active[np.argsort(steps[active], kind="stable")]
        take = active[:size]
        idx = jax.device_put(np.resize(take, size))  # padded with repeats of active lanes
        # The repeats are not stored: their index is out of range, and the scatter drops it.
        stored = jax.device_put(np.append(take, np.full(size - len(take), G * R)))
        state, k, change = _lanes_step(problem, state, idx, stored, max_iter, tol, smooth=smooth)
        k, change = np.asarray(k)[: len(take)], np.asarray(change)[: len(take)]
        steps[take] = k
        active = np.concatenate([take[(k < max_iter) & (change > tol)], active[size:]])
        if 0 < len(active) <= size // shrink:
            size = 1 << int(len(active) - 1).bit_length()
    return _lanes_result(state, tol, shape=(G, R, K))


@partial(jax.jit, static_argnames=("shape",))
def _lanes_result(state, tol, *, shape) -> ProbeFit:
    G, R, K = shape
    x = solver.solution(state.params, state.opt_state)
    return ProbeFit(
        x[:, :-1].reshape(G, R, -1, K),
        x[:, -1].reshape(G, R, K),
        state.n_iter.reshape(G, R),
        (state.change <= tol).reshape(G, R),
    )


@partial(jax.jit, static_argnames=("n_classes",))
def _masks_setup(X, y, n_classes, masks):
    """Targets, row weights / N, Lipschitz constant per mask [G], starting theta."""
    m = jnp.ones(X.shape[0], jnp.float32)
    T = _targets(y, n_classes)
    lipschitz_of = partial(_lipschitz, X, m, n_classes=n_classes)
    Ls = jax.vmap(lambda f: lipschitz_of((f > 0).astype(jnp.float32)))(masks)
    return T, m / X.shape[0], Ls, _init_theta(T, m, X.shape[1])


def _lane_tx(f: Array, lam, L, smooth):
    """The transformation of one lane: feature mask f [F] (0/1), its lam and L."""
    return solver.proximal(jnp.append(f, 0.0) * lam, jnp.append(f, 1.0), L, smooth)


@partial(jax.jit, static_argnames=("n", "smooth"))
def _lanes_start(theta0, *, n: int, smooth):
    # The transformation's state does not depend on the lane's mask or lam, only its shape.
    run = solver.start(_lane_tx(jnp.ones(theta0.shape[0] - 1), 0.0, 1.0, smooth), theta0)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *jnp.shape(a))), run)


@partial(jax.jit, static_argnames=("smooth",), donate_argnums=1)
def _lanes_step(problem, state, idx, stored, max_iter, tol, *, smooth):
    """One round of the lanes idx [B], written back at `stored` (out of range: dropped), in
    one program: (state, their iterations [B], their last change [B])."""
    part = _lanes_round(problem, jax.tree.map(lambda a: a[idx], state), idx, max_iter, tol, smooth)
    state = jax.tree.map(lambda a, b: a.at[stored].set(b, mode="drop"), state, part)
    return state, part.n_iter, part.change


def _lanes_round(problem, state, idx, max_iter, tol, smooth):
    """One round of `fit_masks` for the lanes idx [B] (lane = mask * R + lam index)."""
    X, T, m_over_n, masks, Ls, lams = problem
    R = lams.shape[0]
    grad_fn = partial(_smooth_grad, X, T, m_over_n)

    def one(run, i):
        f = (masks[i // R] > 0).astype(jnp.float32)
        tx = _lane_tx(f, lams[i % R], Ls[i // R], smooth)
        stop = jnp.minimum(max_iter, jnp.maximum(FIRST_ROUND, 2 * run.n_iter))
        return solver.minimize(grad_fn, tx, run, stop, tol)

    return jax.vmap(one)(state, idx)


