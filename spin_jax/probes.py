"""L1 logistic-regression probes: FISTA along a regularisation path, vmapped over problems.

The solver is an optax transformation (`solver.py`): `optax.chain(optax.scale(-1/L),
prox_l1, fista)` by default, or a user's optax optimizer for the smooth part (`smooth=`).

Shape legend: G problems (layers x poolings), N rows, F features, R regularisation
strengths, K weight columns (K = 1 when n_classes == 2, else K = n_classes), C classes.

Objective of one problem at one strength lam, with row mask m (0/1) and N_eff = sum(m):

    (1 / N_eff) * sum_i m_i * loss(x_i W + b, y_i) + lam * ||W||_1      (b not penalised)

Binary problems use one column and the sigmoid loss, multiclass problems softmax cross-entropy
over C columns; these are scikit-learn's binary and multinomial objectives divided by C * N_eff,
so scikit-learn's C is 1 / (lam * N_eff) (see `lams_from_c`).

Standardisation: the solvers (`fit_path`, `fit_many`) take X as given. Standardise first with
`standardize_stats` + `standardize`, or call `fit_many_standardized`, which does it per problem
and returns the statistics; `unstandardize` maps weights back to the raw feature scale.

Dtype policy: the solver reads X in the dtype it is given and never copies it to fp32.
fp32 X: every product at "highest" precision. bf16 / fp16 X (standardised features cast down,
half the bytes of the memory-bound products): the fp32 vector of each product is split into a
high and a low 16-bit part, both multiplied against X with fp32 accumulation, so the product
is that of the 16-bit X with a ~16-bit-mantissa vector. Losses and accumulators are fp32.

Paths: `warm_start=True` solves the lams one after the other, each from the last solution;
`False` solves all of them at once from zero, one FISTA state per lam, which reads X once per
iteration for every lam (X @ [W_1 .. W_R]) instead of once per lam. On the probes we measured
warm starts barely cut iterations, so the joint path reads X several times less.
"""

from __future__ import annotations

from functools import partial

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import solver
from spin_jax.devices import solver_jit

Array = jax.Array

# scikit-learn's C (inverse regularisation strength) of the official SPIN code's probes and
# aggregated classifiers (shared/paper_table4.json). Convert to our lam with `lams_from_c`.
PAPER_C_GRID = (0.1, 0.2, 1.0, 10.0, 100.0)

_HIGHEST = jax.lax.Precision.HIGHEST
# A feature whose std is below this fraction of max(|mean|, 1) counts as constant: its std is
# set to 1 so it standardises to ~0 instead of blowing up rounding noise (or dividing by 0).
_STD_FLOOR = 1e-5
# Power iteration gives a lower bound on ||X||_2; the margin keeps 1/L a safe step.
_POWER_ITERS = 30
_LIPSCHITZ_MARGIN = 1.05
# Class frequencies are clipped so an absent class gets a finite starting intercept.
_PRIOR_CLIP = 1e-6


@flax.struct.dataclass
class ProbeFit:
    """Solutions along a regularisation path (add a leading G axis for `fit_many`).

    weights [R, F, K], intercept [R, K], n_iter [R] int32 (FISTA iterations at each lam),
    converged [R] bool (relative change fell below tol before max_iter).
    """

    weights: Array
    intercept: Array
    n_iter: Array
    converged: Array


def n_columns(n_classes: int) -> int:
    """K: one weight column for binary problems, one per class otherwise."""
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    return 1 if n_classes == 2 else n_classes


# ----------------------------------------------------------------------------- standardise


def _row_weights(X: Array, rowmask: Array | None) -> Array:
    """rowmask [N] as fp32 0/1 (all ones when None)."""
    if rowmask is None:
        return jnp.ones(X.shape[0], jnp.float32)
    return (rowmask > 0).astype(jnp.float32)


def _masked_fp32(X: Array, m: Array) -> Array:
    """X in fp32 with padded rows set to 0, so garbage (even NaN) there cannot leak."""
    return jnp.where(m[:, None] > 0, X.astype(jnp.float32), 0.0)


