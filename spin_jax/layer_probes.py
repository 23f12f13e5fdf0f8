"""Stage 1: one L1 probe per (representation, pooling, layer), all lams at once, vmapped over
chunks of layers (and spread over devices), with each finished group kept on disk."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import probes, slp
from spin_jax.columns import store_layer
from spin_jax.devices import n_devices, round_up, shard_problems
from spin_jax.options import FitData, SpinOptions, solver_dtype

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
    """[g, N, F] features of block layers `layers` for one pooling (numpy or jax, as read)."""
    x = src.read(rep, rows=rows, layers=store_layer(rep, layers), poolings=[pool], dtype=None)
    return x[:, :, 0].swapaxes(0, 1)  # a view of numpy, a device op of jax: no host copy


def fit_probe_table(data: FitData, rep: str, pool: int) -> ProbeTable:
    """Probes of every block layer (1..L, or 0..L for hidden with opts.embedding_layer), in
    chunks of layers that fit opts.memory_bytes."""
    F = data.train.shape(rep)[-1]
    chunk = max(1, data.opts.memory_bytes // max(1, 12 * data.train.n_rows * F))
    chunk = round_up(chunk, n_devices())  # whole problems per device
    parts = []
    for start in range(data.opts.first_layer(rep), data.n_layers + 1, chunk):
        layers = np.arange(start, min(start + chunk, data.n_layers + 1))
        padded = np.pad(layers, (0, round_up(len(layers), n_devices()) - len(layers)), "edge")
        parts.append(_probe_chunk(data, rep, pool, padded).first(len(layers)))
    return ProbeTable.concat(parts)


def _probe_chunk(data: FitData, rep: str, pool: int, layers: np.ndarray) -> ProbeTable:
    opts = data.opts
    X = shard_problems(jnp.asarray(read_layers(data.train, rep, pool, layers)))
    mean, std = jax.vmap(probes.standardize_stats)(X)
    Xs = _standardize_many(X, mean, std, solver_dtype(opts))
    n_rows = X.shape[1]
    lams = jax.vmap(lambda x: _lams(x, data.y, data.n_classes, opts, n_rows))(Xs)
    fit = probes.fit_many(
        Xs,
        data.y,
        data.n_classes,
        lams,
        max_iter=opts.max_iter,
        tol=opts.tol,
        smooth=opts.smooth,
    )
    slp_scores = _slp_scores(data, Xs, rep=rep, pool=pool, layers=layers, mean=mean, std=std)
    del X, Xs
    scores = {
        name: _scores(data, src, y, rep=rep, pool=pool, layers=layers, mean=mean, std=std, fit=fit)
        for name, src, y in data.scored()
    }
    best = jnp.argmax(scores["valid"], axis=-1)  # lams largest first: ties -> the sparser
    pick = jax.vmap(lambda a, i: a[i])
    W, b = pick(fit.weights, best), pick(fit.intercept, best)
    return ProbeTable(
        importance=np.asarray(jnp.sum(jnp.square(W), axis=-1)),
        mean=np.asarray(mean),
        std=np.asarray(std),
        valid=np.asarray(pick(scores["valid"], best)),
        test=np.asarray(pick(scores["test"], best)) if "test" in scores else None,
        weights=np.asarray(W),
        intercept=np.asarray(b),
        layers=np.asarray(layers),
        slp_valid=slp_scores.get("valid"),
        slp_test=slp_scores.get("test"),
    )


def _slp_scores(data: FitData, Xs, *, rep, pool, layers, mean, std) -> dict:
    """{split: metric [g]} of single-hidden-layer probes on the chunk, if the options ask."""
    opts = data.opts
    if not opts.slp_probes:
        return {}
    params = slp.fit(Xs, data.y, n_classes=data.n_classes, hidden=opts.slp_hidden)
    out = {}
    for name, src, y in data.scored():
        Xe = _standardize_many(jnp.asarray(read_layers(src, rep, pool, layers)), mean, std)
        out[name] = np.asarray(data.score(y, slp.predict(params, Xe)))
    return out


def _lams(X, y, n_classes, opts: SpinOptions, n_rows: int):
    if opts.lam_grid == "paper":
        return probes.lams_from_c(probes.PAPER_C_GRID, n_rows)
    return probes.default_lams(X, y, n_classes, num=opts.n_lams, ratio=opts.lam_ratio)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _standardize_many(X, mean, std, dtype=jnp.float32):
    return ((X.astype(jnp.float32) - mean[:, None]) / std[:, None]).astype(dtype)


def _scores(data: FitData, src, y, *, rep, pool, layers, mean, std, fit):
    """Metric [g, R] of every layer's probe at every lam on `src`."""
    Xs = _standardize_many(jnp.asarray(read_layers(src, rep, pool, layers)), mean, std)
    pred = jax.vmap(probes.predict)(Xs, fit.weights, fit.intercept)  # [g, R, N]
    return data.score(y, pred)


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
