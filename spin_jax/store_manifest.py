"""A feature store's manifest.json and progress.json (the layout: spin_jax/store.py).

The manifest is the store's identity (model, config hash, lengths, ... given by the caller)
and its structure (rows, chunk size, array specs, labels), written once; a resumed store
must match it key by key, and each key that changed is named. progress.json records the
chunks written so far, with the sha256 of each file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import operator
import re
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from spin_jax._version import __version__
from spin_jax.errors import StoreError, StoreMismatchError

FORMAT = "spin_jax.feature_store"
FORMAT_VERSION = 1
DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
# What each logical dtype is saved as: np.save cannot write bfloat16 without pickle.
STORAGE = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
}
# Keys the store writes itself; those among them that describe the data are compared on resume.
STRUCTURE_KEYS = (
    "format_version",
    "n_rows",
    "chunk_rows",
    "arrays",
    "label_names",
    "labels_sha256",
)
META_KEYS = ("format", "spin_jax_version", "created", "n_chunks", "identity_keys")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
FRESH = "Choose another output folder, or delete this one to start over."


def jsonable(obj: Any, what: str) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), so old and new compare equal."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise StoreError(
            f"{what} must hold only JSON values (str, int, float, bool, None, lists, dicts): {e}."
        ) from None


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(
            f"{path} is not valid JSON ({e}): the {what} is damaged. Delete "
            f"{path.parent} and re-run the extract command."
        ) from None
    if not isinstance(obj, dict):
        raise StoreError(
            f"{path} does not hold a JSON object: the {what} is damaged. Delete "
            f"{path.parent} and re-run the extract command."
        )
    return obj


def labels_sha256(labels: np.ndarray) -> str:
    """The digest the manifest records for labels.npy (of the int64 ids' bytes)."""
    return hashlib.sha256(labels.tobytes()).hexdigest()


def check_labels(labels, n_rows: int) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (n_rows,) or not np.issubdtype(labels.dtype, np.integer):
        raise StoreError(
            f"labels must be {n_rows} integer class ids (shape ({n_rows},)); got "
            f"{labels.dtype} {labels.shape}."
        )
    return labels.astype(np.int64)


def _array_specs(arrays) -> dict:
    specs = {}
    for name, (shape, dtype) in arrays.items():
        if not _NAME.fullmatch(name) or name == "labels":
            raise StoreError(
                f"array name {name!r} is not allowed; use letters, digits and _, "
                "starting with a letter (and not 'labels')."
            )
        if dtype not in DTYPES:
            raise StoreError(f"array {name!r} has dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
        specs[name] = {
            "shape": [int(s) for s in shape],
            "dtype": dtype,
            "storage_dtype": STORAGE[dtype].name,
        }
    if not specs:
        raise StoreError(
            "a feature store needs at least one array; pass arrays={name: (feature_shape, dtype)}."
        )
    return specs


def new_manifest(identity, n_rows, chunk_rows, arrays, labels, label_names) -> dict:
    identity = jsonable(dict(identity), "manifest")
    try:
        n_rows, chunk_rows = operator.index(n_rows), operator.index(chunk_rows)
        positive = n_rows >= 1 and chunk_rows >= 1
    except TypeError:
        positive = False
    if not positive:
        raise StoreError(
            f"n_rows and chunk_rows must be positive integers; got {n_rows!r} and {chunk_rows!r}."
        )
    specs = _array_specs(arrays)
    structure = {
        "format_version": FORMAT_VERSION,
        "n_rows": n_rows,
        "chunk_rows": chunk_rows,
        "arrays": specs,
        "label_names": None if label_names is None else [str(n) for n in label_names],
        "labels_sha256": None if labels is None else labels_sha256(labels),
    }
    for key in identity.keys() & (set(STRUCTURE_KEYS) | set(META_KEYS)):
        if key in META_KEYS:
            raise StoreError(f"manifest key {key!r} is reserved by the store; rename it.")
        if identity[key] != structure[key]:
            raise StoreError(
                f"manifest[{key!r}] = {identity[key]!r} disagrees with the "
                f"{key}={structure[key]!r} argument; drop it from the manifest."
            )
    meta = {
        "format": FORMAT,
        "spin_jax_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n_chunks": math.ceil(n_rows / chunk_rows),
        "identity_keys": sorted(identity),
    }
    return {**identity, **structure, **meta}


def foreign_files(path: Path) -> list[str]:
    """Files in `path` that a store creation cut short by a crash would not have left."""
    ours = {"labels.npy", "progress.json"}
    return [p.name for p in path.iterdir() if p.name not in ours and ".tmp-" not in p.name]


def check_same(path: Path, old: dict, new: dict) -> None:
    """Raises StoreMismatchError naming every identity key whose value changed."""
    keys = list(
        dict.fromkeys([*old.get("identity_keys", []), *new["identity_keys"], *STRUCTURE_KEYS])
    )
    changed = [k for k in keys if old.get(k) != new.get(k)]
    if not changed:
        return
    lines = "; ".join(
        f"{k}: stored {_short(old.get(k))}, new {_short(new.get(k))}" for k in changed
    )
    raise StoreMismatchError(
        f"{path} holds a feature store made with different settings ({lines}). {FRESH}"
    )


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_progress(path: Path) -> dict:
    file = path / "progress.json"
    if not file.exists():  # a crash between manifest and progress: nothing was written yet
        return {"chunks": {}}
    progress = read_json(file, "store progress record")
    if not isinstance(progress.get("chunks"), dict):
        raise StoreError(
            f"{file} has no 'chunks' record: it is damaged. Delete it and re-run "
            "the extract command; every chunk will be rewritten."
        )
    return progress