def _masked_rows(X: Array, rowmask: Array | None) -> Array:
    """X in its own dtype with padded rows set to 0 (no copy without a rowmask)."""
    if rowmask is None:
        return X
    return jnp.where(rowmask[:, None] > 0, X, jnp.zeros((), X.dtype))


def standardize_stats(X: Array, rowmask: Array | None = None) -> tuple[Array, Array]:
    """Mean [F] and std [F] of X [N, F] over the unmasked rows, in fp32.

    Constant features get std 1 (not 0), so `standardize` maps them to 0 rather than NaN.
    """
    m = _row_weights(X, rowmask)
    n = jnp.maximum(m.sum(), 1.0)
    # Shift by the first unmasked row before summing: fewer cancellation errors for features
    # with a large offset, and a constant feature gets exactly its value as mean (std 0).
    shift = X[jnp.argmax(m)].astype(jnp.float32)
    Xc = _masked_fp32(X, m) - shift
    mean_c = jnp.einsum("N,NF->F", m, Xc, precision=_HIGHEST) / n
    var = jnp.einsum("N,NF->F", m, (Xc - mean_c) ** 2, precision=_HIGHEST) / n
    mean = shift + mean_c
    std = jnp.sqrt(var)
    constant = std <= _STD_FLOOR * jnp.maximum(jnp.abs(mean), 1.0)
    return mean, jnp.where(constant, 1.0, std)


def standardize(X: Array, mean: Array, std: Array) -> Array:
    """(X - mean) / std, computed in fp32 and returned in X's dtype."""
    return ((X.astype(jnp.float32) - mean) / std).astype(X.dtype)


def unstandardize(weights: Array, intercept: Array, mean: Array, std: Array):
    """Weights [..., F, K] and intercept [..., K] fitted on standardised X, for raw X."""
    w_raw = weights / std[..., :, None]
    b_raw = intercept - jnp.einsum("...F,...FK->...K", mean, w_raw, precision=_HIGHEST)
    return w_raw, b_raw


# ----------------------------------------------------------------------------- loss pieces


def _targets(y: Array, n_classes: int) -> Array:
    """Targets [N, K]: y itself for the binary column, one-hot rows otherwise."""
    if n_classes == 2:
        return y.astype(jnp.float32)[:, None]
    return jax.nn.one_hot(y, n_classes, dtype=jnp.float32)


def _split16(v: Array, dtype) -> tuple[Array, Array]:
    """v (fp32, ..., K) as hi + lo in a 16-bit dtype, scaled per column by a power of two.

    Returns (parts [..., 2K] in dtype, scale [K]); v ~= (hi + lo) * scale with a ~16-bit
    mantissa. The power-of-two scale keeps both parts inside fp16's range exactly.
    """
    axes = tuple(range(v.ndim - 1))
    top = jnp.max(jnp.abs(v), axis=axes)
    scale = jnp.exp2(jnp.ceil(jnp.log2(jnp.where(top > 0, top, 1.0))))
    u = v / scale
    hi = _truncate(u, dtype)
    return jnp.concatenate([hi.astype(dtype), (u - hi).astype(dtype)], axis=-1), scale


def _truncate(u: Array, dtype) -> Array:
    """fp32 u cut to the mantissa width of a 16-bit dtype, by masking bits.

    Not `u.astype(dtype).astype(fp32)`: XLA may drop that round trip (it allows excess
    precision), and then `u - hi` is 0 and the low part is lost. This happened inside the
    GPU solver's jitted loops, where the bf16 products kept 8 bits and FISTA stalled.
    The result is exact in dtype except where u is an fp16 subnormal (|u| < 2**-14), which
    the conversion then rounds; the low part still holds the rest to ~2**-24.
    """
    drop = 23 - jnp.finfo(dtype).nmant  # fp32 mantissa bits the 16-bit dtype lacks
    bits = jax.lax.bitcast_convert_type(u, jnp.uint32) & jnp.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _dot(spec: str, X: Array, v: Array) -> Array:
    """einsum(spec, X, v) in fp32 for fp32 v and X of any float dtype (module docstring).

    On CPU a 16-bit X is upcast instead (exact; XLA's CPU runtime has no batched
    bf16 x bf16 -> fp32 dot, and CPU products are not where the time goes).
    """
    if X.dtype == jnp.float32 or jax.default_backend() == "cpu":
        return jnp.einsum(spec, X.astype(jnp.float32), v, precision=_HIGHEST)
    return _split_dot(spec, X, v)


