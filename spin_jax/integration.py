"""Stages 2 and 3: keep each layer's neurons that hold a share eta of its probe's squared
weight, then fit the aggregated classifier on the kept neurons of layers 1..k, for every
(eta, k) and lam at once, as lanes of one solver (lanes.fit_masks)."""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import ahead, lanes, probes
from spin_jax.columns import REPS, Columns, gather, padded_width, union_of, union_width
from spin_jax.columns import union_columns as columns_union
from spin_jax.devices import n_devices, round_up, shard_problems, solver_jit
from spin_jax.head import Choice
from spin_jax.options import FitData, score, solver_dtype

log = logging.getLogger("spin_jax")

# Integration on one device: the (mask, lam) lanes stepped together hold about this many
# fp32 elements of per-lane work (logits and residuals [N, K], FISTA state [M, K]). On an
# accelerator 4x as many: an H200's lane-iteration at 10000 x 262144 took 67 us in a batch
# of 64 lanes and 48 us in one of 256 or 1024, whose products are no longer bound by reading
# X (benchmarks/lane_rate.py, RESULTS.md session 18); 2^28 held 126 lanes at that width.
LANE_BATCH_ELEMENTS = 1 << 28
LANE_BATCH_ELEMENTS_ACCELERATOR = 1 << 30


def lane_batch_elements() -> int:
    cpu = jax.default_backend() == "cpu"
    return LANE_BATCH_ELEMENTS if cpu else LANE_BATCH_ELEMENTS_ACCELERATOR


# When converged lanes leave the batch (lanes.fit_masks `shrink`). On an H100 a round of
# 1296 lanes took ~0.01 s and each new batch size ~1.4 s to compile, so there the batch
# shrinks rarely; on a CPU the steps dominate, but each size compiles in ~2 s too: a
# quarter (measured 7% slower than halving on a step-bound fit, with half the compiles).
LANE_SHRINK = {"cpu": 4}
LANE_SHRINK_ACCELERATOR = 16


def kept_neurons(importance: np.ndarray, eta: float) -> np.ndarray:
    """Smallest set of neurons whose share of the layer's squared weight reaches eta."""
    total = importance.sum()
    if total <= 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-importance, kind="stable")
    share = np.cumsum(importance[order]) / total
    n = int(np.searchsorted(share, eta - 1e-12)) + 1
    return np.sort(order[: min(n, len(order))])


def candidates(tables: dict, reps, pools, etas) -> Columns:
    """The columns kept at the largest eta, each ranked by the smallest eta that keeps it."""
    cols = []
    for r in reps:
        for p in pools:
            t = tables[r, p]
            for j in range(len(t.importance)):
                rank = np.full(t.importance.shape[1], len(etas), np.int64)
                for e in reversed(range(len(etas))):  # kept sets grow with eta
                    rank[kept_neurons(t.importance[j], etas[e])] = e
                idx = np.nonzero(rank < len(etas))[0]
                n = len(idx)
                cols.append(
                    (
                        np.full(n, REPS.index(r)),
                        np.full(n, p),
                        np.full(n, t.layers[j]),
                        idx,
                        rank[idx],
                    )
                )
    if not cols:
        return Columns.empty()
    return Columns(*(np.concatenate([c[i] for c in cols]) for i in range(5)))


def column_stats(cand: Columns, tables) -> tuple[np.ndarray, np.ndarray]:
    """Training mean and std [M] of each candidate column."""
    mean, std = np.empty(len(cand), np.float32), np.empty(len(cand), np.float32)
    for (rep, p), t in tables.items():
        cols = np.nonzero((cand.rep == REPS.index(rep)) & (cand.pool == p))[0]
        row = t.row(cand.layer[cols])
        mean[cols] = t.mean[row, cand.neuron[cols]]
        std[cols] = t.std[row, cand.neuron[cols]]
    return mean, std


