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


def timed(fn, n=20):
    jax.block_until_ready(fn())
    t = time.perf_counter()
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / n


def main():
    rng = np.random.default_rng(0)
    B, T = 42, 384
    lengths = jnp.asarray(rng.integers(200, T + 1, B))
    mask = jnp.arange(T)[None] < lengths[:, None]
    tok = jnp.zeros(B, jnp.int32)
    print(jax.devices()[0].device_kind, jax.__version__)
    for F in (6400, 1600):
        x = jnp.asarray(rng.standard_normal((B, T, F)), jnp.bfloat16)
        real_bytes = int(lengths.sum()) * F * 2
        s = timed(lambda x=x: L.pool_jnp(x, mask, tok))
        print(f"F={F}: jnp reductions {s * 1e6:7.1f} us, {real_bytes / s / 1e9:6.0f} GB/s")
        for chunk, bf, warps in itertools.product((16, 32), (64, 128, 256), (2, 4, 8)):
            if F % bf:
                continue
            fn = lambda x=x, c=chunk, b=bf, w=warps: pooling.mean_max(  # noqa: E731
                x, lengths, chunk=c, block_f=b, num_warps=w
            )
            try:
                s = timed(fn)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"  chunk {chunk} block {bf} warps {warps}: {type(e).__name__}")
                continue
            print(
                f"  chunk {chunk:3d} block {bf:3d} warps {warps}: {s * 1e6:7.1f} us, "
                f"{real_bytes / s / 1e9:6.0f} GB/s"
            )


if __name__ == "__main__":
    main()