def _split_dot(spec: str, X: Array, v: Array) -> Array:
    """einsum(spec, X, v) for 16-bit X: v split into 16-bit hi + lo, fp32 accumulation."""
    parts, scale = _split16(v, X.dtype)
    out = jnp.einsum(spec, X, parts, preferred_element_type=jnp.float32)
    k = v.shape[-1]
    return (out[..., :k] + out[..., k:]) * scale


def transposed(X: Array) -> Array | None:
    """X.T as its own array, made once before a solver's loop, on CPU (None elsewhere).

    XLA's CPU dot that contracts X's first axis (the gradient's X^T r) transposes X on every
    call: 2.1 ms per product for a 384 x 4096 X whatever r's width, against 0.1 ms from a
    transposed copy at 8 columns of r (benchmarks/RESULTS.md, session 12). A GPU's GEMM
    reads either layout, so there the copy would only double the features' memory. The
    barrier keeps XLA from folding the copy back into the dot inside the loop."""
    if jax.default_backend() != "cpu":
        return None
    return jax.lax.optimization_barrier(X.astype(jnp.float32).T)


def _dot_t(X: Array, XT: Array | None, r: Array) -> Array:
    """X^T r [F, K] in fp32, from `transposed(X)` where there is one."""
    if XT is None:
        return _dot("NF,NK->FK", X, r)
    return jnp.einsum("FN,NK->FK", XT, r, precision=_HIGHEST)


def _logits(X: Array, theta: Array) -> Array:
    """theta [F+1, K] stacks W [F, K] over the intercept row b [K]."""
    return _dot("NF,FK->NK", X, theta[:-1]) + theta[-1]


def _smooth_grad(X: Array, T: Array, m_over_n: Array, theta: Array, XT=None) -> Array:
    """Gradient [F+1, K] of (1/N_eff) sum_i m_i loss_i; X has padded rows zeroed, XT is
    `transposed(X)`."""
    z = _logits(X, theta)
    p = jax.nn.sigmoid(z) if z.shape[-1] == 1 else jax.nn.softmax(z, axis=-1)
    r = (p - T) * m_over_n[:, None]
    g_w = _dot_t(X, XT, r)
    return jnp.concatenate([g_w, r.sum(0, keepdims=True)], axis=0)


def _init_theta(T: Array, m: Array, n_feat: int) -> Array:
    """Zero weights and the intercept-only optimum (prior log-odds / log-frequencies)."""
    prior = jnp.clip(m @ T / jnp.maximum(m.sum(), 1.0), _PRIOR_CLIP, 1.0 - _PRIOR_CLIP)
    b0 = jnp.log(prior) - jnp.log1p(-prior) if T.shape[-1] == 1 else jnp.log(prior)
    return jnp.zeros((n_feat + 1, T.shape[-1]), jnp.float32).at[-1].set(b0)


def lipschitz(X: Array, rowmask: Array | None = None, n_classes: int = 2) -> Array:
    """Lipschitz constant of the smooth part's gradient in (W, b), a scalar.

    The loss Hessian in the logits is at most 1/4 (sigmoid) or has top eigenvalue at most 1/2
    (softmax: diag(p) - p p^T), so L = c * ||[X, 1]||_2^2 / N_eff over unmasked rows, with
    ||.||_2 from a few power iterations (times a small safety margin).
    """
    m = _row_weights(X, rowmask)
    return _lipschitz(_masked_rows(X, rowmask), m, jnp.ones(X.shape[1]), n_classes)


