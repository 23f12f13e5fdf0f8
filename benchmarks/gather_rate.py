"""What integration pays to gather its columns from features in host memory: `columns.gather`
(numpy, per (representation, pooling, layer) group) against `columns.union_columns` (rows
copied to the default device whole, gathered there), per element, on GPT2-XL-shaped fp16
features (48 blocks, 1600 hidden, 6400 FFN, 3 poolings) with a fifth of each layer's
neurons as columns (about both/all's count).

    PYTHONPATH=. python benchmarks/gather_rate.py --rows 1000
"""

from __future__ import annotations

import argparse
import datetime
import time

import jax
import numpy as np

from spin_jax import columns
from spin_jax.features import MemoryFeatures

L, P, D, F = 48, 3, 1600, 6400


def features(n: int, rng) -> MemoryFeatures:
    arrays = {
        "hidden": rng.standard_normal((n, L + 1, P, D), np.float32).astype(np.float16),
        "ffn": rng.standard_normal((n, L, P, F), np.float32).astype(np.float16),
    }
    return MemoryFeatures(arrays, np.zeros(n, np.int64), ["a", "b"], {})


def fifth_of_each_layer(rng) -> columns.Columns:
    parts = []
    for rep, (layers, width) in enumerate([(range(L + 1), D), (range(1, L + 1), F)]):
        for p in range(P):
            for j in layers:
                keep = np.sort(rng.choice(width, width // 5, replace=False))
                parts.append(np.stack([np.full(len(keep), v) for v in (rep, p, j)] + [keep], 1))
    c = np.concatenate(parts)
    return columns.Columns(c[:, 0], c[:, 1], c[:, 2], c[:, 3], np.zeros(len(c), np.int64))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1000)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    src, cols = features(args.rows, rng), columns.union_of([fifth_of_each_layer(rng)])
    mean, std = np.zeros(len(cols), np.float32), np.ones(len(cols), np.float32)
    elements = args.rows * len(cols)
    print(f"# gather_rate.py, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}, rows {args.rows}, "
          f"columns {len(cols)}")  # fmt: skip
    t = time.perf_counter()
    want = columns.gather(src, cols, mean, std)
    s = time.perf_counter() - t
    print(f"host gather (numpy): {s:.2f} s, {s / elements * 1e9:.1f} ns an element")
    for attempt in ("first (compiles)", "second"):
        t = time.perf_counter()
        got = columns.union_columns(src, cols, mean, std, np.float32, 2 << 30)
        jax.block_until_ready(got.X)
        s = time.perf_counter() - t
        print(f"union on the device, {attempt}: {s:.2f} s, {s / elements * 1e9:.1f} ns an element")
    same = np.array_equal(np.asarray(got.X)[:, : len(cols)], want)
    print(f"the same matrix: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
