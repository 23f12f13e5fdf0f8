"""The SPIN learner: per-layer L1 probes, eta sparsification, cross-layer integration.

Layer j (1..L) means block j for both representations: hidden[j] (the block's output) and
ffn[j-1] (its FFN activation), so a classifier using layers 1..k needs only the first k
blocks. The embedding output hidden[0] is not a candidate layer.

Feature sources are anything with `read(name, rows=, layers=, poolings=, neurons=)`,
`labels`, `label_names` and `n_rows`: a FeatureStore on disk, MemoryFeatures (numpy) or
DeviceFeatures (jax Arrays). What a source reads stays where it is: features read from the
device are standardised and gathered there, with no copy through the host.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import probes
from spin_jax.devices import n_devices, round_up, shard_problems
from spin_jax.errors import SpinError
from spin_jax.models import POOLINGS
from spin_jax.selection import is_selective

log = logging.getLogger("spin_jax")
REPS = ("hidden", "ffn")
ETAS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.8)




@dataclasses.dataclass(frozen=True)
class SpinOptions:
    etas: tuple[float, ...] = ETAS
    representations: tuple[str, ...] = ("hidden", "ffn", "both")
    poolings: tuple[str, ...] = ("token", "mean", "max", "all")
    n_lams: int = 6
    lam_ratio: float = 1e-2
    lam_grid: str = "auto"  # or "paper": scikit-learn C in probes.PAPER_C_GRID
    metric: str = "auto"  # "accuracy", "macro_f1", or auto: macro-F1 if classes imbalanced
    # "1se": the simplest candidate (fewest layers, then neurons) within one standard error
    # of the best validation score; "exact": the best score, ties broken the same way.
    selection: str = "1se"
    max_iter: int = 1000
    tol: float = 1e-4
    # dtype of the standardised features the solver reads: "auto" is bfloat16 on GPU/TPU
    # (half the bytes of its memory-bound products; see probes.py) and float32 on CPU.
    solver_dtype: str = "auto"
    memory_bytes: int = 2 << 30  # device memory for one chunk of probe features

    def __post_init__(self):
        """Every option checked here, before any probe runs."""
        _one_of("metric", self.metric, ("auto", "accuracy", "macro_f1"))
        _one_of("selection", self.selection, ("1se", "exact"))
        _one_of("lam_grid", self.lam_grid, ("auto", "paper"))
        _one_of("solver_dtype", self.solver_dtype, ("auto", "float32", "bfloat16", "float16"))
        _some_of("representations", self.representations, (*REPS, "both"))
        _some_of("poolings", self.poolings, (*POOLINGS, "all"))
        if isinstance(self.etas, (str, float, int)) or not self.etas:
            raise SpinError(f"etas {self.etas!r}: pass a tuple of shares, e.g. (0.1, 0.5).")
        bad = [e for e in self.etas if not isinstance(e, (int, float)) or not 0 < e <= 1]
        if bad:
            raise SpinError(f"etas {bad}: each eta is a share of weight in (0, 1].")
        for name in ("n_lams", "max_iter", "memory_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpinError(f"{name}={value!r}: pass a positive whole number.")
        if not 0 < self.lam_ratio < 1:
            raise SpinError(f"lam_ratio={self.lam_ratio!r}: pass a number in (0, 1).")
        if not self.tol > 0:
            raise SpinError(f"tol={self.tol!r}: pass a positive number.")


def _one_of(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise SpinError(f"{name} {value!r}: choose one of {', '.join(choices)}.")


def _some_of(name: str, values, choices: tuple) -> None:
    if isinstance(values, str) or not values:
        raise SpinError(f"{name}={values!r}: pass a tuple of some of {', '.join(choices)}.")
    bad = [v for v in values if v not in choices]
    if bad:
        raise SpinError(f"{name} {bad}: choose from {', '.join(choices)}.")


# ---- metrics -----------------------------------------------------------------------------


def choose_metric(metric: str, labels: np.ndarray, n_classes: int) -> str:
    if metric != "auto":
        if metric not in ("accuracy", "macro_f1"):
            raise SpinError(f"metric {metric!r}: choose accuracy, macro_f1 or auto.")
        return metric
    counts = np.bincount(labels, minlength=n_classes)
    return "macro_f1" if counts.max() > 1.5 * max(counts.min(), 1) else "accuracy"


def score(metric: str, y, pred, n_classes: int):
    if metric == "accuracy":
        return probes.accuracy(y, pred)
    return probes.macro_f1(y, pred, n_classes)


# ---- stage 1: one probe per (representation, pooling, layer) -----------------------------


@dataclasses.dataclass
class ProbeTable:
    """Best-lam probe of every layer for one (representation, pooling)."""

    importance: np.ndarray  # [L, F] squared weights summed over classes
    mean: np.ndarray  # [L, F] training statistics
    std: np.ndarray  # [L, F]
    valid: np.ndarray  # [L] validation metric at the chosen lam
    test: np.ndarray | None  # [L]
    weights: np.ndarray  # [L, F, K]
    intercept: np.ndarray  # [L, K]


def layer_axis(rep: str, layers: np.ndarray) -> np.ndarray:
    """Store indices of block layers 1..L: hidden[j], ffn[j-1]."""
    return layers if rep == "hidden" else layers - 1


def read_layers(src, rep, pool, layers, rows=None):
    """[g, N, F] features of block layers `layers` for one pooling (numpy or jax, as read)."""
    x = src.read(rep, rows=rows, layers=layer_axis(rep, layers), poolings=[pool], dtype=None)
    return x[:, :, 0].swapaxes(0, 1)  # a view of numpy, a device op of jax: no host copy


def _lams(X, y, n_classes, opts: SpinOptions, n_rows: int):
    if opts.lam_grid == "paper":
        return probes.lams_from_c(probes.PAPER_C_GRID, n_rows)
    return probes.default_lams(X, y, n_classes, num=opts.n_lams, ratio=opts.lam_ratio)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _standardize_many(X, mean, std, dtype=jnp.float32):
    return ((X.astype(jnp.float32) - mean[:, None]) / std[:, None]).astype(dtype)


def solver_dtype(opts: SpinOptions):
    if opts.solver_dtype == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    if opts.solver_dtype not in ("float32", "bfloat16", "float16"):
        raise SpinError(
            f"solver_dtype {opts.solver_dtype!r}: choose auto, float32, bfloat16 or float16."
        )
    return jnp.dtype(opts.solver_dtype)


def _best_lam(scores: jax.Array) -> jax.Array:
    """Index of the best lam per problem; ties go to the larger lam (the sparser model)."""
    return jnp.argmax(scores, axis=-1)  # lams are sorted largest first; argmax takes the first


def fit_probe_table(
    train, valid, test, rep, pool, n_layers, y, yv, yt, n_classes, metric, opts: SpinOptions
) -> ProbeTable:
    F = train.shape(rep)[-1]
    chunk = max(1, opts.memory_bytes // max(1, 12 * train.n_rows * F))
    chunk = round_up(chunk, n_devices())  # whole problems per device
    parts = []
    for start in range(1, n_layers + 1, chunk):
        layers = np.arange(start, min(start + chunk, n_layers + 1))
        parts.append(
            _probe_chunk(train, valid, test, rep, pool, layers, y, yv, yt, n_classes, metric, opts)
        )
    return ProbeTable(
        *[None if parts[0][i] is None else np.concatenate([p[i] for p in parts]) for i in range(7)]
    )


def _pad_layers(layers: np.ndarray) -> np.ndarray:
    """Repeats the last layer so every device gets whole problems; results are cut back."""
    return np.pad(layers, (0, round_up(len(layers), n_devices()) - len(layers)), mode="edge")


def _probe_chunk(train, valid, test, rep, pool, layers, y, yv, yt, n_classes, metric, opts):
    n = len(layers)
    out = _probe_chunk_padded(
        train, valid, test, rep, pool, _pad_layers(layers), y, yv, yt, n_classes, metric, opts
    )
    return tuple(None if a is None else a[:n] for a in out)


def _probe_chunk_padded(train, valid, test, rep, pool, layers, y, yv, yt, n_classes, metric, opts):
    X = shard_problems(jnp.asarray(read_layers(train, rep, pool, layers)))
    mean, std = jax.vmap(probes.standardize_stats)(X)
    Xs = _standardize_many(X, mean, std, solver_dtype(opts))
    n_rows = X.shape[1]
    lams = jax.vmap(lambda x: _lams(x, y, n_classes, opts, n_rows))(Xs)
    fit = probes.fit_many(Xs, y, n_classes, lams, max_iter=opts.max_iter, tol=opts.tol)
    del X, Xs
    v_scores = _eval(valid, rep, pool, layers, mean, std, fit, yv, n_classes, metric)
    best = _best_lam(v_scores)
    pick = jax.vmap(lambda a, i: a[i])
    W, b = pick(fit.weights, best), pick(fit.intercept, best)
    t = None
    if test is not None:
        t_scores = _eval(test, rep, pool, layers, mean, std, fit, yt, n_classes, metric)
        t = np.asarray(pick(t_scores, best))
    imp = jnp.sum(jnp.square(W), axis=-1)
    return (
        np.asarray(imp),
        np.asarray(mean),
        np.asarray(std),
        np.asarray(pick(v_scores, best)),
        t,
        np.asarray(W),
        np.asarray(b),
    )


def _eval(src, rep, pool, layers, mean, std, fit, y, n_classes, metric):
    """Metric [g, R] of every layer's probe at every lam."""
    Xs = _standardize_many(jnp.asarray(read_layers(src, rep, pool, layers)), mean, std)
    pred = jax.vmap(probes.predict)(Xs, fit.weights, fit.intercept)  # [g, R, N]
    return score(metric, y, pred, n_classes)


