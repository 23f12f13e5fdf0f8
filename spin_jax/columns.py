"""Kept columns: which (representation, pooling, layer, neuron) a classifier reads, and
reading them from a feature source, standardised.

Layer j (1..L) means block j for both representations: hidden[j] (the block's output) and
ffn[j-1] (its FFN activation), so columns of layers 1..k need only the first k blocks; hidden
layer 0 is the embedding output. `store_layer` is that rule, written once.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax.devices import solver_jit

REPS = ("hidden", "ffn")  # the codes 0 and 1 of Columns.rep


def store_layer(rep: str, layers):
    """Index into Features.hidden [L+1, ...] / Features.ffn [L, ...] of block layers:
    hidden[j], ffn[j-1]."""
    return layers if rep == "hidden" else layers - 1


@dataclasses.dataclass
class Columns:
    """Columns of a classifier or an integration problem: each (rep, pooling, layer, neuron)."""

    rep: np.ndarray  # [M] index into REPS
    pool: np.ndarray  # [M] index into POOLINGS
    layer: np.ndarray  # [M] block layer 1..L (hidden 0 = the embeddings)
    neuron: np.ndarray  # [M]
    eta_rank: np.ndarray  # [M] the smallest eta index that keeps the neuron (integration)

    def __len__(self):
        return len(self.rep)

    @classmethod
    def empty(cls) -> Columns:
        return cls(*(np.zeros(0, np.int64) for _ in range(5)))

    def device_order(self) -> np.ndarray:
        """Columns in the order programs gather them: hidden ones first, then ffn ones."""
        return np.concatenate([np.nonzero(self.rep == 0)[0], np.nonzero(self.rep == 1)[0]])

    def device_index(self) -> dict[str, jax.Array]:
        """Gather indices into Features (store_layer applied), in `device_order`."""
        h, f = self.rep == 0, self.rep == 1
        return {
            "h_layer": jnp.asarray(store_layer("hidden", self.layer[h])),
            "h_pool": jnp.asarray(self.pool[h]),
            "h_neuron": jnp.asarray(self.neuron[h]),
            "f_layer": jnp.asarray(store_layer("ffn", self.layer[f])),
            "f_pool": jnp.asarray(self.pool[f]),
            "f_neuron": jnp.asarray(self.neuron[f]),
        }


def take(hidden, ffn, index, *, by_pool: bool = False):
    """The indexed neurons of hidden [L+1, B, X, D] and ffn [L, B, X, F], inside a program:
    [B, X, M] (every pooling, or every token), or with `by_pool` [B, M], each column at its
    own pooling; hidden columns first, then ffn ones (Columns.device_order)."""
    if by_pool:
        h = hidden[index["h_layer"], :, index["h_pool"], index["h_neuron"]]
        a = ffn[index["f_layer"], :, index["f_pool"], index["f_neuron"]]
    else:
        h = hidden[index["h_layer"], :, :, index["h_neuron"]]
        a = ffn[index["f_layer"], :, :, index["f_neuron"]]
    # Advanced indices split by a slice go first: [M, B, ...].
    return jnp.moveaxis(jnp.concatenate([h, a], axis=0), 0, -1)


def standardize_columns(x, mean: np.ndarray, std: np.ndarray):
    """(x - mean) / std for numpy or jax x, as a product with the reciprocal of std taken in
    numpy: XLA's division can differ from numpy's in the last bit, its product cannot, so
    features read on the host and on a device standardise to the same bits."""
    return (x - mean) * reciprocal(std)


def reciprocal(std) -> np.ndarray:
    """1 / std in numpy fp32, for `standardize_columns` and the classifier's programs."""
    return np.float32(1.0) / np.asarray(std, np.float32)


def padded_width(M: int) -> int:
    """Columns padded to a power of two (at least 128), so shapes repeat across runs."""
    return max(128, 1 << int(M - 1).bit_length())


def gather(src, cols: Columns, mean, std, rows=None, width: int | None = None):
    """[N, M] standardised features of the columns, read group by group.

    numpy; from a source on the device (DeviceFeatures), a jax Array built there, with
    `width` (>= M) columns, zeros after the M, when it holds both representations.
    """
    if hasattr(src, "read_columns"):
        if {"hidden", "ffn"} <= set(src.arrays):
            return _gather_padded(src, cols, mean, std, rows, width or len(cols))
        return _gather_on_device(src, cols, mean, std, rows)  # M columns: callers pad
    out = np.empty((src.n_rows if rows is None else len(rows), len(cols)), np.float32)
    keys = np.stack([cols.rep, cols.pool, cols.layer], axis=1)
    for r, p, j in np.unique(keys, axis=0) if len(cols) else []:
        at = np.nonzero((keys == (r, p, j)).all(axis=1))[0]
        rep = REPS[r]
        x = src.read(
            rep,
            rows=rows,
            layers=store_layer(rep, np.array([j])),
            poolings=[p],
            neurons=cols.neuron[at],
        )[:, 0, 0]
        out[:, at] = standardize_columns(x, mean[at], std[at])
    return out