# Below this many elements in a full batch's products (lanes x N x width), stepping
# converged lanes along costs less than compiling a smaller batch (~2 s each on a CPU).
NO_SHRINK_ELEMENTS = 1 << 27
# Groups share one width while a full batch's features stay this small ([N, width]
# elements); past it, a small group should not pay the largest one's width. Where lanes
# step only their prefixes (`by_width`), the padding is held but never stepped: None there
# shares the widest group's own width whatever its size (memory decides: `union_columns`
# checks the widest group, which is as wide either way). On one H200 GPT2-XL's 12 groups,
# each its own width, compiled 177 programs in 67 s of a 240 s fit (RESULTS.md, session
# 20): every step program's shapes held its group's width. With one width an H100 compiled
# 70 against 211; on 2 CPU cores MiniLM's integration at 6000 + 1500 rows took 118-120 s
# against 127-137 s at a power of two, and the demo's the same (session 21).
SHARED_ELEMENTS = 1 << 27
SHARED_ELEMENTS_BY_WIDTH = {"gpu": None, "cpu": None}


def shared_width(widths, n_rows: int) -> int | None:
    """One padded width for every group, or None (each its own).

    Each new width compiles the lane programs again: ~15 s on a GPU, ~2 s on a CPU, against
    ~0.01 s a round for a small group (benchmarks/RESULTS.md). So small fits pad every
    group to the widest. At GPT2-XL scale (10000 rows, the widest group ~50k columns) that
    padding made every group as slow as the widest when all lanes stepped every column,
    so large fits keep a width per group unless lanes step their prefixes alone."""
    if not widths:
        return None
    width, limit = padded_width(max(widths)), SHARED_ELEMENTS
    if by_width(n_devices(), n_rows, width):
        limit = SHARED_ELEMENTS_BY_WIDTH.get(jax.default_backend(), limit)
        if limit is None:
            return own_width(max(widths), n_rows)
    return width if width * n_rows <= limit else None


def _pad_cols(X, width: int | None = None):
    """Pads columns with zeros (masked out) to `width`, or to `padded_width`."""
    M = X.shape[1]
    target = width or padded_width(M)
    if target == M:
        return X
    pad = jnp.pad if isinstance(X, jax.Array) else np.pad  # a device array stays there
    return pad(X, ((0, 0), (0, target - M)))


def _padded_layers(cand: Columns, width: int) -> np.ndarray:
    """The layer of each of `width` columns; padding columns come after every layer."""
    return np.pad(cand.layer, (0, width - len(cand)), constant_values=np.iinfo(np.int32).max)


def integration_masks(cand: Columns, n_etas: int, ks: np.ndarray, width=None) -> np.ndarray:
    """featmask [E, len(ks), Mpad]: columns kept at eta e from layers up to k (padding masked)."""
    rank, layer = mask_columns(cand, width or padded_width(len(cand)), n_etas)
    in_k = layer[None, None] <= np.asarray(ks)[None, :, None]
    at_eta = rank[None, None] <= np.arange(n_etas)[:, None, None]
    return in_k & at_eta


def mask_columns(cand: Columns, width: int, n_etas: int, order=None):
    """(eta rank, layer) [width] int32 of each padded column, in `order` if given: the mask
    (e, k) keeps the columns of rank <= e and layer <= k; padding has neither."""
    rank = np.pad(cand.eta_rank, (0, width - len(cand)), constant_values=n_etas)
    rank, layer = rank.astype(np.int32), _padded_layers(cand, width).astype(np.int32)
    return (rank, layer) if order is None else (rank[order], layer[order])


# The masks [E * D, M] are built on the device from each column's rank and layer: built on
# the host, permuted and cast there, GPT2-XL's 490 masks of 245760 columns (one shared
# width) took ~2-3 s a group on a CPU core, more than most groups' lane steps.
@functools.partial(solver_jit, static_argnames=("rows",))
def _masks(rank, layer, etas, ks, *, rows: int):
    """float32 [rows, M]: row e * D + d keeps the columns of rank <= etas[e] and layer <=
    ks[d]; rows past E * D repeat the last (the padding of several devices)."""
    keep = (rank[None, None] <= etas[:, None, None]) & (layer[None, None] <= ks[None, :, None])
    masks = keep.reshape(-1, rank.shape[0]).astype(jnp.float32)
    extra = rows - masks.shape[0]
    return jnp.concatenate([masks, jnp.repeat(masks[-1:], extra, axis=0)]) if extra else masks


