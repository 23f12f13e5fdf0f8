"""On-disk store of pooled per-layer activations, written in chunks of rows and resumable.

Layout of a store folder:
  manifest.json        identity (model, config hash, lengths, ...) + array specs, written once
  progress.json        chunks written so far, with the sha256 of each file; rewritten atomically
  labels.npy           [n_rows] int64 class ids (optional)
  NAME-00000.npy       one plain .npy file per array per chunk, [chunk rows, *feature_shape]

Extraction writes "hidden" [L+1, P, D] and "ffn" [L, P, F] per row, or, for a selective
extraction, one "columns" [P, M] per row with the manifest's "neurons" naming the columns
(spin_jax.selection); `read` selects on the feature axes in order, whatever their meaning.

No pickle anywhere. bfloat16 arrays are saved as their uint16 bit pattern and viewed back on
load. Each file is written to a temporary name, fsynced and renamed into place, and only then
is the chunk recorded in progress.json: a crash leaves the chunk not-done, to be rewritten.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spin_jax.errors import StoreError, StoreMismatchError  # noqa: F401 - re-exported
from spin_jax.files import (  # noqa: F401 - write_json_atomic, sha256_file: re-exported
    _fsync_dir,
    _save_npy,
    sha256_file,
    write_json_atomic,
)
from spin_jax.store_manifest import (  # noqa: F401 - the format constants: re-exported
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    FRESH,
    META_KEYS,
    STORAGE,
    STRUCTURE_KEYS,
    check_labels,
    check_same,
    foreign_files,
    jsonable,
    labels_sha256,
    new_manifest,
    read_json,
    read_progress,
)

AXES = ("layers", "poolings", "neurons")  # what `read` selects on axes 1, 2, 3


class FeatureStore:
    """A store folder; build one with `create` (new or resumed) or `open` (complete, to read)."""

    def __init__(self, path: Path, manifest: dict, progress: dict):
        self.path = path
        self.manifest = manifest
        self._progress = progress
        self._verified: set[str] = set()  # files whose sha256 was checked since open

    # ------------------------------------------------------------------------- create / open

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        manifest: Mapping[str, Any],
        n_rows: int,
        chunk_rows: int,
        arrays: Mapping[str, tuple[Sequence[int], str]],
        labels: np.ndarray | None = None,
        label_names: Sequence[str] | None = None,
    ) -> FeatureStore:
        """A new store at `path`, or the store already there if it has the same identity."""
        path = Path(path)
        labels = check_labels(labels, n_rows)
        new = new_manifest(manifest, n_rows, chunk_rows, arrays, labels, label_names)
        if (path / "manifest.json").exists():
            old = read_json(path / "manifest.json", "store manifest")
            check_same(path, old, new)
            store = cls(path, old, read_progress(path))
            store._remove_temp_files()  # leftovers of a crash mid-write
            return store
        if path.exists() and (not path.is_dir() or foreign_files(path)):
            raise StoreError(
                f"{path} exists and is not a feature store (no manifest.json). {FRESH}"
            )
        path.mkdir(parents=True, exist_ok=True)
        if labels is not None:
            _save_npy(path / "labels.npy", labels)
        write_json_atomic(path / "progress.json", {"chunks": {}})
        write_json_atomic(path / "manifest.json", new)  # last: its presence marks a store
        return cls(path, new, {"chunks": {}})

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = False) -> FeatureStore:
        """A complete store, to read. `verify=True` checks every file's sha256 too."""
        path = Path(path)
        if not path.is_dir():
            raise StoreError(
                f"no feature store at {path}: the folder does not exist. Run the "
                "extract command first, or check the path."
            )
        if not (path / "manifest.json").exists():
            raise StoreError(
                f"{path} is not a feature store: it has no manifest.json. Run the "
                "extraction with its output there, or check the path."
            )
        manifest = read_json(path / "manifest.json", "store manifest")
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{path} holds format {manifest.get('format')!r} version "
                f"{manifest.get('format_version')!r}; this spin_jax reads "
                f"{FORMAT!r} version {FORMAT_VERSION}. Re-run the extract command."
            )
        store = cls(path, manifest, read_progress(path))
        missing = store.missing_chunks()
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise StoreError(
                f"feature store {path} is incomplete: {len(missing)} of {store.n_chunks} "
                f"chunks missing ({shown}). Re-run the same extract command to resume it."
            )
        if verify:
            store.verify()
        return store

    # ------------------------------------------------------------------------- properties

    @property
    def n_rows(self) -> int:
        return self.manifest["n_rows"]

    @property
    def chunk_rows(self) -> int:
        return self.manifest["chunk_rows"]

    @property
    def n_chunks(self) -> int:
        return self.manifest["n_chunks"]

    @property
    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (feature_shape, dtype name)."""
        return {
            name: (tuple(spec["shape"]), spec["dtype"])
            for name, spec in self.manifest["arrays"].items()
        }

    @property
    def label_names(self) -> tuple[str, ...] | None:
        names = self.manifest.get("label_names")
        return None if names is None else tuple(names)

    @property
    def labels(self) -> np.ndarray | None:
        digest = self.manifest.get("labels_sha256")
        if digest is None:
            return None
        labels = np.load(self.path / "labels.npy", allow_pickle=False)
        if labels_sha256(labels) != digest:
            raise StoreError(
                f"{self.path / 'labels.npy'} does not match the sha256 in manifest.json: it "
                "was modified or corrupted. Re-extract into a new folder."
            )
        return labels

    @property
    def complete(self) -> bool:
        return not self.missing_chunks()

    def shape(self, name: str) -> tuple[int, ...]:
        return (self.n_rows, *self._spec(name)[0])

    def chunk_rows_range(self, i: int) -> tuple[int, int]:
        self._check_chunk(i)
        start = i * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n_rows)

    def missing_chunks(self) -> list[int]:
        """Chunks not recorded as written, or whose files have since disappeared."""
        done = self._progress["chunks"]
        return [
            i
            for i in range(self.n_chunks)
            if str(i) not in done
            or not all((self.path / f).exists() for f in done[str(i)]["files"])
        ]

    # ------------------------------------------------------------------------- writing

    def write_chunk(
        self, i: int, arrays: Mapping[str, np.ndarray], *, stats: Mapping | None = None
    ) -> None:
        """Writes chunk `i` (every declared array) atomically, then records it as done,
        with `stats` (JSON numbers about how it was made) beside it."""
        start, stop = self.chunk_rows_range(i)
        expected = set(self.manifest["arrays"])
        if set(arrays) != expected:
            raise StoreError(
                f"chunk {i} got arrays {sorted(arrays)}; the store holds "
                f"{sorted(expected)}. Pass exactly those."
            )
        checked = {name: self._check_array(name, arrays[name], stop - start) for name in arrays}
        if self._progress["chunks"].pop(str(i), None) is not None:
            # Rewriting a done chunk: un-record it first, so a crash midway leaves it not-done.
            write_json_atomic(self.path / "progress.json", self._progress)
        files = {}
        for name, array in checked.items():
            file = self.path / _chunk_file(name, i)
            _save_npy(file, array.view(STORAGE[self._spec(name)[1]]))
            files[file.name] = sha256_file(file)
            self._verified.add(file.name)  # hashed as written
        _fsync_dir(self.path)
        entry = {"rows": [start, stop], "files": files}
        if stats is not None:
            entry["stats"] = jsonable(dict(stats), "chunk stats")
        self._progress["chunks"][str(i)] = entry
        write_json_atomic(self.path / "progress.json", self._progress)

    def _check_array(self, name: str, array: Any, rows: int) -> np.ndarray:
        shape, dtype = self._spec(name)
        array = np.asarray(array)  # also takes jax arrays
        want = (rows, *shape)
        if array.shape != want:
            raise StoreError(
                f"array {name!r} has shape {array.shape}; chunk expects {want} "
                "(rows of this chunk, then the feature shape given at create)."
            )
        if array.dtype != DTYPES[dtype]:
            raise StoreError(
                f"array {name!r} has dtype {array.dtype}; the store holds {dtype}. "
                f"Cast it first, e.g. np.asarray(x).astype(store dtype)."
            )
        return np.ascontiguousarray(array)

    def chunk_stats(self) -> list[dict]:
        """The `stats` recorded with each written chunk (chunks written without: {})."""
        return [entry.get("stats", {}) for entry in self._progress["chunks"].values()]

    def _remove_temp_files(self) -> None:
        for tmp in self.path.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------------- reading

    def verify(self) -> None:
        """Recomputes every file's sha256 against progress.json."""
        for i, entry in sorted(self._progress["chunks"].items(), key=lambda kv: int(kv[0])):
            for file in entry["files"]:
                self._verify_file(file, int(i))

    def _verify_file(self, file: str, i: int) -> None:
        """Checks a chunk file's sha256 once per open store: reading a chunk hashes it first
        (about 1 GB/s, small next to the forward that made it)."""
        if file in self._verified:
            return
        if sha256_file(self.path / file) != self._progress["chunks"][str(i)]["files"][file]:
            raise StoreError(
                f"{self.path / file} (chunk {i}) does not match its recorded sha256: "
                "it was modified or corrupted. Delete that file and re-run the same "
                "extract command to rewrite the chunk."
            )
        self._verified.add(file)

    def read(
        self,
        name: str,
        *,
        rows: Sequence[int] | np.ndarray | None = None,
        layers: Sequence[int] | np.ndarray | None = None,
        poolings: Sequence[int] | np.ndarray | None = None,
        neurons: Sequence[int] | np.ndarray | None = None,
        dtype: Any = np.float32,
    ) -> np.ndarray:
        """Rows x selected layers (axis 1), poolings (axis 2) and neurons (axis 3) of `name`.

        Gathers from memory-mapped chunks, so peak memory is about the size of the result.
        `dtype=None` keeps the stored dtype.
        """
        shape, stored = self._spec(name)
        full = (self.n_rows, *shape)
        row_idx, axes = _selection(name, full, rows, (layers, poolings, neurons))
        out_shape = (len(row_idx), *(len(a) for a in axes), *full[len(axes) + 1 :])
        out = np.empty(out_shape, DTYPES[stored] if dtype is None else dtype)
        chunk_of = row_idx // self.chunk_rows
        for i in np.unique(chunk_of):
            dest = np.flatnonzero(chunk_of == i)
            local = row_idx[dest] - i * self.chunk_rows
            mm = self._memmap(name, int(i))
            out[dest] = mm[np.ix_(local, *axes)].view(DTYPES[stored])
        return out

    def _memmap(self, name: str, i: int) -> np.ndarray:
        file = self.path / _chunk_file(name, i)
        start, stop = self.chunk_rows_range(i)
        shape, dtype = self._spec(name)
        if str(i) in self._progress["chunks"]:  # a chunk being written is not read
            self._verify_file(file.name, i)
        try:
            mm = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise StoreError(
                f"cannot read {file} ({e}). Delete it and re-run the same extract "
                "command to rewrite the chunk."
            ) from None
        if mm.shape != (stop - start, *shape) or mm.dtype != STORAGE[dtype]:
            raise StoreError(
                f"{file} holds {mm.dtype} {mm.shape}, expected {STORAGE[dtype]} "
                f"{(stop - start, *shape)}. Delete it and re-run the same extract "
                "command to rewrite the chunk."
            )
        return mm

    def _spec(self, name: str) -> tuple[tuple[int, ...], str]:
        spec = self.manifest["arrays"].get(name)
        if spec is None:
            raise StoreError(
                f"no array {name!r} in store {self.path}; it holds "
                f"{', '.join(self.manifest['arrays'])}."
            )
        return tuple(spec["shape"]), spec["dtype"]

    def _check_chunk(self, i: int) -> None:
        if not 0 <= i < self.n_chunks:
            raise StoreError(
                f"chunk {i} out of range: store {self.path} has chunks 0 to {self.n_chunks - 1}."
            )