# ---- stage 2: sparsify -------------------------------------------------------------------


def kept_neurons(importance: np.ndarray, eta: float) -> np.ndarray:
    """Smallest set of neurons whose share of the layer's squared weight reaches eta."""
    total = importance.sum()
    if total <= 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-importance, kind="stable")
    share = np.cumsum(importance[order]) / total
    n = int(np.searchsorted(share, eta - 1e-12)) + 1
    return np.sort(order[: min(n, len(order))])


# ---- stage 3: integrate layers 1..k ------------------------------------------------------


@dataclasses.dataclass
class Candidates:
    """Columns of an integration problem: which (rep, pooling, layer, neuron) each is."""

    rep: np.ndarray
    pool: np.ndarray
    layer: np.ndarray
    neuron: np.ndarray
    eta_rank: np.ndarray  # the smallest eta index that keeps this neuron

    def __len__(self):
        return len(self.rep)


def candidates(tables: dict, reps, pools, etas) -> Candidates:
    cols = []
    for r in reps:
        for p in pools:
            t = tables[r, p]
            for j in range(len(t.importance)):
                rank = np.full(t.importance.shape[1], len(etas), np.int64)
                for e in reversed(range(len(etas))):  # kept sets grow with eta
                    rank[kept_neurons(t.importance[j], etas[e])] = e
                idx = np.nonzero(rank < len(etas))[0]
                cols.append(
                    (
                        np.full(len(idx), REPS.index(r)),
                        np.full(len(idx), p),
                        np.full(len(idx), j + 1),
                        idx,
                        rank[idx],
                    )
                )
    if not cols:
        return Candidates(*(np.zeros(0, np.int64) for _ in range(5)))
    return Candidates(*(np.concatenate([c[i] for c in cols]) for i in range(5)))


