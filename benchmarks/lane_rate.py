"""The rate of integration's lane steps on one device against the lanes stepped together.

`lanes.fit_masks` at full width on a random bf16 (the accelerator's solver dtype) X [rows,
width], one lam, tol 0 so that every lane runs `--iters` iterations, in one batch of B lanes:
the seconds of a second call (the first compiles) per iteration and per lane-iteration, and
the rate of its products (a lane-iteration is two [rows, width] products of 2 columns, the
16-bit split of probes._split_dot), beside the same two bare GEMMs.

    PYTHONPATH=. python benchmarks/lane_rate.py --rows 10000 --widths 65536,262144
"""

from __future__ import annotations

import argparse
import datetime
import time

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import lanes


def timed(f) -> float:
    jax.block_until_ready(f())
    t = time.perf_counter()
    jax.block_until_ready(f())
    return time.perf_counter() - t


def gemms(X, B: int) -> float:
    """Seconds of X @ V [width, 2B] and X^T R [rows, 2B], bf16 in, fp32 out."""
    V = jnp.ones((X.shape[1], 2 * B), X.dtype)
    R = jnp.ones((X.shape[0], 2 * B), X.dtype)
    fw = jax.jit(lambda X, V: jnp.einsum("NF,FK->NK", X, V, preferred_element_type=jnp.float32))
    bw = jax.jit(lambda X, R: jnp.einsum("NF,NK->FK", X, R, preferred_element_type=jnp.float32))
    return timed(lambda: fw(X, V)) + timed(lambda: bw(X, R))


def step_seconds(X, y, masks, iters: int) -> float:
    """Seconds per iteration of one batch of masks.shape[0] lanes at one lam."""
    lams = jnp.asarray([1e-5], jnp.float32)
    kw = dict(max_iter=iters, tol=0.0, max_lanes=masks.shape[0])
    return timed(lambda: lanes.fit_masks(X, y, 2, lams, masks, **kw).weights) / iters


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10000)
    p.add_argument("--widths", default="65536,262144")
    p.add_argument("--lanes", default="64,256,1024")
    p.add_argument("--iters", type=int, default=100)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    N = args.rows
    print(f"# lane_rate.py, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}, rows {N}")  # fmt: skip
    print("| width | lanes | ms per iteration | us per lane-iteration | TFLOP/s | bare GEMMs ms | "
          "bare TFLOP/s |\n|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for W in map(int, args.widths.split(",")):
        X = jax.device_put(rng.standard_normal((N, W), np.float32).astype(jnp.bfloat16))
        y = jnp.asarray(rng.integers(0, 2, N))
        for B in map(int, args.lanes.split(",")):
            masks = jnp.asarray((rng.random((B, W)) < 0.5).astype(np.float32))
            s = step_seconds(X, y, masks, args.iters)
            g = gemms(X, B)
            tflop = 8 * N * W * B / 1e12
            print(f"| {W} | {B} | {s * 1e3:.2f} | {s / B * 1e6:.1f} | {tflop / s:.0f} | "
                  f"{g * 1e3:.2f} | {tflop / g:.0f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
