"""Stage 1: one L1 probe per (representation, pooling, layer), all lams at once, vmapped over
chunks of layers (and spread over devices), with each finished group kept on disk."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import ahead, probes, slp
from spin_jax.columns import store_layer
from spin_jax.devices import n_devices, round_up, shard_problems, solver_jit
from spin_jax.options import FitData, score, solver_dtype
from spin_jax.store import DTYPES
from spin_jax.streaming import layer_chunks, reads_ahead

log = logging.getLogger("spin_jax")


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
    layers: np.ndarray  # [L] the block layer of each row (0: the embedding output)
    slp_valid: np.ndarray | None = None  # [L] single-hidden-layer probes (opts.slp_probes)
    slp_test: np.ndarray | None = None
    iterations: np.ndarray | None = None  # [L] solver iterations, summed over the lams

    def row(self, layer):
        """The rows of block layers `layer` (consecutive layers from layers[0])."""
        return np.asarray(layer) - int(self.layers[0])

    @classmethod
    def concat(cls, parts: list[ProbeTable]) -> ProbeTable:
        """The tables of consecutive chunks of layers, as one."""
        fields = [f.name for f in dataclasses.fields(cls)]
        return cls(
            **{
                name: None
                if getattr(parts[0], name) is None
                else np.concatenate([getattr(p, name) for p in parts])
                for name in fields
            }
        )

    def first(self, n: int) -> ProbeTable:
        """The first n layers (drops the padding repeats of a chunk)."""
        return dataclasses.replace(
            self, **{k: None if v is None else v[:n] for k, v in vars(self).items()}
        )


def read_layers(src, rep, pool, layers, rows=None):
    """[N, g, 1, F] features of block layers `layers` for one pooling (numpy or jax, as
    read); `_problems` makes them [g, N, F]."""
    return src.read(rep, rows=rows, layers=store_layer(rep, layers), poolings=[pool], dtype=None)


def fit_probe_table(data: FitData, rep: str, pool: int) -> ProbeTable:
    """Probes of every block layer (1..L, or 0..L for hidden with opts.embedding_layer), in
    chunks of layers that fit opts.memory_bytes: features not on the device (the host, or
    a store read memory-mapped) stream through it a chunk at a time (streaming.py)."""
    F, first = data.train.shape(rep)[-1], data.opts.first_layer(rep)
    chunks = layer_chunks(data.opts.memory_bytes, data.train.n_rows, F, first, data.n_layers)
    padded = [np.pad(c, (0, round_up(len(c), n_devices()) - len(c)), "edge") for c in chunks]
    read = functools.partial(_train_problems, data, rep, pool)
    parts = [
        _probe_chunk(data, rep, pool, layers, X).first(len(chunk))
        for chunk, (layers, X) in zip(chunks, _reads_ahead(read, padded), strict=True)
    ]
    return ProbeTable.concat(parts)


def _train_problems(data: FitData, rep: str, pool: int, layers: np.ndarray) -> jax.Array:
    """The training split's [g, N, F] problems of a chunk of layers, on the devices."""
    return shard_problems(_problems(read_layers(data.train, rep, pool, layers)))


def _reads_ahead(read, chunks):
    """(chunk, read(chunk)) for each chunk in turn; where `streaming.reads_ahead()`, the next
    one's read starts in a thread as this one is handed out, so the host's copies and the
    transfer hide behind the device's solve of this one."""
    if not reads_ahead() or len(chunks) < 2:
        yield from ((c, read(c)) for c in chunks)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="spin_jax-read") as pool:
        nxt = pool.submit(read, chunks[0])
        for i, chunk in enumerate(chunks):
            X = nxt.result()
            if i + 1 < len(chunks):
                nxt = pool.submit(read, chunks[i + 1])
            yield chunk, X


def compile_ahead(data: FitData, reps) -> None:
    """Starts the compiles of every representation's probe programs (ahead.py): the solve,
    the score of each split and the pick, for each length its chunks of layers come in."""
    if n_devices() > 1 or not ahead.enabled():
        return  # (several devices: the problems are sharded, and the guess would not match)
    for rep in reps:
        F, first = data.train.shape(rep)[-1], data.opts.first_layer(rep)
        chunks = layer_chunks(data.opts.memory_bytes, data.train.n_rows, F, first, data.n_layers)
        for g in dict.fromkeys(len(layers) for layers in chunks):
            ahead.background(functools.partial(_chunk_programs, data, rep, g))