def column_stats(cand: Candidates, tables) -> tuple[np.ndarray, np.ndarray]:
    """Training mean and std [M] of each candidate column."""
    mean, std = np.empty(len(cand), np.float32), np.empty(len(cand), np.float32)
    for (rep, p), t in tables.items():
        cols = np.nonzero((cand.rep == REPS.index(rep)) & (cand.pool == p))[0]
        mean[cols] = t.mean[cand.layer[cols] - 1, cand.neuron[cols]]
        std[cols] = t.std[cand.layer[cols] - 1, cand.neuron[cols]]
    return mean, std


def standardize_columns(x, mean: np.ndarray, std: np.ndarray):
    """(x - mean) / std for numpy or jax x, as a product with the reciprocal of std taken in
    numpy: XLA's division can differ from numpy's in the last bit, its product cannot, so
    features read on the host and on a device standardise to the same bits."""
    return (x - mean) * reciprocal(std)


def reciprocal(std) -> np.ndarray:
    """1 / std in numpy fp32, for `standardize_columns` and the classifier's programs."""
    return np.float32(1.0) / np.asarray(std, np.float32)


def gather(src, cand: Candidates, mean, std, rows=None):
    """[N, M] standardised features of the candidate columns, read group by group.

    numpy; from a source on the device (DeviceFeatures), a jax Array built there.
    """
    if hasattr(src, "read_columns"):
        return _gather_on_device(src, cand, mean, std, rows)
    out = np.empty((src.n_rows if rows is None else len(rows), len(cand)), np.float32)
    keys = np.stack([cand.rep, cand.pool, cand.layer], axis=1)
    for r, p, j in np.unique(keys, axis=0) if len(cand) else []:
        cols = np.nonzero((keys == (r, p, j)).all(axis=1))[0]
        rep = REPS[r]
        x = src.read(
            rep,
            rows=rows,
            layers=layer_axis(rep, np.array([j])),
            poolings=[p],
            neurons=cand.neuron[cols],
        )[:, 0, 0]
        out[:, cols] = standardize_columns(x, mean[cols], std[cols])
    return out


