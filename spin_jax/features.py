"""Extracted features held in memory, read like a FeatureStore: MemoryFeatures (numpy, on
the host) and DeviceFeatures (jax Arrays on the accelerator, read there without a copy)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax.columns import in_range
from spin_jax.store import StoreError, _selection


class _ArrayFeatures:
    """Extracted features held in memory, read like a FeatureStore.

    `read` selects on axes 1, 2, 3 in turn: of "hidden" / "ffn" [N, L, P, F] the layers,
    poolings and neurons; a selective extraction's "columns" [N, P, M] has only two.
    """

    def __init__(self, arrays, labels, label_names, manifest):
        self.arrays, self.labels, self.label_names = arrays, labels, label_names
        self.manifest = manifest
        self.n_rows = len(next(iter(arrays.values())))

    def shape(self, name: str):
        return self.arrays[name].shape


class MemoryFeatures(_ArrayFeatures):
    """Features in host memory: numpy arrays; `read` returns numpy arrays."""

    def read(self, name, *, rows=None, layers=None, poolings=None, neurons=None, dtype=np.float32):
        """As FeatureStore.read: the same index rules (negatives, boolean masks, empty lists)
        and the same errors for a missing array, an index out of range or a missing axis."""
        if name not in self.arrays:
            raise StoreError(f"no array {name!r} in these features; they hold {list(self.arrays)}.")
        x = self.arrays[name]
        row_idx, axes = _selection(name, x.shape, rows, (layers, poolings, neurons))
        runs = [_run(i) for i in (row_idx, *axes)]
        if all(r is not None for r in runs):  # a view: the probes' chunks of layers
            x = x[tuple(runs)]
            if dtype is None:
                x = x.view()
                x.flags.writeable = False  # the features' own memory
                return x
            return x.astype(dtype)
        x = x[np.ix_(row_idx, *axes)]
        return x if dtype is None else x.astype(dtype)


def _run(idx: np.ndarray) -> slice | None:
    """idx as a slice where it is a run of consecutive indices, else None. (A read of such
    runs is a view: numpy's gather by np.ix_, then the probes' transposed copy, moved a
    GPT2-XL shape's layers at a third of the speed of one copy from the view, 2 CPU cores.)"""
    if idx.size and idx[-1] - idx[0] == idx.size - 1 and np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return None


class DeviceFeatures(_ArrayFeatures):
    """Features on the accelerator: jax Arrays (`extract(..., placement="device")`).

    `read` returns jax Arrays on the same devices, selected and cast in one jitted program,
    so the learner's probes read them without a copy through the host. Labels stay numpy.
    """

    def read(self, name, *, rows=None, layers=None, poolings=None, neurons=None, dtype=np.float32):
        x = self.arrays[name]
        sels = (rows, layers, poolings, neurons)
        index = tuple(None if s is None else in_range(s, x.shape[a]) for a, s in enumerate(sels))
        return _take(x, index, None if dtype is None else jnp.dtype(dtype))

    def read_columns(self, name, layers, poolings, neurons, *, rows=None, dtype=np.float32):
        """[N, M]: column m is x[:, layers[m], poolings[m], neurons[m]] of "hidden" / "ffn"
        [N, L, P, F], read in one gather (the learner's candidate columns)."""
        x = self.arrays[name]
        rows = None if rows is None else in_range(rows, x.shape[0])
        cols = tuple(
            in_range(i, n) for i, n in zip((layers, poolings, neurons), x.shape[1:], strict=True)
        )
        return _take_columns(x, rows, cols, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames="dtype")
def _take_columns(x, rows, cols, dtype):
    x = x if rows is None else jnp.take(x, rows, axis=0, mode="clip")  # in range: in_range
    return x[:, cols[0], cols[1], cols[2]].astype(dtype)


@functools.partial(jax.jit, static_argnames="dtype")
def _take(x, index, dtype=None):
    for axis, idx in enumerate(index):
        if idx is not None:
            x = jnp.take(x, idx, axis=axis, mode="clip")  # in range: in_range
    return x if dtype is None else x.astype(dtype)
