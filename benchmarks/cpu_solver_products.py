"""The solver's two products on a CPU: X @ theta, and X^T r as XLA's CPU backend runs it
from X itself (it transposes X on every call) beside a transposed copy made before the loop
(`probes.transposed`); then one `lanes` step per lane, as integration runs it.

    PYTHONPATH=. python benchmarks/cpu_solver_products.py            # the demo's widest group
    PYTHONPATH=. python benchmarks/cpu_solver_products.py --rows 2000 --width 1024
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import lanes

HIGHEST = jax.lax.Precision.HIGHEST
CALLS = 50


def per_call(fn, t0, *consts, prepare=None) -> float:
    """Seconds a call of fn(t, *consts) inside a jitted loop of CALLS calls (compiled
    first); prepare(*consts), if given, runs once in the same program before the loop."""

    def program(t0, *consts):
        consts = prepare(*consts) if prepare else consts
        return jax.lax.fori_loop(0, CALLS, lambda i, t: t + 1e-6 * fn(t, *consts), t0)

    loop = jax.jit(program)
    loop(t0, *consts).block_until_ready()
    t = time.perf_counter()
    loop(t0, *consts).block_until_ready()
    return (time.perf_counter() - t) / CALLS


def products(X, lanes_n: int) -> tuple[float, float, float]:
    """Seconds of X @ theta, X^T r from X, and X^T r from a copy of X.T made before the loop."""
    N, W = X.shape
    rng = np.random.default_rng(1)
    theta = jnp.asarray(rng.standard_normal((W, lanes_n)), jnp.float32)
    r = jnp.asarray(rng.standard_normal((N, lanes_n)), jnp.float32)

    def forward(t, X):
        return jnp.zeros_like(t) + jnp.dot(X, t, precision=HIGHEST).sum()

    def back_plain(t, X, r):
        return jnp.einsum("NF,NK->FK", X, r + t[:N], precision=HIGHEST)

    def back_copy(t, XT, r):
        return jnp.einsum("FN,NK->FK", XT, r + t[:N], precision=HIGHEST)

    def copy_first(X, r):  # as probes.transposed does
        return jax.lax.optimization_barrier(X.T), r

    fwd = per_call(forward, theta, X)
    plain = per_call(back_plain, theta, X, r)
    return fwd, plain, per_call(back_copy, theta, X, r, prepare=copy_first)


def lane_step(X, lanes_n: int, iters: int = 256) -> float:
    """Seconds a lane-step of `lanes.fit_masks` on lanes_n lanes at X's width."""
    y = jnp.asarray(np.random.default_rng(2).integers(0, 2, X.shape[0]))
    masks = jnp.ones((lanes_n, X.shape[1]))
    widths = np.full(lanes_n, X.shape[1])
    run = dict(max_iter=iters, tol=0.0, widths=widths)
    jax.block_until_ready(lanes.fit_masks(X, y, 2, jnp.asarray([1e-4]), masks, **run))
    t = time.perf_counter()
    jax.block_until_ready(lanes.fit_masks(X, y, 2, jnp.asarray([1e-4]), masks, **run))
    return (time.perf_counter() - t) / (lanes_n * iters)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=384)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--lanes", default="8,32,256")
    args = p.parse_args(argv)
    X = jnp.asarray(np.random.default_rng(0).standard_normal((args.rows, args.width)), jnp.float32)
    print(f"# cpu_solver_products.py, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
          f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax {jax.__version__}; "
          f"X {args.rows} x {args.width} fp32")  # fmt: skip
    print("\n| lanes | X @ theta ms | X^T r from X ms | X^T r from X.T ms | lane step us |")
    print("|---:|---:|---:|---:|---:|")
    for n in (int(v) for v in args.lanes.split(",")):
        fwd, plain, copy = products(X, n)
        step = lane_step(X, n)
        print(
            f"| {n} | {fwd * 1e3:.2f} | {plain * 1e3:.2f} | {copy * 1e3:.2f} | {step * 1e6:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