def _gather_on_device(src, cand: Candidates, mean, std, rows=None) -> jax.Array:
    """gather from a DeviceFeatures: one gather program per representation, not per layer."""
    parts, where = [], []
    for r, rep in enumerate(REPS):
        cols = np.nonzero(cand.rep == r)[0]
        if len(cols):
            layers = layer_axis(rep, cand.layer[cols])
            x = src.read_columns(rep, layers, cand.pool[cols], cand.neuron[cols], rows=rows)
            parts.append(standardize_columns(x, mean[cols], std[cols]))
            where.append(cols)
    if not parts:
        return jnp.zeros((src.n_rows if rows is None else len(rows), 0), jnp.float32)
    return jnp.concatenate(parts, axis=1)[:, np.argsort(np.concatenate(where))]


def _pad_cols(X):
    """Pads columns to a power of two (zeros, masked out) so shapes repeat across runs."""
    M = X.shape[1]
    target = max(128, 1 << int(M - 1).bit_length())
    pad = jnp.pad if isinstance(X, jax.Array) else np.pad  # a device array stays there
    return pad(X, ((0, 0), (0, target - M)))


def integration_masks(cand: Candidates, n_etas: int, n_layers: int) -> np.ndarray:
    """featmask [E, L, Mpad]: columns kept at eta e from layers 1..k (padding masked)."""
    M = len(cand)
    Mpad = _pad_cols(np.zeros((1, M))).shape[1]
    layer = np.pad(cand.layer, (0, Mpad - M), constant_values=n_layers + 1)
    rank = np.pad(cand.eta_rank, (0, Mpad - M), constant_values=n_etas)
    in_k = layer[None, None] <= np.arange(1, n_layers + 1)[None, :, None]
    at_eta = rank[None, None] <= np.arange(n_etas)[:, None, None]
    return in_k & at_eta


def integrate(Xtr, Xv, cand: Candidates, n_layers, y, yv, n_classes, metric, opts: SpinOptions):
    """Aggregated probes over layers 1..k for every eta and k, at every lam, in one program.

    Returns valid scores [E, L, R], fit (weights [E, L, R, Mpad, K]) and lams [R].
    """
    E = len(opts.etas)
    masks = integration_masks(cand, E, n_layers).reshape(E * n_layers, -1)
    G = len(masks)
    masks = np.pad(masks, ((0, round_up(G, n_devices()) - G), (0, 0)), mode="edge")
    masks = shard_problems(jnp.asarray(masks, jnp.float32))
    Xtr = jnp.asarray(_pad_cols(Xtr), solver_dtype(opts))
    Xv = jnp.asarray(_pad_cols(Xv))
    if opts.lam_grid == "paper":
        lams = probes.lams_from_c(probes.PAPER_C_GRID, Xtr.shape[0])
    else:
        lams = probes.default_lams(
            Xtr, y, n_classes, num=opts.n_lams, ratio=opts.lam_ratio, featmask=masks[-1]
        )
    fit = _fit_masks(Xtr, y, n_classes, lams, masks, opts.max_iter, opts.tol)
    fit = jax.tree.map(lambda a: a[:G], fit)
    pred = _predict_masks(Xv, fit.weights, fit.intercept)
    scores = score(metric, yv, pred, n_classes).reshape(E, n_layers, -1)
    fit = jax.tree.map(lambda a: a.reshape(E, n_layers, *a.shape[1:]), fit)
    return np.asarray(scores), fit, np.asarray(lams)