def column_extents(rank, layer, n_etas: int, ks) -> np.ndarray:
    """[E * len(ks)]: 1 + the position of each mask's last kept column (0: none), from the
    columns' rank and layer (`mask_columns`) alone, without the masks (O(M + E * D))."""
    ks = np.asarray(ks)
    real = rank < n_etas
    first_k = np.searchsorted(ks, layer[real], side="left")  # the first depth that keeps it
    last = np.zeros((n_etas, len(ks) + 1), np.int64)
    np.maximum.at(last, (rank[real], first_k), np.nonzero(real)[0] + 1)
    last = np.maximum.accumulate(np.maximum.accumulate(last, axis=0), axis=1)  # rank <= e, k >= l
    return last[:, : len(ks)].reshape(-1)


def mask_extents(masks: np.ndarray) -> np.ndarray:
    """[G]: 1 + the position of each mask's last kept column (0: none)."""
    used = masks.shape[1] - np.argmax(masks[:, ::-1], axis=1)
    return np.where(masks.any(axis=1), used, 0)


def depths(data: FitData) -> np.ndarray:
    """The k of every integration problem: layers first..k, up to the layer budget."""
    first = 0 if data.opts.embedding_layer else 1
    return np.arange(first, data.opts.max_layer(data.n_layers) + 1)


def integrate(
    data: FitData, Xtr, Xv, cand: Columns, width: int | None = None, ordered=False, narrow=False
):
    """Aggregated probes over layers up to k for every eta and k (`depths`), at every lam,
    in one program, columns padded to `width` (default: `padded_width`); ordered: Xtr and
    Xv's columns are already in `layout`'s order; narrow: prefix widths stepped on copies
    of their prefixes (`lanes.fit_masks`), for groups that do not share one width. Returns,
    in numpy, valid scores
    [E, D, R], fit (weights [E, D, Mpad, K] and intercept [E, D, K] at each (eta, k)'s
    `best_lams`; n_iter and converged [E, D, R]), the neurons each uses [E, D, R] and lams
    [R]."""
    opts, D = data.opts, len(depths(data))
    E = len(opts.etas)
    G, Xtr, Xv, ks = E * D, _pad_cols(Xtr, width), _pad_cols(Xv, width), depths(data)
    M = Xtr.shape[1]
    order, widths = layout(data, cand, M), None
    rank, layer = mask_columns(cand, M, E, order)
    if order is not None:  # each mask's columns in a short prefix (`column_order`)
        if not ordered:
            Xtr, Xv = _in_order(Xtr, order), _in_order(Xv, order)
        cap = own_width(len(cand), data.train.n_rows)
        widths = prefix_widths(column_extents(rank, layer, E, ks), cap)
    Xtr, Xv = _to_device(Xtr, solver_dtype(opts)), _to_device(Xv, jnp.float32)
    # device_put, not jnp.asarray: jax compiles a program per shape to stage numpy input.
    last = jax.device_put(((rank < E) & (layer <= ks[-1])).astype(np.float32))  # the widest
    if opts.lam_grid == "paper":
        lams = jax.device_put(probes.lams_from_c(probes.PAPER_C_GRID, Xtr.shape[0]))
    else:
        lams = probes.default_lams(
            Xtr, data.y, data.n_classes, num=opts.n_lams, ratio=opts.lam_ratio, featmask=last
        )
    columns = jax.device_put((rank, layer, np.arange(E, dtype=np.int32), ks.astype(np.int32)))
    masks = shard_problems(ahead.call(_masks, *columns, rows=round_up(G, n_devices())))
    scoring = dict(shape=(G, E, D), metric=data.metric, n_classes=data.n_classes)
    if n_devices() == 1:  # (with several devices the fit comes sharded: a guess would miss)
        K = probes.n_columns(data.n_classes)
        fit_spec = _fit_spec(masks.shape[0], len(lams), masks.shape[1], K)
        ahead.submit(_score_masks, Xv, data.yv, fit_spec, None, **scoring)
    fit = _fit_masks(Xtr, data.y, data.n_classes, lams, masks, opts, widths=widths, order=order,
                     narrow=narrow)  # fmt: skip
    back = None if order is None else jax.device_put(np.argsort(order).astype(np.int32))
    out = ahead.call(_score_masks, Xv, data.yv, fit, back, **scoring)
    scores, fit, used = jax.device_get(out)  # one copy to the host, no eager op after it
    return scores, fit, used, np.asarray(lams)