def _gather_padded(src, cols: Columns, mean, std, rows, width: int) -> jax.Array:
    """gather from a DeviceFeatures in one program whose shapes depend only on `width`,
    so that every integration group of one padded width reuses it (on a GPU, gathering
    each group's own column count compiled ~10 small programs a group)."""
    index, scale = _padded_index(src.arrays, cols, mean, std, width)
    rows = None if rows is None else in_range(rows, src.n_rows)
    return _take_standardized(src.arrays["hidden"], src.arrays["ffn"], rows, index, scale)


def _padded_index(arrays, cols: Columns, mean, std, width: int):
    """`_take_standardized`'s index and scale for cols of arrays (hidden, ffn: [N, ...])."""
    hidden, ffn = arrays["hidden"], arrays["ffn"]

    def at(a, keep, axis, x):  # in range (else IndexError, as a read); 0 elsewhere
        a = np.where(keep, a, 0)
        return np.pad(in_range(a, x.shape[axis]), (0, width - len(cols)))

    h, f = cols.rep == 0, cols.rep == 1
    at_h = (store_layer("hidden", cols.layer), cols.pool, cols.neuron)
    at_f = (store_layer("ffn", cols.layer), cols.pool, cols.neuron)
    index = (
        np.arange(width) < len(cols),  # the real columns: the padding is exactly 0
        np.pad(h, (0, width - len(cols))),  # is_hidden
        tuple(at(a, h, axis + 1, hidden) for axis, a in enumerate(at_h)),
        tuple(at(a, f, axis + 1, ffn) for axis, a in enumerate(at_f)),
    )
    pad = (0, width - len(cols))
    scale = (np.pad(np.asarray(mean, np.float32), pad), np.pad(reciprocal(std), pad))
    return index, scale


def in_range(idx, n: int) -> np.ndarray:
    """idx as int32 indices into an axis of n, as np.take reads them: negatives count from
    the end, one out of range is an IndexError (jax's gathers would clamp it)."""
    return np.arange(n, dtype=np.int32)[np.asarray(idx, np.int64)]


@solver_jit
def _take_standardized(hidden, ffn, rows, index, scale):
    """Columns of hidden or ffn (is_hidden), standardised as `standardize_columns`; the
    padding columns are 0 (a where, not a product with 0: an inf read there stays out)."""
    if rows is not None:
        take = functools.partial(jnp.take, indices=rows, axis=0, mode="clip")  # in range
        hidden, ffn = take(hidden), take(ffn)
    real, is_hidden, h, f = index
    x = jnp.where(is_hidden, hidden[:, h[0], h[1], h[2]], ffn[:, f[0], f[1], f[2]])
    mean, rstd = scale
    return jnp.where(real, (x.astype(jnp.float32) - mean) * rstd, 0.0)


def _gather_on_device(src, cols: Columns, mean, std, rows=None) -> jax.Array:
    """gather from a DeviceFeatures: one gather program per representation, not per layer."""
    parts, where = [], []
    for r, rep in enumerate(REPS):
        at = np.nonzero(cols.rep == r)[0]
        if len(at):
            layers = store_layer(rep, cols.layer[at])
            x = src.read_columns(rep, layers, cols.pool[at], cols.neuron[at], rows=rows)
            parts.append(standardize_columns(x, mean[at], std[at]))
            where.append(at)
    if not parts:
        return jnp.zeros((src.n_rows if rows is None else len(rows), 0), jnp.float32)
    return jnp.concatenate(parts, axis=1)[:, np.argsort(np.concatenate(where))]


# ------------------------------------------------------------------- one gather for all groups