@jax.jit
def _predict_masks(X, weights, intercept):
    return jax.vmap(probes.predict, in_axes=(None, 0, 0))(X, weights, intercept)


# Integration on one device: the (mask, lam) lanes stepped together hold about this many
# fp32 elements of per-lane work (logits and residuals [N, K], FISTA state [M, K]).
LANE_BATCH_ELEMENTS = 1 << 28
# When converged lanes leave the batch (probes.fit_masks `shrink`). On an H100 a round of
# 1296 lanes took ~0.01 s and each new batch size ~1.4 s to compile, so there the batch
# shrinks rarely; on a CPU the steps dominate and it halves (benchmarks/RESULTS.md).
LANE_SHRINK = {"cpu": 2}
LANE_SHRINK_ACCELERATOR = 16


def _fit_masks(X, y, n_classes, lams, masks, max_iter, tol):
    """fit_path for each feature mask [G, M] on shared X.

    One device: `probes.fit_masks`, whose converged lanes leave the batch between rounds.
    Several: all problems at once, split over the devices by the masks' sharding.
    """
    if n_devices() > 1:
        return _fit_masks_sharded(X, y, n_classes, lams, masks, max_iter, tol)
    N, M = X.shape
    K = probes.n_columns(n_classes)
    max_lanes = max(1, LANE_BATCH_ELEMENTS // ((3 * N + 8 * (M + 1)) * K))
    shrink = LANE_SHRINK.get(jax.default_backend(), LANE_SHRINK_ACCELERATOR)
    return probes.fit_masks(
        X,
        y,
        n_classes,
        lams,
        masks,
        max_iter=max_iter,
        tol=tol,
        max_lanes=max_lanes,
        shrink=shrink,
    )


@functools.partial(jax.jit, static_argnames=("n_classes", "max_iter"))
def _fit_masks_sharded(X, y, n_classes, lams, masks, max_iter, tol):
    def one(m):
        return probes._fit_path(X, y, n_classes, lams, None, m, max_iter, tol)

    return jax.vmap(one)(masks)


@dataclasses.dataclass
class SpinHead:
    """Kept neurons, their training statistics and the aggregated linear classifier."""

    rep: np.ndarray  # [M] 0 hidden, 1 ffn
    pool: np.ndarray  # [M] index into POOLINGS
    layer: np.ndarray  # [M] block layer 1..k
    neuron: np.ndarray  # [M]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray  # [M, K]
    intercept: np.ndarray  # [K]
    num_layers: int

    def candidates(self) -> Candidates:
        return Candidates(
            self.rep, self.pool, self.layer, self.neuron, np.zeros(len(self.rep), np.int64)
        )

    def features(self, src, rows=None):
        """[N, M] standardised kept columns of `src` (numpy, or jax from a device source)."""
        return gather(src, self.candidates(), self.mean, self.std, rows)

    def proba(self, Xs) -> np.ndarray:
        return np.asarray(
            probes.predict_proba(
                jnp.asarray(Xs), jnp.asarray(self.weights), jnp.asarray(self.intercept)
            )
        )


# ---- the whole fit -----------------------------------------------------------------------


@dataclasses.dataclass
class Choice:
    """One candidate final classifier, comparable by validation score then simplicity."""

    valid: float
    k: int
    n_neurons: int
    rep: str
    pooling: str
    eta: float
    lam: float
    weights: np.ndarray  # [M, K] on standardised candidate columns
    intercept: np.ndarray
    cand: Candidates
    mean: np.ndarray  # [M] training statistics of the candidate columns
    std: np.ndarray
    per_k_valid: list[float]

    @property
    def layers_used(self) -> int:
        """Blocks inference must run: the deepest layer with a non-zero weight (<= k)."""
        used = np.any(self.weights != 0, axis=1)
        return int(self.cand.layer[used].max()) if used.any() else 0

    def head(self) -> SpinHead:
        """The final classifier: only the columns with a non-zero weight."""
        used = np.any(self.weights != 0, axis=1)
        c = self.cand
        return SpinHead(
            c.rep[used],
            c.pool[used],
            c.layer[used],
            c.neuron[used],
            self.mean[used],
            self.std[used],
            self.weights[used],
            self.intercept,
            self.layers_used,
        )

    def key(self):
        return (-round(self.valid, 9), self.layers_used, self.n_neurons)


def _rep_sets(opts):
    out = []
    for r in opts.representations:
        if r not in ("hidden", "ffn", "both"):
            raise SpinError(f"representation {r!r}: choose from hidden, ffn, both.")
        out.append((r, REPS if r == "both" else (r,)))
    return out


def _pool_sets(opts):
    out = []
    for p in opts.poolings:
        if p != "all" and p not in POOLINGS:
            raise SpinError(f"pooling {p!r}: choose from {POOLINGS} or 'all'.")
        out.append((p, tuple(range(len(POOLINGS))) if p == "all" else (POOLINGS.index(p),)))
    return out


def check_labels(y: np.ndarray, yv: np.ndarray, n_classes: int):
    present = np.unique(y)
    if len(present) < 2:
        raise SpinError(
            f"the training labels hold only one class ({present.tolist()}); a "
            "classifier needs at least two."
        )
    unseen = np.setdiff1d(np.unique(yv), present)
    if len(unseen):
        raise SpinError(
            f"validation labels {unseen.tolist()} never occur in training; use a stratified split."
        )


def fit_spin(
    train,
    valid,
    test=None,
    opts: SpinOptions = SpinOptions(),
    n_layers=None,
    head_fn=None,
    progress: bool = False,
    checkpoint_dir=None,
) -> tuple[SpinHead, dict]:
    """Runs stages 1-3 and model selection. Returns (SpinHead, report dict).

    progress=True shows a bar (rate, ETA) over the probe groups and integration runs.
    checkpoint_dir keeps each finished probe group, so a crashed fit resumes after it.
    """
    times = {}
    for src, what in ((train, "train"), (valid, "validation"), (test, "test")):
        if src is not None:
            require_full(src, what)
    y, yv = _labels(train, "train"), _labels(valid, "validation")
    yt = _labels(test, "test") if test is not None else None
    n_classes = len(train.label_names) if train.label_names else int(y.max()) + 1
    check_labels(np.asarray(y), np.asarray(yv), n_classes)
    metric = choose_metric(opts.metric, np.asarray(y), n_classes)
    solver_dtype(opts)  # a bad option fails here, before any probe runs
    L = n_layers or train.shape("ffn")[1]
    pools_used = sorted({i for _, ps in _pool_sets(opts) for i in ps})
    reps_used = sorted({r for _, rs in _rep_sets(opts) for r in rs})
    run_key = _run_key(opts, train, valid, test)

    t0 = time.perf_counter()
    tables = {}
    bar = _progress(len(reps_used) * len(pools_used), "probes", progress)
    for rep in reps_used:
        for p in pools_used:
            bar.set_postfix_str(f"{rep}/{POOLINGS[p]}")
            tables[rep, p] = _cached(
                checkpoint_dir,
                f"probes-{rep}-{POOLINGS[p]}",
                run_key,
                lambda rep=rep, p=p: fit_probe_table(
                    train, valid, test, rep, p, L, y, yv, yt, n_classes, metric, opts
                ),
            )
            log.info(
                "probes %s/%s: best layer %d valid %.4f",
                rep,
                POOLINGS[p],
                int(np.argmax(tables[rep, p].valid)) + 1,
                tables[rep, p].valid.max(),
            )
            bar.update()
    bar.close()
    times["probes_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    choices = []
    bar = _progress(len(_rep_sets(opts)) * len(_pool_sets(opts)), "integration", progress)
    for rname, reps in _rep_sets(opts):
        for pname, pools in _pool_sets(opts):
            bar.set_postfix_str(f"{rname}/{pname}")
            choices.extend(
                _integrate_combo(
                    train,
                    valid,
                    tables,
                    rname,
                    reps,
                    pname,
                    pools,
                    L,
                    y,
                    yv,
                    n_classes,
                    metric,
                    opts,
                )
            )
            bar.update()
    bar.close()
    times["integration_s"] = time.perf_counter() - t0
    choices = [c for c in choices if c.n_neurons > 0]
    if not choices:
        raise SpinError(
            "every probe came out all-zero: the features carry no signal the "
            "probes could use. Check that labels match texts."
        )
    best = select(choices, opts.selection, valid.n_rows)
    head = best.head()
    spin = {
        "valid": _head_score(head, valid, yv, n_classes, metric),
        "num_layers": head.num_layers,
        "n_neurons": int(len(head.rep)),
    }
    spin["test"] = None if test is None else _head_score(head, test, yt, n_classes, metric)
    report = _report(
        spin,
        best,
        choices,
        tables,
        train,
        valid,
        test,
        yv,
        yt,
        n_classes,
        metric,
        head_fn,
        L,
        times,
    )
    return head, report


def _run_key(opts: SpinOptions, *sources) -> str:
    """What a probe checkpoint depends on: the options and the identity of every split."""
    ident = [None if s is None else (dict(s.manifest), int(s.n_rows)) for s in sources]
    labels = [None if s is None else np.asarray(s.labels).tolist() for s in sources]
    blob = json.dumps([dataclasses.asdict(opts), ident, labels], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _cached(folder, name: str, key: str, compute) -> ProbeTable:
    """compute(), or its result saved in folder/name.npz by a run with the same key."""
    if folder is None:
        return compute()
    path = Path(folder) / f"{name}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                log.info("probes %s: reusing %s", name, path)
                return ProbeTable(
                    **{
                        f.name: z[f.name] if f.name in z else None
                        for f in dataclasses.fields(ProbeTable)
                    }
                )
    table = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in dataclasses.asdict(table).items() if v is not None}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, key=np.asarray(key), **arrays)
    os.replace(tmp, path)  # atomic: a crash leaves the old file or none
    return table


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="group", disable=not enabled)