def _chunk_programs(data: FitData, rep: str, g: int) -> None:
    """Submits the programs of one chunk of g layers of `rep`, their shapes traced here."""
    opts, F = data.opts, data.train.shape(rep)[-1]
    dtype = _stored_dtype(data.train, rep)
    if dtype is None:
        return
    X = jax.ShapeDtypeStruct((g, data.train.n_rows, F), dtype)
    static = dict(
        n_classes=data.n_classes, dtype=solver_dtype(opts), lam_grid=opts.lam_grid,
        n_lams=opts.n_lams, lam_ratio=opts.lam_ratio, max_iter=opts.max_iter, smooth=opts.smooth,
    )  # fmt: skip
    args = (X, data.y, opts.tol)
    ahead.submit(_solve_chunk, *args, **static)
    mean, std, _, fit = jax.eval_shape(functools.partial(_solve_chunk, **static), *args)
    scores, scoring = {}, dict(metric=data.metric, n_classes=data.n_classes)
    for name, src, y in data.scored():
        Xe = jax.ShapeDtypeStruct((g, src.n_rows, F), _stored_dtype(src, rep) or dtype)
        args = (Xe, y, mean, std, fit.weights, fit.intercept)
        ahead.submit(_score_chunk, *args, **scoring)
        scores[name] = jax.eval_shape(functools.partial(_score_chunk, **scoring), *args)
    ahead.submit(_pick_best, scores, fit.weights, fit.intercept, fit.n_iter)


def _stored_dtype(src, rep: str):
    """The dtype a read of `rep` with dtype=None returns, or None if unknown."""
    arrays = getattr(src, "arrays", None)
    if arrays is not None and rep in arrays:
        return np.dtype(arrays[rep].dtype)
    spec = getattr(src, "_spec", None)
    return None if spec is None else np.dtype(DTYPES[spec(rep)[1]])


def _probe_chunk(data: FitData, rep: str, pool: int, layers: np.ndarray, X) -> ProbeTable:
    """The probes of one chunk of layers, X its training problems (`_train_problems`): three
    jitted programs (solve, score per split, pick the best lam), so a chunk of a shape seen
    before compiles nothing."""
    opts = data.opts
    mean, std, Xs, fit = ahead.call(
        _solve_chunk,
        X,
        data.y,
        opts.tol,
        n_classes=data.n_classes,
        dtype=solver_dtype(opts),
        lam_grid=opts.lam_grid,
        n_lams=opts.n_lams,
        lam_ratio=opts.lam_ratio,
        max_iter=opts.max_iter,
        smooth=opts.smooth,
    )
    slp_scores = _slp_scores(data, Xs, rep=rep, pool=pool, layers=layers, mean=mean, std=std)
    del X, Xs
    scores = {
        name: ahead.call(
            _score_chunk,
            _problems(read_layers(src, rep, pool, layers)),
            y,
            mean,
            std,
            fit.weights,
            fit.intercept,
            metric=data.metric,
            n_classes=data.n_classes,
        )
        for name, src, y in data.scored()
    }
    picked = ahead.call(_pick_best, scores, fit.weights, fit.intercept, fit.n_iter)
    picked = jax.device_get(picked)
    return ProbeTable(
        importance=picked["importance"],
        mean=np.asarray(mean),
        std=np.asarray(std),
        valid=picked["valid"],
        test=picked.get("test"),
        weights=picked["weights"],
        intercept=picked["intercept"],
        layers=np.asarray(layers),
        slp_valid=slp_scores.get("valid"),
        slp_test=slp_scores.get("test"),
        iterations=picked["iterations"],
    )


def _problems(x):
    """[g, N, F] problems from a read's [N, g, 1, F]: a numpy copy, or one device program."""
    if isinstance(x, jax.Array):
        return _swap(x)
    return jax.device_put(transposed_copy(x[:, :, 0]))


# Threads that copy a chunk's rows into its [g, N, F] layout: numpy's copy releases the
# GIL, and the copy into fresh memory (its first touch) was most of a chunk's way to the
# device: GPT2-XL-shaped bf16 chunks went at 0.85 GB/s with one thread and 1.84 with two
# on 2 cores (benchmarks/probe_reads.py); on an H100 with 8 and the read ahead, the probes'
# reads took 5.0 s against 9.5 (RESULTS.md, session 21). Below COPY_SPLIT_BYTES one copies.
COPY_THREADS = 8
COPY_SPLIT_BYTES = 16 << 20