# On one device each mask's lanes are stepped on only the columns up to its last kept one
# (`lanes.fit_masks` widths), in the layout of `column_order`, once a lane's products (rows x
# padded width) reach this size. On a CPU stepping the zero padding of the shared width cost
# most of the demo (~130 s). On an H200 the MiniLM fit's lane steps (13600 x 4096) are bound
# by their launches, and the widths' programs made integration 20 s against 11 s (session
# 13); GPT2-XL's groups (10000 x 32768-262144), whose full-width steps run at the speed of
# their GEMMs, stepped in 89 s against 125 s, and integration took 124 s against 149 s
# (benchmarks/RESULTS.md, session 19). TPUs are not measured: full width.
BY_WIDTH = {"cpu": 0, "gpu": 1 << 28}


def by_width(devices: int, n_rows: int, width: int) -> bool:
    least = BY_WIDTH.get(jax.default_backend())
    return devices == 1 and least is not None and n_rows * width >= least


# Where groups do not share a width (since session 21 only where SHARED_ELEMENTS_BY_WIDTH
# bounds the shared width, as tests and learner_stages.py --own-widths do), each prefix
# width stepped on a copy of it (lanes' narrow path), so one set of step programs serves
# every group: on 2 CPU cores, with the GPT2-XL layout forced, integration took 16-20 s
# against 24-27 s (step programs 30 -> 10).
# On one H200 GPT2-XL's fit took 246 s against 240 s, compiling 259 programs against 177
# in the same 67 s: there the groups' other programs cost what the shared steps saved
# (benchmarks/RESULTS.md, session 20), so accelerators keep the steps inside each width.
NARROW = {"cpu": True}


def narrow_steps() -> bool:
    return NARROW.get(jax.default_backend(), False)


def layout(data: FitData, cand: Columns, width: int) -> np.ndarray | None:
    """The `column_order` of a group's `width` columns where its lanes step prefix widths
    (`by_width`), else None (the candidates' own order)."""
    if not by_width(n_devices(), data.train.n_rows, width):
        return None
    return column_order(cand, width, len(data.opts.etas))


# Where a group's lanes step prefix widths, its matrices' columns are padded to a multiple
# of this instead of a power of two: the padding is never stepped, but it is held, in the
# features, every lane's state and the weights scored. GPT2-XL's widest group at 20000 rows
# has ~2.9e5 candidates, which a power of two would pad to 524288.
WIDTH_STEP = 1024


def own_width(n_cand: int, n_rows: int) -> int:
    """A group's padded width when groups do not share one (`shared_width`)."""
    width = padded_width(n_cand)
    if by_width(n_devices(), n_rows, width):
        return min(width, round_up(n_cand, WIDTH_STEP))
    return width


def column_order(cand: Columns, width: int, n_etas: int) -> np.ndarray:
    """The `width` padded columns by (eta rank, layer), the padding last.

    The mask (eta e, k) keeps the columns of rank <= e in layers <= k: in this order they
    lie within the columns of rank < e and those of rank e up to layer k. Since the kept
    sets grow with eta, that prefix is a few times the mask's own columns, where ordering
    by layer alone (all ranks) made it every eta's columns of those layers."""
    rank = np.pad(cand.eta_rank, (0, width - len(cand)), constant_values=n_etas)
    return np.lexsort((_padded_layers(cand, width), rank))


def prefix_widths(extents: np.ndarray, cap: int) -> np.ndarray:
    """Each mask's columns up to its last kept one (extents, `column_extents`), padded to
    `padded_width`, at most cap: the group's own width, where it shares a wider one, and at
    most all. (Coarser steps, 4x apart, made fewer programs but a slower CPU demo:
    RESULTS.md.)"""
    return np.minimum([padded_width(max(1, int(u))) for u in extents], cap)


def _in_order(X, order: np.ndarray):
    """X's columns in this order: numpy on the host, one program for a device array (an
    eager gather would compile several)."""
    if isinstance(X, jax.Array):
        return _take_columns(X, jax.device_put(order.astype(np.int32)))
    return X[:, order]


@solver_jit
def _take_columns(X, order):
    return jnp.take(X, order, axis=1, mode="clip")  # in range: a permutation


def _to_device(X, dtype):
    """X as a device array of dtype: numpy is cast on the host (no cast program)."""
    if isinstance(X, jax.Array):
        return X.astype(dtype)
    return jax.device_put(np.asarray(X).astype(dtype))


