"""The GEMMs of one lane step on a GPU: X [N, M] bf16 times [M, B] and back, fp32 sums.

Times 50 gradient-like steps (X @ W, a sigmoid, X^T r) in one jitted loop: at full width for
B = 256, 128 and 64 columns, and over column blocks of 4096 in a loop whose trip count is
data (from a [blocks, N, 4096] copy, or column slices of X), the way a step would read only
the blocks a lane uses with one program for every width. Prints ms a step and TFLOP/s.

    python benchmarks/gemm_blocks.py
"""

from __future__ import annotations

import datetime
import time

import jax
import jax.numpy as jnp

N, M, BLOCK, STEPS = 20000, 65536, 4096, 50  # a GPT2-XL group's rows and padded width
F32 = jnp.float32


def _dot(a, b):
    return jnp.dot(a, b, preferred_element_type=F32)


def full(X, W):
    def body(i, W):
        r = jax.nn.sigmoid(_dot(X, W)).astype(jnp.bfloat16)
        return (W - 1e-3 * _dot(X.T, r)).astype(jnp.bfloat16)

    return jax.lax.fori_loop(0, STEPS, body, W)


def by_blocks(X, W, n, sliced):
    """`full` on the first n column blocks; X is [blocks, N, BLOCK] unless sliced."""

    def cols(b):
        if sliced:
            return jax.lax.dynamic_slice_in_dim(X, b * BLOCK, BLOCK, 1)
        return X[b]

    def body(i, W):
        def fwd(b, z):
            return z + _dot(cols(b), jax.lax.dynamic_slice_in_dim(W, b * BLOCK, BLOCK, 0))

        r = jax.nn.sigmoid(jax.lax.fori_loop(0, n, fwd, jnp.zeros((N, W.shape[1]), F32)))
        r = r.astype(jnp.bfloat16)

        def bwd(b, g):
            return jax.lax.dynamic_update_slice_in_dim(g, _dot(cols(b).T, r), b * BLOCK, 0)

        g = jax.lax.fori_loop(0, n, bwd, jnp.zeros(W.shape, F32))
        return (W - 1e-3 * g).astype(jnp.bfloat16)

    return jax.lax.fori_loop(0, STEPS, body, W)


def timed(f, *args) -> tuple[float, float]:
    """(first call s, second call s)."""
    out = []
    for _ in range(2):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        out.append(time.perf_counter() - t)
    return out[0], out[1]


def report(name: str, cols: int, width: int, first: float, second: float) -> None:
    flops = 4 * N * width * cols * STEPS
    print(f"| {name} | {cols} | {width} | {first:.2f} | {second / STEPS * 1e3:.2f} | "
          f"{flops / second / 1e12:.0f} |", flush=True)  # fmt: skip


def main() -> int:
    X = jax.random.normal(jax.random.key(0), (N, M), jnp.bfloat16)
    X3 = jax.block_until_ready(X.reshape(N, M // BLOCK, BLOCK).transpose(1, 0, 2) + 0)
    print(f"# gemm_blocks.py, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}; N {N}, M {M}")  # fmt: skip
    print("\n| way | columns B | width read | first s | ms a step | TFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for cols in (256, 128, 64):
        W = jnp.full((M, cols), 1e-3, jnp.bfloat16)
        report("full width", cols, M, *timed(jax.jit(full), X, W))
    W = jnp.full((M, 256), 1e-3, jnp.bfloat16)
    for sliced, name in ((False, "blocks of a [blocks, N, 4096] copy"), (True, "column slices")):
        f = jax.jit(by_blocks, static_argnums=3)
        for n in (M // BLOCK, M // BLOCK // 4):
            report(name, 256, n * BLOCK, *timed(f, X if sliced else X3, W, jnp.int32(n), sliced))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