def _lipschitz(Xm: Array, m: Array, f: Array, n_classes: int, order=None, XT=None) -> Array:
    """As `lipschitz`, for X with padded rows zeroed and feature mask f [F] (0/1). order
    [F]: X's columns are those of another layout in this order; the power iteration starts
    from the same vector as in that layout, so both find the same constant. XT: the
    caller's `transposed(Xm)`, if it has one (else made here)."""

    XT = transposed(Xm) if XT is None else XT

    def apply(v):  # [X diag(f), m] v, then its transpose: power iteration on A^T A.
        u = _dot("NF,FK->NK", Xm, (v[:-1] * f)[:, None])[:, 0] + v[-1] * m
        g = _dot_t(Xm, XT, u[:, None])[:, 0] * f
        return jnp.append(g, m @ u)

    def body(_, v):
        w = apply(v)
        return w / jnp.linalg.norm(w)

    # A fixed random start: deterministic, yet almost surely not orthogonal to the top vector.
    v0 = jax.random.normal(jax.random.key(0), (Xm.shape[1] + 1,), jnp.float32)
    if order is not None:
        v0 = jnp.append(v0[:-1][order], v0[-1])
    v = jax.lax.fori_loop(0, _POWER_ITERS, body, v0 / jnp.linalg.norm(v0))
    sigma2 = v @ apply(v)  # Rayleigh quotient of A^T A: <= ||A||_2^2, converging to it
    curvature = 0.25 if n_classes == 2 else 0.5
    return _LIPSCHITZ_MARGIN * curvature * sigma2 / jnp.maximum(m.sum(), 1.0)


# ----------------------------------------------------------------------------- solver


def _solve(grad_fn, theta0, *, thresh, keep, L, max_iter: int, tol, smooth):
    """One problem from theta0 with `solver.proximal`'s optax transformation; thresh [F+1]
    is lam on the penalised rows. Returns (theta, iterations, last relative change)."""
    tx = solver.proximal(thresh, keep, L, smooth)
    run = solver.minimize(grad_fn, tx, solver.start(tx, theta0), max_iter, tol)
    return solver.solution(run.params, run.opt_state), run.n_iter, run.change


def _setup(X, y, n_classes, rowmask, featmask):
    """X with padded rows zeroed (its own dtype), targets, masks, theta0.

    Masked features are not zeroed in X (that would copy it once per mask): their weights
    start at 0 and the prox holds them there, and `_lipschitz` masks them itself.
    """
    m = _row_weights(X, rowmask)
    f = jnp.ones(X.shape[1], jnp.float32) if featmask is None else (featmask > 0)
    f = f.astype(jnp.float32)
    T = _targets(y, n_classes)
    m_over_n = m / jnp.maximum(m.sum(), 1.0)
    penalty = jnp.append(f, 0.0)  # L1 on the weights, none on the intercept
    keep = jnp.append(f, 1.0)  # masked features are held at exactly 0
    theta0 = _init_theta(T, m, X.shape[1])
    return _masked_rows(X, rowmask), T, m, f, m_over_n, penalty, keep, theta0


_STATIC = ("n_classes", "max_iter", "warm_start", "smooth")


def _fit_path(
    X, y, n_classes, lams, *, rowmask, featmask, max_iter, tol, warm_start=False, smooth=None
) -> ProbeFit:
    Xm, T, m, f, m_over_n, penalty, keep, theta0 = _setup(X, y, n_classes, rowmask, featmask)
    XT = transposed(Xm)  # one copy for the Lipschitz constant and every step
    L = _lipschitz(Xm, m, f, n_classes, XT=XT)  # once per feature matrix, for the whole path

    def grad_fn(theta):
        return _smooth_grad(Xm, T, m_over_n, theta, XT)

    def solve(theta, lam_cap):
        lam, cap = lam_cap
        theta, k, change = _solve(
            grad_fn,
            theta,
            thresh=penalty * lam,
            keep=keep,
            L=L,
            max_iter=cap,
            tol=tol,
            smooth=smooth,
        )
        return theta, (theta, k, change <= tol)

    lams = jnp.asarray(lams, jnp.float32)
    caps = jnp.broadcast_to(jnp.asarray(max_iter, jnp.int32), lams.shape)  # one, or one a lam
    if warm_start:  # each lam starts from the previous solution
        _, (thetas, n_iter, converged) = jax.lax.scan(solve, theta0, (lams, caps))
    else:  # all lams at once; vmap turns the R products with X into one X @ [R columns]
        _, (thetas, n_iter, converged) = jax.vmap(solve, in_axes=(None, 0))(theta0, (lams, caps))
    return ProbeFit(thetas[:, :-1], thetas[:, -1], n_iter, converged)


