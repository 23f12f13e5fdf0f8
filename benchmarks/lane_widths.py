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
from functools import partial

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
    t = time.perf_counter()
    if widths is None:  # integration's full-width path
        cap = lanes.lanes_within(integration.LANE_BATCH_ELEMENTS, N, M, 1)
        fit = lanes.fit_masks(X, y, 2, lams, masks, max_lanes=cap, shrink=16, **common)
    else:
        fit = lanes.fit_masks(X, y, 2, lams, masks, widths=widths,
                              batch_elements=integration.LANE_BATCH_ELEMENTS, **common)  # fmt: skip
    fit = jax.block_until_ready(fit)
    return time.perf_counter() - t, fit


def run_per_eta(X, y, cand, ks, lams, *, max_iter):
    """Each eta's lanes on its own copy of X, its kept columns first in layer order, so
    the mask (eta, k) is the prefix of its own columns (integration.eta_order)."""
    E = len(PAPER_ETAS)
    masks = integration.integration_masks(cand, E, ks, X.shape[1])
    t = time.perf_counter()
    fits = []
    for e in range(E):
        order = integration.eta_order(cand, X.shape[1], e)
        m = masks[e][:, order]
        fit = lanes.fit_masks(X[:, jax.device_put(order)], y, 2, lams,
                              jax.device_put(m.astype(np.float32)),
                              widths=integration.prefix_widths(m), max_iter=max_iter, tol=1e-4,
                              order=jax.device_put(order.astype(np.int32)),
                              batch_elements=integration.LANE_BATCH_ELEMENTS)  # fmt: skip
        fits.append(fit.replace(weights=fit.weights[:, :, np.argsort(order)]))
    fit = jax.tree.map(lambda *a: jax.numpy.concatenate(a), *fits)
    fit = jax.block_until_ready(fit)
    return time.perf_counter() - t, fit


SHRINK, SMALLEST = 16, 1


def run_eta_widths(X, y, cand, ks, lams, *, max_iter):
    """Each eta's lanes at full width on a copy of X cut to its own kept columns (padded to
    a power of two): shapes that repeat across etas and groups, a few big calls."""
    E, N = len(PAPER_ETAS), X.shape[0]
    masks = integration.integration_masks(cand, E, ks, X.shape[1])
    t = time.perf_counter()
    fits = []
    for e in range(E):
        order = integration.eta_order(cand, X.shape[1], e)
        m = masks[e][:, order]
        width = int(integration.prefix_widths(m).max())
        cols = order[:width]
        cap = lanes.lanes_within(integration.LANE_BATCH_ELEMENTS, N, width, 1)
        fit = lanes.fit_masks(X[:, jax.device_put(cols)], y, 2, lams,
                              jax.device_put(m[:, :width].astype(np.float32)),
                              max_iter=max_iter, tol=1e-4, max_lanes=cap, shrink=SHRINK,
                              smallest=SMALLEST)  # fmt: skip
        w = jax.numpy.zeros((*fit.weights.shape[:2], X.shape[1], 1)).at[:, :, cols].set(fit.weights)
        fits.append(fit.replace(weights=w))
    fit = jax.tree.map(lambda *a: jax.numpy.concatenate(a), *fits)
    fit = jax.block_until_ready(fit)
    return time.perf_counter() - t, fit


