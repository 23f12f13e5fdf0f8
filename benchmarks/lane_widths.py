"""Integration's lane solve at one group's shape: every lane at full width against each
(eta, k) mask stepped on its prefix of columns (`integration.column_order`), same problems.

Synthetic and standardised: X [N, P] (the solver's dtype), labels from a sparse linear
model, candidate columns spread over L + 1 layers with eta ranks whose kept sets grow with
eta as probes' do. Every (eta, k, lam) lane runs `--max-iter` iterations at most, so the
timing is of a bounded amount of work; both ways solve the same problems (their weights are
compared). Each way runs twice in the process: the first run includes its compiles.

    PYTHONPATH=. python benchmarks/lane_widths.py                     # GPT2-XL group, GPU
    PYTHONPATH=. python benchmarks/lane_widths.py --rows 2000 --width 4096 --layers 6  # CPU
"""

from __future__ import annotations

import argparse
import datetime
import time

import jax
import numpy as np

from spin_jax import integration, lanes, probes
from spin_jax.columns import Columns
from spin_jax.options import PAPER_ETAS, SpinOptions, solver_dtype


def problem(rows: int, width: int, layers: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, width), np.float32)
    w = np.zeros(width, np.float32)
    w[rng.choice(width, 64, replace=False)] = rng.standard_normal(64)
    y = (X @ w + rng.standard_normal(rows) > 0).astype(np.int32)
    E = len(PAPER_ETAS)
    # Kept sets that grow with eta: a column's rank is where its share is first reached.
    rank = np.minimum(np.searchsorted(np.asarray(PAPER_ETAS), rng.random(width) ** 0.7), E - 1)
    layer = rng.integers(0, layers + 1, width)
    cand = Columns(np.zeros(width, int), np.zeros(width, int), layer, np.arange(width), rank)
    return X, y, cand


def run(X, y, masks, lams, *, widths, order, max_iter):
    N, M = X.shape
    common = dict(max_iter=max_iter, tol=1e-4, order=order)
    elements = integration.lane_batch_elements()
    t = time.perf_counter()
    if widths is None:  # integration's full-width path
        cap = lanes.lanes_within(elements, N, M, 1)
        fit = lanes.fit_masks(X, y, 2, lams, masks, max_lanes=cap, shrink=16, **common)
    else:
        fit = lanes.fit_masks(X, y, 2, lams, masks, widths=widths,
                              batch_elements=elements, **common)  # fmt: skip
    fit = jax.block_until_ready(fit)
    return time.perf_counter() - t, fit


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--width", type=int, default=65536)
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--max-iter", type=int, default=64)
    p.add_argument("--ways", default="full,prefix", help="full and/or prefix")
    args = p.parse_args(argv)
    X, y, cand = problem(args.rows, args.width, args.layers)
    E, ks = len(PAPER_ETAS), np.arange(args.layers + 1)
    order = integration.column_order(cand, args.width, E)
    masks = integration.integration_masks(cand, E, ks, args.width).reshape(E * len(ks), -1)
    masks = masks[:, order]
    widths = integration.prefix_widths(integration.mask_extents(masks), args.width)
    lams = jax.device_put(probes.lams_from_c(probes.PAPER_C_GRID, args.rows))
    Xd = jax.device_put(X[:, order].astype(solver_dtype(SpinOptions())))
    yd, md = jax.device_put(y), jax.device_put(masks.astype(np.float32))
    od = jax.device_put(order.astype(np.int32))
    R = len(lams)
    print(f"# lane_widths.py, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}; {args}")  # fmt: skip
    print(f"{len(masks)} masks x {R} lams; lane x column work of a step: full "
          f"{len(masks) * args.width * R:,}, prefixes {int(widths.sum()) * R:,}, the masks' "
          f"own {int(masks.sum()) * R:,}")  # fmt: skip
    print("\n| way | first run s (compiles) | second run s | lane-iterations |")
    print("|---|---:|---:|---:|")
    fits = {}
    ways = {"full": ("full width", None), "prefix": ("prefix widths", widths)}
    for name, w in (ways[k] for k in args.ways.split(",")):
        first, _ = run(Xd, yd, md, lams, widths=w, order=od, max_iter=args.max_iter)
        second, fit = run(Xd, yd, md, lams, widths=w, order=od, max_iter=args.max_iter)
        fits[name] = fit
        print(f"| {name} | {first:.2f} | {second:.2f} | {int(np.sum(fit.n_iter)):,} |")
    if len(fits) == 2:
        a, b = (np.asarray(f.weights, np.float32) for f in fits.values())
        print(f"\nlargest weight difference between the ways: {np.abs(a - b).max():.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