@partial(solver_jit, static_argnames=_STATIC)
def fit_path(
    X: Array,
    y: Array,
    n_classes: int,
    lams: Array,
    *,
    rowmask: Array | None = None,
    featmask: Array | None = None,
    max_iter: int = 2000,
    tol: float = 1e-6,
    warm_start: bool = False,
    smooth: solver.Smooth | None = None,
) -> ProbeFit:
    """Fit one problem at every lam of lams [R] (largest first; see `warm_start` above).

    X [N, F] (already standardised; any float dtype), y [N] int class ids in [0, n_classes),
    rowmask [N] 0/1 (padded rows: 0), featmask [F] 0/1 (features held at exactly 0).
    Returns ProbeFit with weights [R, F, K], intercept [R, K], n_iter [R], converged [R].
    """
    solve = dict(max_iter=max_iter, tol=tol, warm_start=warm_start, smooth=smooth)
    return _fit_path(X, y, n_classes, lams, rowmask=rowmask, featmask=featmask, **solve)


def _axis(a: Array | None, shared_ndim: int) -> int | None:
    """vmap axis of an argument that is either shared (rank shared_ndim) or per problem."""
    return None if a is None or a.ndim == shared_ndim else 0


@partial(solver_jit, static_argnames=_STATIC)
def fit_many(
    X: Array,
    y: Array,
    n_classes: int,
    lams: Array,
    *,
    rowmask: Array | None = None,
    featmask: Array | None = None,
    max_iter: int = 2000,
    tol: float = 1e-6,
    warm_start: bool = False,
    smooth: solver.Smooth | None = None,
) -> ProbeFit:
    """`fit_path` over G independent problems in one program (vmap; no Python loop).

    X [G, N, F]. y [N] or [G, N], lams [R] or [G, R], rowmask None, [N] or [G, N] and
    featmask None, [F] or [G, F]: the unbatched ranks are shared by every problem.
    Returns ProbeFit with weights [G, R, F, K], intercept [G, R, K], n_iter/converged [G, R].
    """

    solve = dict(max_iter=max_iter, tol=tol, warm_start=warm_start, smooth=smooth)

    def one(X, y, lams, rowmask, featmask):
        return _fit_path(X, y, n_classes, lams, rowmask=rowmask, featmask=featmask, **solve)

    in_axes = (0, _axis(y, 1), _axis(lams, 1), _axis(rowmask, 1), _axis(featmask, 1))
    return jax.vmap(one, in_axes=in_axes)(X, y, lams, rowmask, featmask)


@partial(solver_jit, static_argnames=_STATIC)
def fit_many_standardized(
    X: Array,
    y: Array,
    n_classes: int,
    lams: Array,
    *,
    rowmask: Array | None = None,
    featmask: Array | None = None,
    max_iter: int = 2000,
    tol: float = 1e-6,
    warm_start: bool = False,
    smooth: solver.Smooth | None = None,
) -> tuple[ProbeFit, Array, Array]:
    """`fit_many` on X [G, N, F] standardised per problem over its unmasked rows.

    Returns (fit, mean [G, F], std [G, F]); the weights are on the standardised scale
    (`unstandardize` maps them to raw X). The standardised copy has X's dtype (module
    docstring), so a bf16 X is solved in bf16.
    """
    mean, std = jax.vmap(standardize_stats, in_axes=(0, _axis(rowmask, 1)))(X, rowmask)
    Xs = jax.vmap(standardize)(X, mean, std)
    fit = fit_many(
        Xs,
        y,
        n_classes,
        lams,
        rowmask=rowmask,
        featmask=featmask,
        max_iter=max_iter,
        tol=tol,
        warm_start=warm_start,
        smooth=smooth,
    )
    return fit, mean, std


# ----------------------------------------------------------------------------- grids