# ----------------------------------------------------------------------------- helpers


def _chunk_file(name: str, i: int) -> str:
    return f"{name}-{i:05d}.npy"


def _selection(name, full, rows, selections) -> tuple[np.ndarray, list[np.ndarray]]:
    """Row indices, and index arrays for axes 1.. up to the last one with a selection.

    Axes after it are left out, so they come along whole in basic (cheap) indexing; only
    the selected elements are then read from the memory map.
    """
    row_idx = _index(rows, full[0], "rows", name)
    row_idx = np.arange(full[0]) if row_idx is None else row_idx
    picks = {}
    for axis, (sel, what) in enumerate(zip(selections, AXES, strict=True), start=1):
        if sel is None:
            continue
        if axis >= len(full):
            raise StoreError(f"array {name!r} has shape {full}: no axis {axis} to select {what}.")
        picks[axis] = _index(sel, full[axis], what, name)
    last = max(picks, default=0)
    return row_idx, [picks.get(a, np.arange(full[a])) for a in range(1, last + 1)]


def _index(sel, size: int, what: str, name: str) -> np.ndarray | None:
    """`sel` as an int64 index array with negative indices resolved; None stays None."""
    if sel is None:
        return None
    idx = np.atleast_1d(np.asarray(sel))
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        raise StoreError(f"{what} for {name!r} must be a 1-D list of integer indices.")
    if idx.size and (idx.min() < -size or idx.max() >= size):
        raise StoreError(
            f"{what} index out of range for {name!r}: valid indices are 0 to "
            f"{size - 1} (or negative from the end)."
        )
    return idx.astype(np.int64) % max(size, 1)
