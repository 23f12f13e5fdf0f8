"""Where the integration stage's time goes: FISTA iterations per group, mean against max.

Runs `fit_spin` on synthetic features (planted signal in three neurons) and, for each
integration group (representation set x pooling set), prints its seconds, its number of
candidate columns M, the mean FISTA iterations over its (eta, k, lam) problems, and the
largest count at each lam. Each (eta, k, lam) problem is a lane of `lanes.fit_masks`;
converged lanes leave the batch between rounds, so time follows the sum of the lanes'
iterations (and, on a GPU, the compiles of each batch size).

Run: PYTHONPATH=. python benchmarks/integration_iters.py [--layers 24 --rows 1500]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from spin_jax import integration
from spin_jax.extraction import MemoryFeatures
from spin_jax.learner import SpinOptions, fit_spin


def synthetic(n, layers, d, f, seed):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, layers + 1, 3, d)).astype(np.float32)
    ffn = rng.normal(size=(n, layers, 3, f)).astype(np.float32)
    signal = ffn[:, 5, 1, 3] + ffn[:, 11, 2, 7] + 0.5 * hidden[:, 18, 0, 9]
    y = (signal + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    return MemoryFeatures({"hidden": hidden, "ffn": ffn}, y, ("a", "b"), {})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--width", type=int, default=128, help="hidden width; FFN is 4x")
    p.add_argument("--rows", type=int, default=1500, help="training rows (validation: 1/3)")
    p.add_argument(
        "--batch-elements",
        default=None,
        help="integration.lane_batch_elements() values to compare, e.g. 2**26,2**30",
    )
    p.add_argument("--solver-dtype", default="auto", help="SpinOptions.solver_dtype")
    args = p.parse_args()
    for value in (args.batch_elements or "").split(",") if args.batch_elements else [None]:
        if value is not None:
            base, _, exp = value.partition("**")
            elements = int(base) ** int(exp or 1)  # on whatever backend this runs
            integration.LANE_BATCH_ELEMENTS = integration.LANE_BATCH_ELEMENTS_ACCELERATOR = elements
            print(f"\nLANE_BATCH_ELEMENTS = {value}")
        run(args)


def run(args):
    if args.layers < 19:
        raise SystemExit("--layers must be at least 19 (the planted signal sits in layer 18)")
    train = synthetic(args.rows, args.layers, args.width, 4 * args.width, 0)
    valid = synthetic(args.rows // 3, args.layers, args.width, 4 * args.width, 1)
    rows, integrate = [], integration.integrate

    def timed(data, Xtr, Xv, cand, *width):
        t = time.perf_counter()
        out = integrate(data, Xtr, Xv, cand, *width)  # numpy: the solve has finished
        rows.append((len(cand), time.perf_counter() - t, np.asarray(out[1].n_iter)))
        return out

    integration.integrate = timed
    try:
        t = time.perf_counter()
        _, report = fit_spin(train, valid, opts=SpinOptions(solver_dtype=args.solver_dtype))
        total = time.perf_counter() - t
    finally:
        integration.integrate = integrate
    kind = jax.devices()[0].device_kind
    print(f"{kind}; {args.layers} layers, {args.rows} rows; fit {total:.1f}s")
    print(f"times: {report['times']}")
    print("| M | seconds | mean iters | max iters at each lam (largest lam first) |")
    print("|---:|---:|---:|---|")
    for m, s, n_iter in rows:
        per_lam = n_iter.reshape(-1, n_iter.shape[-1]).max(0).tolist()
        print(f"| {m} | {s:.1f} | {n_iter.mean():.0f} | {per_lam} |")


if __name__ == "__main__":
    main()