@functools.partial(solver_jit, static_argnames=("shape", "metric", "n_classes"))
def _score_masks(Xv, yv, fit, back=None, *, shape, metric, n_classes):
    """Valid scores [E, D, R], the fit of the first G (unpadded) problems as [E, D, ...] and
    the neurons used [E, D, R]. Only each (eta, k)'s best lam (`best_lams`) leaves the
    device with its weights [E, D, M, K] and intercept [E, D, K]: the other lams' weights,
    4/5 of them on the paper's grid, are never read (GPT2-XL's widest group holds ~2.8 GB
    of them). With back [M] (the inverse of `column_order`), the weights back in the
    candidates' order. (On the host that permutation of GPT2-XL's weights, 2450 lanes x
    262144 columns a group, took about as long as the group's lane steps.)"""
    G, E, D = shape
    fit = jax.tree.map(lambda a: a[:G].reshape(E, D, *a.shape[1:]), fit)
    pred = jax.vmap(probes.predict, in_axes=(None, 0, 0))(
        Xv, fit.weights.reshape(E * D, *fit.weights.shape[2:]),
        fit.intercept.reshape(E * D, *fit.intercept.shape[2:]),
    )  # fmt: skip
    scores = score(metric, yv, pred, n_classes).reshape(E, D, -1)
    used = jnp.sum(jnp.any(fit.weights != 0, axis=-1), axis=-1)
    best, pick = best_lams(scores), jax.vmap(jax.vmap(lambda a, r: a[r]))  # over E, D
    fit = fit.replace(weights=pick(fit.weights, best), intercept=pick(fit.intercept, best))
    if back is not None:
        fit = fit.replace(weights=jnp.take(fit.weights, back, axis=-2, mode="clip"))
    return scores, fit, used


def best_lams(scores):
    """The index of each (eta, k)'s best lam in scores [E, D, R]: the first best, so the
    larger lam (sparser) on ties. numpy and jax arrays alike."""
    return scores.argmax(axis=2)


def _fit_masks(X, y, n_classes, lams, masks, opts, *, widths=None, order=None, narrow=False):
    """fit_path for each feature mask [G, M] on shared X.

    One device: `lanes.fit_masks`, whose converged lanes leave the batch between rounds.
    Several: all problems at once, split over the devices by the masks' sharding.
    """
    caps, tol, smooth = lam_caps(opts, np.asarray(lams), X.shape[0]), opts.tol, opts.smooth
    if n_devices() > 1:
        return _fit_masks_sharded(
            X, y, n_classes, lams, masks, max_iter=tuple(caps.tolist()), tol=tol, smooth=smooth
        )
    max_lanes, shrink = _lane_batches(X.shape, masks.shape[0], len(lams), n_classes)
    return lanes.fit_masks(
        X,
        y,
        n_classes,
        lams,
        masks,
        max_iter=caps,
        tol=tol,
        max_lanes=None if widths is not None else max_lanes,  # else batch_elements bounds
        shrink=shrink,
        smooth=smooth,
        widths=widths,
        order=None if order is None else jax.device_put(order.astype(np.int32)),
        batch_elements=lane_batch_elements(),
        narrow=narrow,
    )


def lam_caps(opts, lams: np.ndarray, n_rows: int) -> np.ndarray:
    """Each lam's iteration cap [R]: `weak_max_iter` where C = 1 / (lam N) exceeds 1."""
    caps = np.full(len(lams), opts.max_iter, np.int32)
    if opts.weak_max_iter is not None:
        weak = lams.astype(np.float64) * n_rows < 1.0 / (1.0 + 1e-6)  # lam 0 too: C infinite
        caps[weak] = opts.weak_max_iter
    return caps


def _lane_batches(shape, n_masks: int, n_lams: int, n_classes: int) -> tuple[int, int]:
    """(lanes stepped together at most, the batch's `shrink`) for X of `shape`."""
    N, M = shape
    max_lanes = lanes.lanes_within(lane_batch_elements(), N, M, probes.n_columns(n_classes))
    shrink = LANE_SHRINK.get(jax.default_backend(), LANE_SHRINK_ACCELERATOR)
    if n_masks * n_lams * N * M < NO_SHRINK_ELEMENTS:
        shrink = 1 << 62  # all rounds at one batch size: one compile, cheap steps
    return max_lanes, shrink


