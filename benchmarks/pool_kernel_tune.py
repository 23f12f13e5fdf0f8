"""Tuning the GPU pooling kernel (models/pooling.py): time masked mean+max over tokens of a
GPT2-XL-shaped batch for tile settings, as effective bandwidth over the real tokens' bytes.

Run on a GPU: PYTHONPATH=. python benchmarks/pool_kernel_tune.py
"""

import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax.models import layers as L
from spin_jax.models import pooling


def timed(pool, x, lengths, n=48):
    """Seconds per call of pool(x, lengths) -> arrays, n calls inside one program (as in the
    layer scan), so host dispatch does not dominate a ~0.1 ms kernel."""

    @jax.jit
    def many(x, lengths):
        def body(i, acc):  # lengths vary with i, so the call cannot be hoisted out
            return acc + sum(a.ravel()[0] for a in pool(x, lengths - i % 2))

        return jax.lax.fori_loop(0, n, body, jnp.float32(0))

    jax.block_until_ready(many(x, lengths))
    t = time.perf_counter()
    jax.block_until_ready(many(x, lengths))
    return (time.perf_counter() - t) / n


def main():
    rng = np.random.default_rng(0)
    B, T = 42, 384
    lengths = jnp.asarray(rng.integers(200, T + 1, B))
    tok = jnp.zeros(B, jnp.int32)
    print(jax.devices()[0].device_kind, jax.__version__)
    for F in (6400, 1600):
        x = jnp.asarray(rng.standard_normal((B, T, F)), jnp.bfloat16)
        real_bytes = int(lengths.sum()) * F * 2
        s = timed(lambda x, n: (L.pool_jnp(x, jnp.arange(T)[None] < n[:, None], tok),), x, lengths)
        print(f"F={F}: jnp reductions {s * 1e6:7.1f} us, {real_bytes / s / 1e9:6.0f} GB/s")
        rows = []
        grid = itertools.product((1, 2, 4), (16, 32, 64), (32, 64, 128, 256), (1, 2, 4, 8))
        for group, chunk, bf, warps in grid:
            if (group * F) % bf or (T // group) % chunk or (group > 1 and F % 128 == 0):
                continue
            fn = lambda x, n, g=group, c=chunk, b=bf, w=warps: pooling.mean_max(  # noqa: E731
                x, n, chunk=c, block_f=b, num_warps=w, group=g
            )
            label = f"group {group} chunk {chunk:3d} block {bf:3d} warps {warps}"
            try:
                rows.append((timed(fn, x, lengths), label))
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"  {label}: {type(e).__name__}")
        g = pooling._group(T, F)
        default = g, *pooling._tiles(T // g, g * F)
        print(f"  fastest first (the library's default: group, chunk, block, warps {default}):")
        for s, label in sorted(rows)[:10]:
            print(f"  {label}: {s * 1e6:7.1f} us, {real_bytes / s / 1e9:6.0f} GB/s")


if __name__ == "__main__":
    main()