def select(choices: list[Choice], rule: str, n_valid: int) -> Choice:
    """Best validation score, or the simplest candidate within one standard error of it."""
    best = min(choices, key=Choice.key)
    if rule == "exact":
        return best
    if rule != "1se":
        raise SpinError(f"selection {rule!r}: choose 1se or exact.")
    p = min(max(best.valid, 0.0), 1.0)
    se = np.sqrt(p * (1 - p) / max(n_valid, 1))
    close = [c for c in choices if c.valid >= best.valid - se]
    return min(close, key=lambda c: (c.layers_used, c.n_neurons, -c.valid))


def require_full(src, what: str) -> None:
    """Refuses a selective feature source (only some neurons) where every neuron is needed."""
    if is_selective(src):
        raise SpinError(
            f"the {what} features hold only selected neurons (an extraction with --neurons or "
            "--classifier); fitting needs every neuron of every layer. Extract the training "
            "and validation splits without a selection."
        )


def _labels(src, what):
    if src.labels is None:
        raise SpinError(f"the {what} split has no labels; pass a label column.")
    return jnp.asarray(np.asarray(src.labels, np.int32))


def _integrate_combo(
    train, valid, tables, rname, reps, pname, pools, L, y, yv, n_classes, metric, opts
) -> list[Choice]:
    """Every (eta, k) candidate of one (representation, pooling) set, at its best lam."""
    cand = candidates(tables, reps, pools, opts.etas)
    if len(cand) == 0:
        return []  # every probe of this combination is all-zero
    mean, std = column_stats(cand, tables)
    Xtr, Xv = gather(train, cand, mean, std), gather(valid, cand, mean, std)
    out = []
    scores, fit, lams = integrate(Xtr, Xv, cand, L, y, yv, n_classes, metric, opts)
    r_best = np.argmax(scores, axis=2)  # [E, L]; ties -> larger lam
    ks = np.arange(L)
    for e, eta in enumerate(opts.etas):
        if not np.any(cand.eta_rank <= e):
            continue
        W = np.asarray(fit.weights[e, ks, r_best[e]])[:, : len(cand)]  # [L, M, K]
        b = np.asarray(fit.intercept[e, ks, r_best[e]])
        per_k = [float(x) for x in scores[e].max(axis=1)]
        for k in range(1, L + 1):
            used = int(np.count_nonzero(np.any(W[k - 1] != 0, axis=1)))
            out.append(
                Choice(
                    float(scores[e, k - 1, r_best[e, k - 1]]),
                    k,
                    used,
                    rname,
                    pname,
                    eta,
                    float(lams[r_best[e, k - 1]]),
                    W[k - 1],
                    b[k - 1],
                    cand,
                    mean,
                    std,
                    per_k,
                )
            )
    return out