def compile_ahead(data: FitData, n_cand: int, width: int | None) -> None:
    """Starts the compiles of one group's integration programs (ahead.py) at full width,
    from its shapes alone: a group of a width not seen yet then waits for none of them."""
    N, M = data.train.n_rows, width or padded_width(n_cand)
    if n_devices() > 1 or not ahead.enabled() or by_width(1, N, M) or not n_cand:
        return  # (prefix widths: their programs depend on the masks)
    opts, D = data.opts, len(depths(data))
    G, K = len(opts.etas) * D, probes.n_columns(data.n_classes)
    R = len(probes.PAPER_C_GRID) if opts.lam_grid == "paper" else opts.n_lams
    X = jax.ShapeDtypeStruct((N, M), solver_dtype(opts))
    masks = jax.ShapeDtypeStruct((G, M), np.float32)
    lams = jax.ShapeDtypeStruct((R,), np.float32)
    max_lanes, shrink = _lane_batches((N, M), G, R, data.n_classes)
    run = dict(max_iter=opts.max_iter, tol=opts.tol, shrink=shrink, smooth=opts.smooth)
    lanes.compile_ahead(X, data.y, data.n_classes, lams, masks, size=min(G * R, max_lanes), **run)
    Xv = jax.ShapeDtypeStruct((data.valid.n_rows, M), np.float32)
    scoring = dict(shape=(G, len(opts.etas), D), metric=data.metric, n_classes=data.n_classes)
    ahead.submit(_score_masks, Xv, data.yv, _fit_spec(G, R, M, K), None, **scoring)


def _fit_spec(G: int, R: int, M: int, K: int) -> probes.ProbeFit:
    """The shapes of `lanes.fit_masks`' result for G masks of width M at R lams."""
    shapes = (((M, K), np.float32), ((K,), np.float32), ((), np.int32), ((), np.bool_))
    return probes.ProbeFit(*(jax.ShapeDtypeStruct((G, R, *s), d) for s, d in shapes))


@functools.partial(solver_jit, static_argnames=("n_classes", "max_iter", "smooth"))
def _fit_masks_sharded(X, y, n_classes, lams, masks, *, max_iter, tol, smooth):
    def one(m):
        return probes._fit_path(
            X,
            y,
            n_classes,
            lams,
            rowmask=None,
            featmask=m,
            max_iter=max_iter,
            tol=tol,
            smooth=smooth,
        )

    return jax.vmap(one)(masks)


# Integration on an accelerator from features in host memory or a store: every group's
# columns gathered once, on the device (`union_columns`), each group's matrix taken from
# them there. The CPU reads its host features directly (its "device" is the host).
UNION_ON_DEVICE = {"cpu": False}


def union_columns(data: FitData, tables, cands: list[Columns], widths: list[int]):
    """(train, valid) `columns.UnionColumns` of every group's candidates, or None where the
    groups read their source directly: on a CPU, on several devices, from features already
    on the device, or when the union and the widest group's arrays (widths: each group's
    padded width) would not fit in the free device memory (logged: each group then reads
    the source, ~40 ns an element)."""
    src = data.train  # a fit's sources hold every array (options.require_full)
    if not UNION_ON_DEVICE.get(jax.default_backend(), True) or n_devices() > 1:
        return None
    if hasattr(src, "read_columns"):  # on the device already: `gather` reads it there
        return None
    cols = union_of([c for c in cands if len(c)])
    if not len(cols):
        return None
    nbytes = _matrix_bytes(data, union_width(len(cols)))
    group = max(_group_bytes(data, w) for c, w in zip(cands, widths, strict=True) if len(c))
    need = nbytes + group
    if not _fits_device(need):
        log.warning(
            "integration: the union of the groups' columns (%.1f GB) and the widest group "
            "(%.1f GB in all) do not fit in free device memory; each group reads its columns "
            "from host memory instead (slower)", nbytes / 1e9, need / 1e9,
        )  # fmt: skip
        return None
    mean, std = column_stats(cols, tables)
    chunk = data.opts.memory_bytes
    return (
        columns_union(src, cols, mean, std, solver_dtype(data.opts), chunk),
        columns_union(data.valid, cols, mean, std, jnp.float32, chunk),
    )


def _matrix_bytes(data: FitData, width: int) -> int:
    """Device bytes of a train and a valid matrix of `width` standardised columns."""
    itemsize = jnp.dtype(solver_dtype(data.opts)).itemsize
    return width * (data.train.n_rows * itemsize + data.valid.n_rows * 4)


