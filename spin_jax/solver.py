"""The proximal solvers as optax transformations, and the loop that runs them.

An L1 problem min_theta f(theta) + sum_j thresh_j / step * |theta_j| is solved by
proximal gradient steps. In optax terms, with params = the point where the gradient of the
smooth part f is taken:

    optax.chain(optax.scale(-1 / L), prox_l1(thresh, keep), fista())     # the default
    prox_adam(lr, lam, keep)                       # optax.scale_by_adam, then the prox

`prox_l1` soft-thresholds the point the smooth step reached (exact zeros); `fista` adds
Nesterov momentum with gradient-based adaptive restart (O'Donoghue & Candes 2015) and keeps
the last proximal point, which is the solution (params is the extrapolated point). `minimize`
steps a transformation in a `lax.while_loop` until the solution stops moving, inside
whatever vmap and jit the caller builds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


class FistaState(NamedTuple):
    x: Array  # the last proximal point: the current solution
    t: Array  # the momentum sequence, t_1 = 1


def prox_l1(thresh: Array, keep: Array) -> optax.GradientTransformation:
    """Soft-threshold params + updates by thresh [P] per row (0: not penalised), then zero
    the rows where keep [P] is 0; returns the updates that land on that point."""

    def update(updates, state, params=None):
        x = _soft(params + updates, thresh[:, None], keep)
        return x - params, state  # params + (x - params) is x exactly where x is 0

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _soft(v: Array, thresh: Array, keep: Array) -> Array:
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - thresh, 0.0) * keep[:, None]


def prox_adam(
    learning_rate: float, thresh: Array, keep: Array, b1=0.9, b2=0.999, eps=1e-8
) -> optax.GradientTransformation:
    """optax.adam's step, then the L1 prox in adam's own diagonal metric (Proximal Adam,
    Melchior et al. 2019): coordinate j is thresholded by thresh_j * lr / (sqrt(nu_j) + eps),
    its step size, so a coordinate whose gradient stays under lam stays at exactly 0. A
    threshold of thresh * lr alone would let adam's unit-size steps move every weight."""
    adam = optax.scale_by_adam(b1, b2, eps)

    def update(grads, state, params=None):
        direction, state = adam.update(grads, state, params)
        nu_hat = state.nu / (1.0 - b2 ** state.count.astype(jnp.float32))
        step = learning_rate / (jnp.sqrt(nu_hat) + eps)
        x = _soft(params - learning_rate * direction, thresh[:, None] * step, keep)
        return x - params, state

    return optax.GradientTransformation(adam.init, update)


def fista(restart: bool = True) -> optax.GradientTransformation:
    """Accelerated proximal gradient: after `prox_l1`, move on from the proximal point x_new
    by (t - 1) / t_new of the last step; restart the momentum when it points against the
    descent just taken."""

    def init(params):
        return FistaState(params, jnp.ones((), jnp.float32))

    def update(updates, state, params=None):
        x_new = params + updates
        diff = x_new - state.x
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * state.t * state.t))
        beta = (state.t - 1.0) / t_new
        if restart:
            back = _inner(-updates, diff) > 0  # (y - x_new) . (x_new - x) > 0
            beta, t_new = jnp.where(back, 0.0, beta), jnp.where(back, 1.0, t_new)
        return updates + beta * diff, FistaState(x_new, t_new)

    return optax.GradientTransformation(init, update)


def _inner(a: Array, b: Array) -> Array:
    """sum(a * b), the product kept out of the reduction's fusion by an identity rounding.

    XLA's CPU backend fuses a product and its sum (vdot, sum(a * b)) into one YNNPACK
    reduction, which for vmapped lanes of [M + 1, 1] weights took ~55 us a lane-step at
    M = 4096 against ~4 us for the sum of the product made apart: FISTA's restart test cost
    as much as the step's two products with X (benchmarks/RESULTS.md, session 13). Rounding
    fp32 to fp32's own 8 exponent and 23 mantissa bits changes no bit."""
    return jnp.sum(jax.lax.reduce_precision(a * b, exponent_bits=8, mantissa_bits=23))


def solution(params: Array, opt_state: Any) -> Array:
    """The current solution: FISTA's last proximal point, else params itself."""
    for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, FistaState)):
        if isinstance(s, FistaState):
            return s.x
    return params


class Run(NamedTuple):
    """A solve in progress: params, the transformation's state, iterations, and the last
    relative change of the solution (inf before the first step)."""

    params: Array
    opt_state: Any
    n_iter: Array
    change: Array


def start(tx: optax.GradientTransformation, theta0: Array) -> Run:
    return Run(theta0, tx.init(theta0), jnp.int32(0), jnp.float32(jnp.inf))


def minimize(grad_fn: Callable, tx: optax.GradientTransformation, run: Run, stop, tol) -> Run:
    """Steps `run` until n_iter reaches `stop` or the solution's relative change
    ||x_new - x|| / max(||x_new||, 1) is at most tol."""

    def step(run: Run) -> Run:
        old = solution(run.params, run.opt_state)
        updates, opt_state = tx.update(grad_fn(run.params), run.opt_state, run.params)
        params = optax.apply_updates(run.params, updates)
        new = solution(params, opt_state)
        change = jnp.linalg.norm(new - old) / jnp.maximum(jnp.linalg.norm(new), 1.0)
        return Run(params, opt_state, run.n_iter + 1, change)

    def cond(run: Run):
        return (run.n_iter < stop) & (run.change > tol)

    return jax.lax.while_loop(cond, step, run)


def proximal(
    thresh: Array, keep: Array, lipschitz: Array, smooth: Smooth | None = None
) -> optax.GradientTransformation:
    """The transformation for one problem: L1 weights thresh [P] (lam per row, 0 on the
    intercept), rows held at zero where keep [P] is 0, gradient Lipschitz constant L.

    smooth None: FISTA with step 1 / L. Else the user's optimizer for the smooth part
    (`Smooth`): "sgd", proximal gradient with step learning_rate; "adam", `prox_adam`."""
    if smooth is None:
        return optax.chain(
            optax.scale(-1.0 / lipschitz), prox_l1(thresh / lipschitz, keep), fista()
        )
    lr = smooth.learning_rate
    if smooth.name == "adam":
        return prox_adam(lr, thresh, keep)
    return optax.chain(optax.sgd(lr), prox_l1(thresh * lr, keep))


SMOOTH = ("adam", "sgd")


class Smooth(NamedTuple):
    """An optax optimizer for the smooth part of the solves, by name (SMOOTH) and step.
    Hashable, so it can be a static argument of a jitted solver; build it with `smooth()`."""

    name: str
    learning_rate: float


def smooth(name: str, learning_rate: float) -> Smooth:
    """optax.adam or optax.sgd (name) at learning_rate for the smooth part of the solves."""
    if name not in SMOOTH:
        raise ValueError(f"no optimizer {name!r} for the smooth part; choose one of {SMOOTH}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    return Smooth(name, float(learning_rate))