def run_integrate(X, y, cand, layers, *, max_iter, bands):
    """`integration.integrate` itself (fit and validation scores), by bands of etas or at
    full width (integration.BY_ETA); validation: the first quarter of the rows again."""
    from types import SimpleNamespace

    saved = dict(integration.BY_ETA)
    integration.BY_ETA.clear()
    if bands:
        integration.BY_ETA[jax.default_backend()] = 0
    opts = SpinOptions(max_iter=max_iter)
    data = SimpleNamespace(opts=opts, n_layers=layers, y=y, yv=y[: len(y) // 4], n_classes=2,
                           metric="accuracy")  # fmt: skip
    try:
        t = time.perf_counter()
        scores, fit, used, _ = integration.integrate(data, X, X[: X.shape[0] // 4], cand)
        return time.perf_counter() - t, jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), fit)
    finally:
        integration.BY_ETA.clear()
        integration.BY_ETA.update(saved)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--width", type=int, default=65536)
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--max-iter", type=int, default=64)
    p.add_argument("--ways", default="full,prefix,eta", help="full, prefix and/or eta")
    p.add_argument("--shrink", type=int, default=16, help="per-eta widths: lanes.fit_masks'")
    p.add_argument("--smallest", type=int, default=1, help="per-eta widths: lanes.fit_masks'")
    args = p.parse_args(argv)
    global SHRINK, SMALLEST
    SHRINK, SMALLEST = args.shrink, args.smallest
    X, y, cand = problem(args.rows, args.width, args.layers)
    E, ks = len(PAPER_ETAS), np.arange(args.layers + 1)
    order = integration.column_order(cand, args.width, E)
    masks = integration.integration_masks(cand, E, ks, args.width).reshape(E * len(ks), -1)
    masks = masks[:, order]
    widths = integration.prefix_widths(masks)
    lams = jax.device_put(probes.lams_from_c(probes.PAPER_C_GRID, args.rows))
    Xd = jax.device_put(X[:, order].astype(solver_dtype(SpinOptions())))
    yd, md = jax.device_put(y), jax.device_put(masks.astype(np.float32))
    od = jax.device_put(order.astype(np.int32))
    R = len(lams)
    print(f"# lane_widths.py, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}; {args}")  # fmt: skip
    by_eta = integration.integration_masks(cand, E, ks, args.width)
    eta_w = [int(integration.prefix_widths(by_eta[e][:, integration.eta_order(cand, args.width, e)])
                 .max()) for e in range(E)]  # fmt: skip
    print(f"per-eta widths {eta_w}: work {sum(eta_w) * len(ks) * len(lams):,}")
    own = [integration.prefix_widths(integration.integration_masks(cand, E, ks, args.width)[e][
        :, integration.eta_order(cand, args.width, e)]).sum() for e in range(E)]
    print(f"{len(masks)} masks x {R} lams; lane x column work of a step: full "
          f"{len(masks) * args.width * R:,}, prefixes {int(widths.sum()) * R:,}, the masks' "
          f"own {int(masks.sum()) * R:,}, per-eta prefixes {int(sum(own)) * R:,}")  # fmt: skip
    print("\n| way | first run s (compiles) | second run s | lane-iterations |")
    print("|---|---:|---:|---:|")
    fits = {}
    ways = {"full": ("full width", None), "prefix": ("prefix widths", widths)}
    Xbase = jax.device_put(X.astype(solver_dtype(SpinOptions())))
    for key in args.ways.split(","):
        if key.startswith("integrate"):
            bands = key == "integrate-bands"
            name = "integrate, " + ("eta bands" if bands else "full width")
            run_i = partial(run_integrate, Xbase, yd, cand, args.layers, max_iter=args.max_iter,
                            bands=bands)  # fmt: skip
            first, _ = run_i()
            second, fit = run_i()
            fit = fit.replace(weights=fit.weights[:, :, order])
        elif key == "eta-width":
            name = "per-eta widths"
            first, _ = run_eta_widths(Xbase, yd, cand, ks, lams, max_iter=args.max_iter)
            second, fit = run_eta_widths(Xbase, yd, cand, ks, lams, max_iter=args.max_iter)
            fit = fit.replace(weights=fit.weights[:, :, order])
        elif key == "eta":
            name = "per-eta prefixes"
            first, _ = run_per_eta(Xbase, yd, cand, ks, lams, max_iter=args.max_iter)
            second, fit = run_per_eta(Xbase, yd, cand, ks, lams, max_iter=args.max_iter)
            fit = fit.replace(weights=fit.weights[:, :, order])  # as the others' layout
        else:
            name, w = ways[key]
            first, _ = run(Xd, yd, md, lams, widths=w, order=od, max_iter=args.max_iter)
            second, fit = run(Xd, yd, md, lams, widths=w, order=od, max_iter=args.max_iter)
        fits[name] = fit
        print(f"| {name} | {first:.2f} | {second:.2f} | {int(np.sum(fit.n_iter)):,} |", flush=True)
    names = list(fits)
    for other in names[1:]:
        a, b = (np.asarray(fits[n].weights, np.float32) for n in (names[0], other))
        both = np.asarray(fits[names[0]].converged) & np.asarray(fits[other].converged)
        gap = np.abs(a - b)[both].max() if both.any() else float("nan")
        print(f"\nlargest weight difference, {names[0]} against {other}: {np.abs(a - b).max():.2e}"
              f" ({gap:.2e} among the {int(both.sum())} lanes both converged)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