# Weight-shaped fp32 arrays [lanes, width + 1, K] a group holds at once, at most: the FISTA
# state's params and point, the result, the scored copy put back in order, and on prefix
# widths stepped on copies (`lanes._narrow_rounds`) each width's solutions until the last
# (at most twice the widest's, widths being powers of two) and its state; one spare.
WEIGHT_COPIES = 8


def _group_bytes(data: FitData, width: int) -> int:
    """Device bytes one group of `width` columns holds while it is solved and scored: its
    matrices, the copy of a prefix of the train matrix, and the lanes' weights."""
    R = len(probes.PAPER_C_GRID) if data.opts.lam_grid == "paper" else data.opts.n_lams
    lanes = len(data.opts.etas) * len(depths(data)) * R
    weights = lanes * (width + 1) * probes.n_columns(data.n_classes) * 4 * WEIGHT_COPIES
    prefix = width * data.train.n_rows * jnp.dtype(solver_dtype(data.opts)).itemsize
    return _matrix_bytes(data, width) + prefix + weights


def _fits_device(nbytes: int, share: float = 0.8) -> bool:
    free = free_device_bytes()
    return free is None or nbytes <= free * share


def free_device_bytes() -> int | None:
    """The first device's free memory, or None where it does not say (a CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
        return None
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0)


def combo_candidates(data: FitData, tables, rep_set, pool_set) -> Columns:
    """The candidate columns of one (representation, pooling) set ((name, members) pairs)."""
    return candidates(tables, rep_set[1], pool_set[1], data.opts.etas)


def integrate_combo(
    data: FitData, tables, rep_set, pool_set, *, cand=None, width=None, union=None, narrow=False
) -> tuple[list[Choice], list]:
    """Every (eta, k) candidate of one (representation, pooling) set at its best lam, and
    the whole validated grid: a row per (eta, k, lam) with its score and neurons used.

    rep_set and pool_set are (name, members) pairs (options.rep_sets, options.pool_sets);
    cand their `combo_candidates` if already built, width as `integrate`'s; union (train,
    valid) `union_columns` that hold cand's columns, read from there instead of the source;
    narrow as `integrate`'s."""
    (rname, _), (pname, _) = rep_set, pool_set
    etas, ks = data.opts.etas, depths(data)
    cand = combo_candidates(data, tables, rep_set, pool_set) if cand is None else cand
    if len(cand) == 0:
        return [], []  # every probe of this combination is all-zero
    mean, std = column_stats(cand, tables)
    cols = width or padded_width(len(cand))  # a device gather pads to it (one program)
    if union is not None:  # taken in the solver's column order: one copy of each on the device
        order = layout(data, cand, cols)
        Xtr, Xv = (u.take(cand, cols, order) for u in union)
    else:
        Xtr, Xv = (gather(src, cand, mean, std, width=cols) for src in (data.train, data.valid))
    scores, fit, used, lams = integrate(
        data, Xtr, Xv, cand, cols, ordered=union is not None, narrow=narrow
    )
    grid = [
        dict(representation=rname, pooling=pname, eta=eta, k=int(k), lam=float(lams[r]),
             valid=float(scores[e, d, r]), n_neurons=int(used[e, d, r]),
             n_iter=int(fit.n_iter[e, d, r]), columns=len(cand))
        for e, eta in enumerate(etas) for d, k in enumerate(ks) for r in range(len(lams))
    ]  # fmt: skip
    r_best = best_lams(scores)  # [E, D]: the lam of fit's weights
    out = []
    for e, eta in enumerate(etas):
        if not np.any(cand.eta_rank <= e):
            continue
        W = np.asarray(fit.weights[e])[:, : len(cand)]  # [D, M, K]
        b = np.asarray(fit.intercept[e])
        per_k = [float(x) for x in scores[e].max(axis=1)]
        for d, k in enumerate(ks):
            r = r_best[e, d]
            out.append(
                Choice(
                    valid=float(scores[e, d, r]),
                    k=int(k),
                    n_neurons=int(used[e, d, r]),
                    rep=rname,
                    pooling=pname,
                    eta=eta,
                    lam=float(lams[r]),
                    weights=W[d],
                    intercept=b[d],
                    cand=cand,
                    mean=mean,
                    std=std,
                    per_k_valid=per_k,
                )
            )
    return out, grid
