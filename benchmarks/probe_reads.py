"""What the probes pay to bring one chunk of layers of one pooling from features in host
memory to the device: [N, L, P, F] numpy -> [g, N, F] on the device, the way
`layer_probes._problems` did it before session 21 (one transposed numpy copy, then
`device_put`) against copies split over threads (its way since), through pinned host memory,
and per-layer puts stacked on the device. GPT2-XL's FFN shape
(6400 neurons, 3 poolings, bf16) by default; g = 1 is what the default memory_bytes gives it.

    PYTHONPATH=. python benchmarks/probe_reads.py --rows 20000 --layers 8
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from spin_jax import devices, layer_probes


def one_copy(v):
    """The way before session 21: one transposed numpy copy, then device_put."""
    return jax.device_put(np.ascontiguousarray(v.swapaxes(0, 1)))


def library(v):
    return layer_probes._problems(v[:, :, None])


def transposed_copy(v, pool):
    """[N, g, F] view -> contiguous [g, N, F], row blocks copied in the pool's threads."""
    out = np.empty((v.shape[1], v.shape[0], v.shape[2]), v.dtype)
    blocks = np.array_split(np.arange(v.shape[0]), pool._max_workers)

    def copy(b):
        s = slice(int(b[0]), int(b[-1]) + 1)
        np.copyto(out[:, s], v[s].swapaxes(0, 1))

    list(pool.map(copy, [b for b in blocks if b.size]))
    return out


def threaded(v, pool):
    return jax.device_put(transposed_copy(v, pool))


def pinned(x):
    """x through pinned host memory: jax's copy into a pinned buffer, then its DMA."""
    host = devices.host_sharding(None)
    return jax.device_put(jax.device_put(x, host), jax.devices()[0])


def threaded_pinned(v, pool):
    return pinned(transposed_copy(v, pool))


def layer_puts(v, pool):
    parts = pool.map(lambda j: jax.device_put(np.ascontiguousarray(v[:, j])), range(v.shape[1]))
    return jnp.stack(list(parts))


def rate(fn, views, nbytes) -> float:
    for v in views[:1]:
        jax.block_until_ready(fn(v))  # compiles, first touch
    t = time.perf_counter()
    for v in views:
        jax.block_until_ready(fn(v))
    return nbytes * len(views) / (time.perf_counter() - t) / 1e9


def ways(g: int, threads: list[int]) -> dict:
    """{description: fn(view)} of the ways measured for chunks of g layers."""
    out = {
        "one copy, then device_put (before session 21)": one_copy,
        f"layer_probes._problems ({layer_probes._copy_workers()} threads)": library,
    }
    host = devices.host_sharding(None)
    for n in threads:
        pool = ThreadPoolExecutor(n)
        out[f"copy in {n} threads, then device_put"] = partial(threaded, pool=pool)
        if host is not None:
            out[f"copy in {n} threads, then through pinned memory"] = partial(
                threaded_pinned, pool=pool
            )
        out[f"copy in {n} threads alone"] = partial(transposed_copy, pool=pool)
        if g > 1:
            out[f"a put a layer in {n} threads, stacked"] = partial(layer_puts, pool=pool)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--features", type=int, default=6400)
    ap.add_argument("--chunk", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 4, 8])
    args = ap.parse_args()
    N, L, F = args.rows, args.layers, args.features
    x = np.ones((N, L, 3, F), ml_dtypes.bfloat16)
    now = datetime.datetime.now(datetime.UTC)
    print(f"{now:%Y-%m-%d %H:%M} UTC, {jax.devices()[0]}, jax {jax.__version__}, "
          f"{os.cpu_count()} CPUs; features [{N}, {L}, 3, {F}] bf16")  # fmt: skip
    print("| g | way | GB/s |\n|---:|---|---:|")
    host, device = devices.host_sharding(None), jax.devices()[0]
    for g in args.chunk:
        views = [x[:, s : s + g, p] for p in range(3) for s in range(0, L - g + 1, g)]
        nbytes = views[0].size * 2
        for name, fn in ways(g, args.threads).items():
            print(f"| {g} | {name} | {rate(fn, views, nbytes):.2f} |")
        c = [np.ascontiguousarray(views[0].swapaxes(0, 1))] * len(views)
        alone = {"device_put of a contiguous copy alone": (jax.device_put, c)}
        if host is not None:
            p = [jax.device_put(c[0], host)] * len(views)
            alone["a contiguous copy through pinned memory alone"] = (pinned, c)
            alone["into pinned memory alone"] = (partial(jax.device_put, device=host), c)
            alone["from pinned memory alone"] = (partial(jax.device_put, device=device), p)
        for name, (fn, arrays) in alone.items():
            print(f"| {g} | {name} | {rate(fn, arrays, nbytes):.2f} |")


if __name__ == "__main__":
    main()