def _head_score(head: SpinHead, src, y, n_classes, metric) -> float:
    pred = np.argmax(head.proba(head.features(src)), axis=-1)
    return float(score(metric, y, jnp.asarray(pred), n_classes))


def _report(
    spin, best, choices, tables, train, valid, test, yv, yt, n_classes, metric, head_fn, L, times
) -> dict[str, Any]:
    per_layer = {
        f"{r}/{POOLINGS[p]}": {
            "valid": t.valid.tolist(),
            "test": None if t.test is None else t.test.tolist(),
        }
        for (r, p), t in tables.items()
    }
    emb = tables.get(("hidden", 0))
    baselines = {}
    if emb is not None:
        baselines["embedding"] = {
            "layer": L,
            "valid": float(emb.valid[-1]),
            "test": None if emb.test is None else float(emb.test[-1]),
        }
    (br, bp), bt = max(tables.items(), key=lambda kv: (kv[1].valid.max(), -kv[0][1]))
    j = int(np.argmax(bt.valid))
    baselines["best_single_layer"] = {
        "representation": br,
        "pooling": POOLINGS[bp],
        "layer": j + 1,
        "valid": float(bt.valid[j]),
        "test": None if bt.test is None else float(bt.test[j]),
    }
    if head_fn is not None:
        baselines["fine_tuned_head"] = head_fn(valid, test, yv, yt, n_classes, metric)
    kept = _kept_per_layer(best, L)
    return {
        "metric": metric,
        "n_classes": n_classes,
        "n_train": int(train.n_rows),
        "n_valid": int(valid.n_rows),
        "n_test": None if test is None else int(test.n_rows),
        "chosen": {
            "representation": best.rep,
            "pooling": best.pooling,
            "eta": best.eta,
            "num_layers": best.layers_used,
            "k": best.k,
            "n_neurons": best.n_neurons,
            "valid": best.valid,
        },
        "spin": spin,
        "baselines": baselines,
        "per_layer_probes": per_layer,
        "per_k_integration_valid": best.per_k_valid,
        "neurons_kept_per_layer": kept,
        "candidates": _best_per_combo(choices),
        "times": times,
    }


def _best_per_combo(choices: list[Choice]) -> list[dict]:
    best = {}
    for c in choices:
        key = (c.rep, c.pooling)
        if key not in best or c.key() < best[key].key():
            best[key] = c
    return [
        {
            "representation": c.rep,
            "pooling": c.pooling,
            "eta": c.eta,
            "num_layers": c.layers_used,
            "n_neurons": c.n_neurons,
            "valid": c.valid,
        }
        for c in best.values()
    ]


def _kept_per_layer(best: Choice, L: int) -> list[int]:
    used = np.any(best.weights != 0, axis=1)
    layers = best.cand.layer[used]
    return [int(np.sum(layers == j)) for j in range(1, L + 1)]