@dataclasses.dataclass
class UnionColumns:
    """Standardised columns of one split on the device, every integration group's among them:
    X [N, U] (U padded) holds the columns whose `keys` (sorted) are listed; a group's
    matrix is `take`n from it on the device instead of gathered again from the source."""

    keys: np.ndarray  # [u] sorted `column_keys` of the real columns
    X: jax.Array  # [N, padded_width(u)]

    def take(self, cols: Columns, width: int, order: np.ndarray | None = None) -> jax.Array:
        """[N, width]: cols' columns in their order, zeros after them; with order [width],
        those `width` columns in this order instead (one copy, not two)."""
        pos = np.searchsorted(self.keys, column_keys(cols))
        if len(cols) and not np.array_equal(self.keys[np.minimum(pos, len(self.keys) - 1)],
                                            column_keys(cols)):  # fmt: skip
            raise ValueError("UnionColumns.take: a column that is not among the union's")
        pos = np.pad(pos, (0, width - len(cols))).astype(np.int32)
        real = np.arange(width) < len(cols)
        if order is not None:
            pos, real = pos[order], real[order]
        return _take_union(self.X, pos, real)


def column_keys(cols: Columns) -> np.ndarray:
    """One int64 per column, ordered by (rep, pooling, layer, neuron)."""
    rep_pool = cols.rep.astype(np.int64) * 8 + cols.pool
    return (rep_pool << 40) + (cols.layer.astype(np.int64) << 24) + cols.neuron


def union_of(groups: list[Columns]) -> Columns:
    """Every column of the groups once, in `column_keys` order (eta_rank 0)."""
    if not groups or not sum(map(len, groups)):
        return Columns.empty()
    fields = ("rep", "pool", "layer", "neuron")
    stacked = [np.concatenate([getattr(c, f) for c in groups]) for f in fields]
    cols = Columns(*stacked, np.zeros(len(stacked[0]), np.int64))
    _, first = np.unique(column_keys(cols), return_index=True)  # sorted by key
    return Columns(*(a[first] for a in stacked), np.zeros(len(first), np.int64))


def union_columns(src, cols: Columns, mean, std, dtype, chunk_bytes: int) -> UnionColumns:
    """The `UnionColumns` of cols (in `union_of` order) from a host source (MemoryFeatures,
    FeatureStore): its rows are read whole, a chunk of at most chunk_bytes at a time (one
    contiguous copy to the device each), and gathered and standardised there, as `gather`
    from a DeviceFeatures. numpy's gather cost ~40 ns an element on a CPU core (fp16 source,
    per (representation, pooling, layer) group): with a read per group, most of a GPT2-XL
    integration on an H200 (RESULTS.md, session 18)."""
    width = union_width(len(cols))
    shapes = {rep: src.shape(rep) for rep in REPS}
    first = {rep: _row_block(src, rep, np.arange(1)) for rep in REPS}  # the stored dtypes
    row_bytes = sum(x.size * x.dtype.itemsize for x in first.values())
    n = max(1, min(src.n_rows, chunk_bytes // max(row_bytes, 1)))
    index, scale = _padded_index(
        {rep: np.empty((0, *shape[1:]), np.int8) for rep, shape in shapes.items()},
        cols, mean, std, width,
    )  # fmt: skip
    X = _zeros(shape=(src.n_rows, width), dtype=jnp.dtype(dtype))
    for r0 in range(0, src.n_rows, n):  # written in place: the union is held once, not twice
        rows = np.arange(r0, min(r0 + n, src.n_rows))
        hidden, ffn = (jax.device_put(_row_block(src, rep, rows)) for rep in REPS)
        X = _union_rows(X, hidden, ffn, index, scale, np.int32(r0))
    return UnionColumns(column_keys(cols), X)


def union_width(n: int) -> int:
    """The union's padded width: a multiple of 1024 (it is only read, by `take`, whose
    programs are the groups' shapes; a power of two could nearly double its memory)."""
    return padded_width(n) if n <= 1024 else -(-n // 1024) * 1024


@functools.partial(solver_jit, static_argnames=("shape", "dtype"))
def _zeros(*, shape, dtype):
    return jnp.zeros(shape, dtype)


@functools.partial(solver_jit, donate_argnums=0)
def _union_rows(X, hidden, ffn, index, scale, r0):
    part = _take_standardized(hidden, ffn, None, index, scale).astype(X.dtype)
    return jax.lax.dynamic_update_slice(X, part, (r0, jnp.int32(0)))


def _row_block(src, rep: str, rows: np.ndarray) -> np.ndarray:
    """src's rows (a contiguous range) of array rep in its own dtype: a view of numpy
    arrays in memory (copied once, to the device), else a read."""
    x = getattr(src, "arrays", {}).get(rep)
    if isinstance(x, np.ndarray):
        return x[rows[0] : rows[-1] + 1]
    return src.read(rep, rows=rows, dtype=None)


@solver_jit
def _take_union(X, pos, real):
    return jnp.where(real, jnp.take(X, pos, axis=1, mode="clip"), 0).astype(X.dtype)