@partial(solver_jit, static_argnames=("n_classes", "num"))
def default_lams(
    X: Array,
    y: Array,
    n_classes: int,
    num: int = 8,
    ratio: float = 1e-3,
    rowmask: Array | None = None,
    featmask: Array | None = None,
) -> Array:
    """Log-spaced lams [num] from lam_max down to lam_max * ratio (X as passed to fit_path).

    lam_max = max |X^T (Y - p0)| / N_eff, the gradient at zero weights and the intercept-only
    optimum p0: the smallest lam whose solution has all-zero weights.
    """
    Xm, T, _, f, m_over_n, _, _, theta0 = _setup(X, y, n_classes, rowmask, featmask)
    # The logits at zero weights are the intercept alone. Not written as X @ 0: XLA CPU
    # (jax 0.10, YNNPACK fusion) miscomputes a dot with a constant zero operand fused into a
    # reduction (-inf / NaN).
    z0 = jnp.broadcast_to(theta0[-1], T.shape)
    p0 = jax.nn.sigmoid(z0) if T.shape[-1] == 1 else jax.nn.softmax(z0, axis=-1)
    grad = _dot("NF,NK->FK", Xm, (p0 - T) * m_over_n[:, None]) * f[:, None]
    # A hair above the exact value, so rounding cannot leave a weight at 1e-9 at lam_max.
    lam_max = jnp.max(jnp.abs(grad)) * (1.0 + 1e-4)
    return lam_max * jnp.logspace(0.0, jnp.log10(ratio), num, dtype=jnp.float32)


def lams_from_c(c_values, n_rows) -> np.ndarray:
    """scikit-learn C values -> our lams [len(c_values)] (fp32), largest lam (smallest C)
    first. Numpy: on device arrays each eager op would compile a program of its own."""
    c = np.sort(np.asarray(c_values, np.float32))
    return (1.0 / (c * np.float32(n_rows))).astype(np.float32)


# ----------------------------------------------------------------------------- prediction


def decision(X: Array, weights: Array, intercept: Array) -> Array:
    """Logits [..., N, K] of X [N, F] under weights [..., F, K] and intercept [..., K]."""
    z = jnp.einsum("NF,...FK->...NK", X.astype(jnp.float32), weights, precision=_HIGHEST)
    return z + intercept[..., None, :]


def predict_proba(X: Array, weights: Array, intercept: Array) -> Array:
    """Class probabilities [..., N, C] (C = 2 for the one-column binary weights)."""
    z = decision(X, weights, intercept)
    if z.shape[-1] == 1:
        p = jax.nn.sigmoid(z)
        return jnp.concatenate([1.0 - p, p], axis=-1)
    return jax.nn.softmax(z, axis=-1)


def predict(X: Array, weights: Array, intercept: Array) -> Array:
    """Class ids [..., N] int32."""
    z = decision(X, weights, intercept)
    if z.shape[-1] == 1:
        return (z[..., 0] > 0).astype(jnp.int32)
    return jnp.argmax(z, axis=-1).astype(jnp.int32)


def accuracy(y_true: Array, y_pred: Array, rowmask: Array | None = None) -> Array:
    """Fraction correct over unmasked rows; y_true [N], y_pred [..., N] -> [...]."""
    m = _row_weights(y_true, rowmask)
    return jnp.sum((y_true == y_pred) * m, axis=-1) / jnp.maximum(m.sum(), 1.0)


def macro_f1(y_true: Array, y_pred: Array, n_classes: int, rowmask=None) -> Array:
    """Unweighted mean F1 over classes present in y_true or y_pred (scikit-learn's
    f1_score(average="macro"), zero_division=0); y_true [N], y_pred [..., N] -> [...]."""
    m = _row_weights(y_true, rowmask)[:, None]
    t = jax.nn.one_hot(y_true, n_classes) * m
    p = jax.nn.one_hot(y_pred, n_classes) * m
    tp = jnp.sum(t * p, axis=-2)
    n_true, n_pred = t.sum(-2), p.sum(-2)
    f1 = 2.0 * tp / jnp.maximum(n_true + n_pred, 1.0)  # = 2tp / (2tp + fp + fn)
    present = (n_true + n_pred) > 0
    return jnp.sum(f1 * present, axis=-1) / jnp.maximum(present.sum(-1), 1)
