"""`fit_masks`: the L1 solve of `probes.fit_path` on one shared X for many feature masks
(integration's (eta, k) problems) at every lam, each (mask, lam) a lane with its own optax
state, stepped in rounds so that converged lanes leave the batch."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import ahead, solver
from spin_jax.devices import solver_jit
from spin_jax.probes import (
    Array,
    ProbeFit,
    _init_theta,
    _lipschitz,
    _smooth_grad,
    _targets,
    n_columns,
    transposed,
)

# `fit_masks` steps its (mask, lam) lanes in rounds. A lane's round ends when its iteration
# count doubles (the first after FIRST_ROUND steps), so no lane is stepped more than about
# twice past its convergence; converged lanes then leave the batch. A vmapped solve that
# ran every lane to the slowest one's count did 5-20x more steps (benchmarks/RESULTS.md).
FIRST_ROUND = 8


def fit_masks(
    X: Array,
    y: Array,
    n_classes: int,
    lams: Array,
    masks: Array,
    *,
    max_iter: int | np.ndarray = 2000,
    tol: float = 1e-6,
    max_lanes: int | None = None,
    shrink: int = 2,
    smooth: solver.Smooth | None = None,
    widths: np.ndarray | None = None,
    order: np.ndarray | None = None,
    batch_elements: int | None = None,
    narrow: bool = False,
) -> ProbeFit:
    """`fit_path` on one shared X [N, F] (standardised, no padded rows) for every feature
    mask of masks [G, F] (0/1) at every lam of lams [R].

    Each (mask, lam) pair is a lane with its own FISTA state; at most max_lanes lanes are
    stepped together (memory). The batch shrinks to the next power of two once the active
    lanes are 1/shrink of it: each new size is one more compile, so a fast device, where
    a compile costs more than the steps it saves, wants a larger `shrink`.
    widths [G] (optional): each mask is zero beyond its first widths[g] columns, so its
    lanes are stepped on that prefix of X alone, in chunks of two sizes per width (`chunks`),
    so that a few programs serve every width and problem count; batch_elements (optional)
    bounds a chunk's per-lane work as `lanes_within` counts it. narrow (with widths): each
    width's lanes on copies of its prefix, so that its programs do not depend on F
    (`_narrow_rounds`), for callers that solve problems of several F with the same widths.
    order [F] (optional): X's columns are another layout's in this order (see `_lipschitz`).
    max_iter: one cap for every lane, or a cap per lam [R].
    Returns ProbeFit with weights [G, R, F, K], intercept [G, R, K], n_iter and converged
    [G, R]: the same solutions as `fit_path` per mask.
    """
    if shrink < 2:
        raise ValueError(f"fit_masks: shrink must be at least 2, got {shrink}")
    G, R, K = masks.shape[0], lams.shape[0], n_columns(n_classes)
    if G * R == 0:
        zeros = jnp.zeros((G, R), jnp.int32)
        return ProbeFit(jnp.zeros((G, R, X.shape[1], K)), jnp.zeros((G, R, K)), zeros, zeros > 0)
    lams = jnp.asarray(lams, jnp.float32)
    size = min(G * R, max_lanes or G * R)
    max_iter = lam_caps(max_iter, R)
    run = dict(max_iter=max_iter, tol=tol, shrink=shrink, smooth=smooth)
    if widths is None and order is None:  # (prefix widths: programs by the masks' widths)
        compile_ahead(X, y, n_classes, lams, masks, size=size, **run)
    T, m_over_n, Ls, theta0 = ahead.call(_masks_setup, X, y, n_classes, masks, order)
    problem = (X, T, m_over_n, masks, Ls, lams)
    if widths is not None:
        del run["shrink"]  # chunks of two sizes replace the shrinking batch
        plan = _width_plan(widths, R, X.shape[0], K, max_lanes or G * R, batch_elements)
        if narrow:
            return _narrow_rounds(problem, plan, shape=(G, R, K), **run)
    state = ahead.call(_lanes_start, theta0, n=G * R, smooth=smooth)
    if widths is None:
        state = _lanes_rounds(problem, state, np.arange(G * R), size, None, **run)
    else:
        _compile_widths(problem, state, plan, **run)
        for width, active, sizes in plan:
            state = _chunked_rounds(problem, state, active, sizes, width, **run)
    return ahead.call(_lanes_result, state, tol, shape=(G, R, K))


def _narrow_rounds(problem, plan, *, shape, max_iter, tol, smooth) -> ProbeFit:
    """`fit_masks`' prefix-width rounds on a copy of each width's prefix of X and masks,
    with a state of the width's own (`_prefix`, `_width_start`): the step programs' shapes
    then hold the width alone, not X's, and serve every integration group of that width
    (GPT2-XL's 12 groups, each its own X width, compiled 177 programs in 67 s of a 240 s
    fit when each group's steps held its width: benchmarks/RESULTS.md, session 20)."""
    X, T, m_over_n, masks, Ls, lams = problem
    G, R, K = shape
    parts, which = [], np.zeros(G * R, np.int32)
    for j, (width, active, sizes) in enumerate(plan):  # a width's copies go when it ends
        X_w, masks_w = ahead.call(_prefix, X, masks, width=width)
        problem_w = (X_w, T, m_over_n, masks_w, Ls, lams)
        state = ahead.call(_width_start, T, n=G * R, smooth=smooth, width=width)
        state = _chunked_rounds(problem_w, state, active, sizes, None, max_iter=max_iter,
                                tol=tol, smooth=smooth)  # fmt: skip
        parts.append(ahead.call(_solved, state))
        which[active] = j
    which = jax.device_put(which)
    return ahead.call(_widths_result, parts, which, tol, shape=shape, width=X.shape[1])


def lam_caps(max_iter, n_lams: int) -> np.ndarray:
    """The iteration cap of each lam [R] (int32), from one cap or one per lam."""
    caps = np.broadcast_to(np.asarray(max_iter, np.int32), (n_lams,))
    if np.any(caps < 1):
        raise ValueError(f"fit_masks: max_iter must be positive, got {max_iter}")
    return np.array(caps)


def compile_ahead(X, y, n_classes, lams, masks, *, size, max_iter, tol, shrink, smooth) -> None:
    """Starts the compiles of `fit_masks`' programs at full width (ahead.py) for arrays of
    these shapes (arrays or ShapeDtypeStructs): the batch at `size` and at every size it
    can shrink to (powers of two up to size / shrink), which used to compile in the middle
    of the rounds, whether the rounds reach them or not."""
    if not ahead.enabled():
        return
    G, R, K = masks.shape[0], lams.shape[0], n_columns(n_classes)
    ahead.submit(_masks_setup, X, y, n_classes, masks, None)
    setup = partial(_masks_setup, n_classes=n_classes)
    T, m_over_n, Ls, theta0 = jax.eval_shape(setup, X, y, masks=masks, order=None)
    ahead.submit(_lanes_start, theta0, n=G * R, smooth=smooth)
    state = jax.eval_shape(partial(_lanes_start, n=G * R, smooth=smooth), theta0)
    problem = (X, T, m_over_n, masks, Ls, lams)
    top = size // shrink  # the batch shrinks once its lanes are this few
    for n in [size] + [1 << b for b in range(_pow2(top).bit_length() if top else 0)]:
        idx = jax.ShapeDtypeStruct((n,), np.int32)
        args = (problem, state, idx, idx, lam_caps(max_iter, R), tol)
        ahead.submit(_lanes_step, *args, smooth=smooth, width=None)
    ahead.submit(_lanes_result, state, tol, shape=(G, R, K))


def _width_plan(widths, R: int, n_rows: int, K: int, max_lanes: int, batch_elements):
    """(width, its lanes, their chunk sizes) for each prefix width, narrowest first; lane =
    mask * R + lam index."""
    lane_width = np.repeat(np.asarray(widths), R)
    plan = []
    for width in np.unique(lane_width).tolist():
        active = np.nonzero(lane_width == width)[0]
        cap = max_lanes
        if batch_elements is not None:
            cap = min(cap, lanes_within(batch_elements, n_rows, width, K))
        plan.append((width, active, chunk_sizes(width, len(active), cap, n_rows)))
    return plan


def _compile_widths(problem, state, plan, *, max_iter, tol, smooth) -> None:
    """Starts the compiles (ahead.py) of the step programs of every (width, chunk size)
    that `_chunked_rounds` will call: known before the first round, they compile side by
    side instead of one at a time as each width's rounds begin."""
    caps = jax.ShapeDtypeStruct(np.shape(max_iter), np.int32)
    for width, _, sizes in plan:
        for size in sorted(set(sizes)):
            idx = jax.ShapeDtypeStruct((size,), np.int32)
            args = (problem, state, idx, idx, caps, tol)
            ahead.submit(_lanes_step, *args, smooth=smooth, width=width)


def lanes_within(elements: int, n_rows: int, width: int, K: int) -> int:
    """Lanes whose per-lane work (logits and residuals [N, K], FISTA state [width, K]) fits
    in `elements` fp32 elements."""
    return max(1, elements // ((3 * n_rows + 8 * (width + 1)) * K))


# On the prefix widths, a round steps its lanes in chunks of a big size, one call each, and
# what is left in chunks of a small one. A CPU step costs about its lanes x width (the
# products), so a batch padded to a power of two stepped ~1.4x the useful lanes (the demo:
# 1.1M padded lane-steps beside 0.8M useful), and each power of two it shrank to compiled
# again (44 programs, 17 s); there a full chunk holds CPU_CHUNK_ELEMENTS lanes x width, and
# two sizes a width cost ~15% more per lane-step on the small one (RESULTS.md, session 12).
CPU_CHUNK_ELEMENTS = 1 << 16
CPU_SMALL_CHUNK = 16
# An accelerator's call reads X[:, :width] once per iteration for all its lanes and
# launches every kernel of the iteration once, whatever its lanes: 16-lane chunks made an
# H200 1.4-1.6x slower than one full-width batch. There the big chunk holds as many lanes
# as memory allows, and a small one at least 64 (below that an H200's step is bound by
# reading X) and enough that its products (lanes x width x rows) outweigh the launches.
ACCELERATOR_SMALL_CHUNK = 64
ACCELERATOR_CHUNK_ELEMENTS = 1 << 31


def chunk_sizes(width: int, n_lanes: int, cap: int, n_rows: int) -> tuple[int, int]:
    """(big, small) lanes of one call at this width, for n_lanes lanes, at most cap."""
    cap = max(1, cap)
    if jax.default_backend() == "cpu":
        big = max(CPU_SMALL_CHUNK, min(256, _pow2(max(1, CPU_CHUNK_ELEMENTS // width))))
        big = min(big, cap)
        return big, min(CPU_SMALL_CHUNK, big)
    # Powers of two: the fewer sizes, the fewer programs.
    big = min(_pow2(n_lanes), 1 << (cap.bit_length() - 1))
    small = _pow2(max(1, ACCELERATOR_CHUNK_ELEMENTS // (width * n_rows)))
    return big, min(big, max(ACCELERATOR_SMALL_CHUNK, small))


def chunks(n: int, big: int, small: int) -> list[tuple[int, int]]:
    """(start, size) of the calls that step n lanes: full chunks of `big`, then the rest
    in chunks of `small` (one more `big` where those would be as many slots)."""
    out = [(s, big) for s in range(0, n - n % big, big)]
    rest = n % big
    if rest and -(-rest // small) * small >= big:
        out.append((n - rest, big))
    elif rest:
        out += [(s, small) for s in range(n - rest, n, small)]
    return out


def _chunked_rounds(problem, state, active, sizes, width, *, max_iter, tol, smooth):
    """Rounds of the lanes `active`, each round in `chunks` of sizes (big, small), on the
    first `width` columns."""
    steps = np.zeros(len(state.n_iter), np.int64)
    lane_caps = np.resize(max_iter, len(steps))  # lane = mask * R + lam index
    while active.size:
        active = active[np.argsort(steps[active], kind="stable")]  # equal counts together
        stepped = []
        for start, size in chunks(len(active), *sizes):  # dispatched before any is read
            take = active[start : start + size]
            state, k, change = _step_lanes(problem, state, take, size, width, max_iter, tol, smooth)
            stepped.append((take, k, change))
        left = []
        for take, k, change in stepped:
            k, change = np.asarray(k)[: len(take)], np.asarray(change)[: len(take)]
            steps[take] = k
            left.append(take[(k < lane_caps[take]) & (change > tol)])
        active = np.concatenate(left)
    return state


def _step_lanes(problem, state, take, size, width, max_iter, tol, smooth):
    """One `_lanes_step` call on the lanes `take`, padded to `size` with repeats of them."""
    idx = jax.device_put(np.resize(take, size))
    # The repeats are not stored: their index is out of range, and the scatter drops it.
    stored = jax.device_put(np.append(take, np.full(size - len(take), len(state.n_iter))))
    args = (problem, state, idx, stored, max_iter, tol)
    return ahead.call(_lanes_step, *args, smooth=smooth, width=width)


def _pow2(n: int) -> int:
    return 1 << int(n - 1).bit_length()


def _lanes_rounds(problem, state, active, size, width, *, max_iter, tol, shrink, smooth):
    """Rounds of the lanes `active` in batches of `size`, on the first `width` columns."""
    steps = np.zeros(len(state.n_iter), np.int64)  # each lane's iterations so far
    lane_caps = np.resize(max_iter, len(steps))  # lane = mask * R + lam index
    while active.size:
        # Lanes at equal counts share a batch: a fresh lane does not wait on a slow one.
        active = active[np.argsort(steps[active], kind="stable")]
        take = active[:size]
        state, k, change = _step_lanes(problem, state, take, size, width, max_iter, tol, smooth)
        k, change = np.asarray(k)[: len(take)], np.asarray(change)[: len(take)]
        steps[take] = k
        active = np.concatenate([take[(k < lane_caps[take]) & (change > tol)], active[size:]])
        if 0 < len(active) <= size // shrink:
            size = _pow2(len(active))
    return state


@partial(solver_jit, static_argnames=("shape",))
def _lanes_result(state, tol, *, shape) -> ProbeFit:
    G, R, K = shape
    x = solver.solution(state.params, state.opt_state)
    return ProbeFit(
        x[:, :-1].reshape(G, R, -1, K),
        x[:, -1].reshape(G, R, K),
        state.n_iter.reshape(G, R),
        (state.change <= tol).reshape(G, R),
    )


@partial(solver_jit, static_argnames=("shape", "width"))
def _widths_result(parts, which, tol, *, shape, width) -> ProbeFit:
    """`_lanes_result` from each prefix width's `_solved` state (every lane's row, stepped
    or not) and which [lanes], the part that stepped each lane: weights [G, R, width, K],
    zero beyond each lane's prefix. Selects, where scatters per part compiled ~0.7 s a group
    on a CPU."""
    G, R, K = shape
    x = jnp.zeros((G * R, width + 1, K), jnp.float32)
    n_iter, change = jnp.zeros(G * R, jnp.int32), jnp.full(G * R, jnp.inf, jnp.float32)
    for j, (xw, k, c) in enumerate(parts):
        mine = which == j
        w = xw.shape[1] - 1
        xw = jnp.concatenate([xw[:, :w], jnp.zeros((G * R, width - w, K)), xw[:, -1:]], axis=1)
        x = jnp.where(mine[:, None, None], xw, x)
        n_iter, change = jnp.where(mine, k, n_iter), jnp.where(mine, c, change)
    return ProbeFit(
        x[:, :-1].reshape(G, R, -1, K),
        x[:, -1].reshape(G, R, K),
        n_iter.reshape(G, R),
        (change <= tol).reshape(G, R),
    )


@solver_jit
def _solved(state):
    """(solution [lanes, width + 1, K], iterations [lanes], last change [lanes])."""
    return solver.solution(state.params, state.opt_state), state.n_iter, state.change


@partial(solver_jit, static_argnames=("width",))
def _prefix(X, masks, *, width):
    """Copies of X [N, F] and masks [G, F] cut to their first `width` (<= F) columns."""
    return X[:, :width], masks[:, :width]


@partial(solver_jit, static_argnames=("n", "smooth", "width"))
def _width_start(T, *, n: int, smooth, width: int):
    """`_lanes_start` of n lanes on `width` columns, from the targets T [N, K] alone."""
    return _lanes_start(_init_theta(T, jnp.ones(T.shape[0]), width), n=n, smooth=smooth)


@partial(solver_jit, static_argnames=("n_classes",))
def _masks_setup(X, y, n_classes, masks, order=None):
    """Targets, row weights / N, Lipschitz constant per mask [G], starting theta."""
    m = jnp.ones(X.shape[0], jnp.float32)
    T = _targets(y, n_classes)
    lipschitz_of = partial(_lipschitz, X, m, n_classes=n_classes, order=order)
    Ls = jax.vmap(lambda f: lipschitz_of((f > 0).astype(jnp.float32)))(masks)
    return T, m / X.shape[0], Ls, _init_theta(T, m, X.shape[1])


def _lane_tx(f: Array, lam, L, smooth):
    """The transformation of one lane: feature mask f [F] (0/1), its lam and L."""
    return solver.proximal(jnp.append(f, 0.0) * lam, jnp.append(f, 1.0), L, smooth)


@partial(solver_jit, static_argnames=("n", "smooth"))
def _lanes_start(theta0, *, n: int, smooth):
    # The transformation's state does not depend on the lane's mask or lam, only its shape.
    run = solver.start(_lane_tx(jnp.ones(theta0.shape[0] - 1), 0.0, 1.0, smooth), theta0)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *jnp.shape(a))), run)


@partial(solver_jit, static_argnames=("smooth", "width"), donate_argnums=1)
def _lanes_step(problem, state, idx, stored, max_iter, tol, *, smooth, width):
    """One round of the lanes idx [B], written back at `stored` (out of range: dropped), in
    one program: (state, their iterations [B], their last change [B]). width: step only
    the first `width` weight rows and the intercept (None: all)."""
    part = jax.tree.map(lambda a: _narrow(a[idx], width), state)
    part = _lanes_round(problem, part, idx, max_iter, tol, smooth, width)
    state = jax.tree.map(lambda a, b: _store(a, b, stored, width), state, part)
    return state, part.n_iter, part.change


# A lane's weight-shaped arrays (params, FISTA's point, adam's moments) are [lanes, M + 1, K]:
# M weight rows, then the intercept; every other leaf of its state is per lane.
def _narrow(a, width):
    if width is None or a.ndim != 3:
        return a
    return jnp.concatenate([a[:, :width], a[:, -1:]], axis=1)


def _store(a, b, stored, width):
    if width is None or a.ndim != 3:
        return a.at[stored].set(b, mode="drop")
    a = a.at[stored, :width].set(b[:, :width], mode="drop")
    return a.at[stored, -1].set(b[:, -1], mode="drop")


def _lanes_round(problem, state, idx, max_iter, tol, smooth, width=None):
    """One round of `fit_masks` for the lanes idx [B] (lane = mask * R + lam index), each
    stepped to at most its lam's cap max_iter [R]."""
    X, T, m_over_n, masks, Ls, lams = problem
    R = lams.shape[0]
    if width is not None:
        X, masks = X[:, :width], masks[:, :width]
    grad_fn = partial(_smooth_grad, X, T, m_over_n, XT=transposed(X))

    def one(run, i):
        f = (masks[i // R] > 0).astype(jnp.float32)
        tx = _lane_tx(f, lams[i % R], Ls[i // R], smooth)
        stop = jnp.minimum(max_iter[i % R], jnp.maximum(FIRST_ROUND, 2 * run.n_iter))
        return solver.minimize(grad_fn, tx, run, stop, tol)

    return jax.vmap(one)(state, idx)