def _copy_workers() -> int:
    return max(1, min(COPY_THREADS, os.cpu_count() or 1))


@functools.cache
def _copy_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_copy_workers(), thread_name_prefix="spin_jax-copy")


def transposed_copy(v: np.ndarray) -> np.ndarray:
    """v [N, g, F] (a view of the features) as a contiguous [g, N, F], a block of rows a
    thread."""
    out = np.empty((v.shape[1], v.shape[0], v.shape[2]), v.dtype)
    n = 1 if v.nbytes < COPY_SPLIT_BYTES else _copy_workers()
    bounds = np.linspace(0, v.shape[0], n + 1).astype(int)

    def copy(a: int, b: int) -> None:
        np.copyto(out[:, a:b], v[a:b].swapaxes(0, 1))

    if n == 1:
        copy(0, v.shape[0])
    else:
        list(_copy_pool().map(copy, bounds[:-1], bounds[1:]))
    return out


@solver_jit
def _swap(x):
    return x[:, :, 0].swapaxes(0, 1)


@functools.partial(
    solver_jit,
    static_argnames=("n_classes", "dtype", "lam_grid", "n_lams", "lam_ratio", "max_iter", "smooth"),
)
def _solve_chunk(X, y, tol, *, n_classes, dtype, lam_grid, n_lams, lam_ratio, max_iter, smooth):
    """Standardise each problem of X [g, N, F], pick its lam path, fit every lam."""
    mean, std = jax.vmap(probes.standardize_stats)(X)
    Xs = _standardize_many(X, mean, std, dtype)
    if lam_grid == "paper":
        lams = jnp.broadcast_to(
            probes.lams_from_c(probes.PAPER_C_GRID, X.shape[1]), (X.shape[0], 5)
        )
    else:
        lams = jax.vmap(
            lambda x: probes.default_lams(x, y, n_classes, num=n_lams, ratio=lam_ratio)
        )(Xs)
    fit = probes.fit_many(Xs, y, n_classes, lams, max_iter=max_iter, tol=tol, smooth=smooth)
    return mean, std, Xs, fit


@functools.partial(solver_jit, static_argnames=("metric", "n_classes"))
def _score_chunk(X, y, mean, std, weights, intercept, *, metric, n_classes):
    """Metric [g, R] of every layer's probe at every lam on X [g, N, F]."""
    pred = jax.vmap(probes.predict)(_standardize_many(X, mean, std), weights, intercept)
    return score(metric, y, pred, n_classes)


@solver_jit
def _pick_best(scores: dict, weights, intercept, n_iter) -> dict:
    """Each layer's probe at its best validation lam (lams largest first: ties -> sparser)."""
    best = jnp.argmax(scores["valid"], axis=-1)
    pick = jax.vmap(lambda a, i: a[i])
    W = pick(weights, best)
    out = {name: pick(s, best) for name, s in scores.items()}
    out.update(weights=W, intercept=pick(intercept, best), iterations=n_iter.sum(-1))
    return {**out, "importance": jnp.sum(jnp.square(W), axis=-1)}


def _slp_scores(data: FitData, Xs, *, rep, pool, layers, mean, std) -> dict:
    """{split: metric [g]} of single-hidden-layer probes on the chunk, if the options ask."""
    opts = data.opts
    if not opts.slp_probes:
        return {}
    params = slp.fit(Xs, data.y, n_classes=data.n_classes, hidden=opts.slp_hidden)
    out = {}
    for name, src, y in data.scored():
        Xe = _standardize_many(_problems(read_layers(src, rep, pool, layers)), mean, std)
        out[name] = np.asarray(data.score(y, slp.predict(params, Xe)))
    return out


@functools.partial(solver_jit, static_argnames=("dtype",))
def _standardize_many(X, mean, std, dtype=jnp.float32):
    return ((X.astype(jnp.float32) - mean[:, None]) / std[:, None]).astype(dtype)


def cached(folder, name: str, key: str, compute) -> ProbeTable:
    """compute(), or its result saved in folder/name.npz by a run with the same key."""
    if folder is None:
        return compute()
    path = Path(folder) / f"{name}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                log.info("probes %s: reusing %s", name, path)
                fields = dataclasses.fields(ProbeTable)
                return ProbeTable(**{f.name: z[f.name] if f.name in z else None for f in fields})
    table = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in dataclasses.asdict(table).items() if v is not None}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, key=np.asarray(key), **arrays)
    os.replace(tmp, path)  # atomic: a crash leaves the old file or none
    return table
