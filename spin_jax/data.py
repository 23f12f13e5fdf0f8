"""Labelled texts: the text and label columns of a table (spin_jax.readers: local files,
`datasets.save_to_disk` folders, the Hugging Face hub) picked and checked, labels encoded as
class ids; and the checks and splits the estimator applies to them.

Every user mistake (wrong column, missing or unseen labels, empty texts, a regression
target) raises DataError whose message names the problem and the fix; no library traceback
reaches the user.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spin_jax.errors import DataError
from spin_jax.readers import FILE_TYPES, read_table  # noqa: F401 - FILE_TYPES: re-exported

TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")
LABEL_COLUMNS = ("label", "labels", "stars", "sentiment", "class")
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class TextDataset:
    texts: list[str]
    labels: np.ndarray | None  # [n] int64 class ids
    label_names: tuple[str, ...] | None  # label_names[id] is the original label, as a string
    source: str

    def __len__(self) -> int:
        return len(self.texts)


def load_texts(
    source: str | os.PathLike,
    *,
    split: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    label_names: Sequence[str] | None = None,
    require_labels: bool = True,
    allow_empty: bool = False,
) -> TextDataset:
    """Reads texts and integer class ids.

    Without `label_names` the classes are the sorted distinct labels (ints numerically, strings
    lexicographically); with them (the names seen at fit time) a label outside them is an error.
    `split` picks a split of a DatasetDict; plain files have no splits and ignore it.
    With `require_labels=False` (predict) the label column may be absent, or all empty.
    Empty or whitespace-only texts are refused unless `allow_empty`.
    """
    source = str(source)
    table = read_table(source, split)
    if table.n_rows == 0:
        raise DataError(f"{source} has no rows; pass a file with at least one example.")
    names = None if label_names is None else tuple(str(n) for n in label_names)
    text_col = _pick_column(table, text_column, TEXT_COLUMNS, "text", source, required=True)
    texts = _clean_texts(table.get(text_col), text_col, source)
    check_texts(texts, source, allow_empty=allow_empty, column=text_col)
    label_col = _pick_column(table, label_column, LABEL_COLUMNS, "label", source, require_labels)
    if label_col is None:
        return TextDataset(texts, None, names, source)
    values = table.get(label_col)
    class_names = table.class_names.get(label_col)
    if class_names is not None:  # ClassLabel ids mean class_names[id]; -1 marks "no label"
        values = [
            class_names[v] if v is not None and 0 <= v < len(class_names) else None for v in values
        ]
        names = names or tuple(class_names)
    missing = [i for i, v in enumerate(values) if _is_missing(v)]
    if missing and not require_labels and len(missing) == len(values):
        return TextDataset(texts, None, names, source)
    labels, names = _encode_labels(values, names, label_col, source)
    return TextDataset(texts, labels, names, source)


def _rows(rows: list[int], limit: int = 5) -> str:
    """Rows counted from 1: "3, 7 and 9", or "3, 7, 9, ... (12 rows)"."""
    shown = ", ".join(str(r + 1) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} rows)" if len(rows) > limit else "")


def check_texts(
    texts, source: str, *, allow_empty: bool = False, column: str | None = None
) -> list:
    """The texts as a list (any iterable is read once), refusing a lone string (a list of
    texts was meant) and, unless `allow_empty`, empty or whitespace-only texts: a model
    reads them as its special tokens alone, and the prediction means nothing."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("expected a list of texts, got a single string; wrap it in a list: [text].")
    texts = list(texts)
    if allow_empty:
        return texts
    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty:
        where = f" (column {column!r})" if column else ""
        raise DataError(
            f"empty or whitespace-only text in row {_rows(empty)} of {source}{where}, rows "
            "counted from 1; drop those rows, or allow empty texts (allow_empty=True) to "
            "read them anyway.",
            cli_hint="--allow-empty",
        )
    return texts


def _pick_column(table, explicit, defaults, kind, source, required):
    available = ", ".join(map(str, table.columns)) or "(none)"
    fix = f"Pass {kind}_column= with one of them."
    hint = f"--{kind}-column NAME"
    if explicit is not None:
        if explicit in table.columns:
            return explicit
        raise DataError(
            f"column {explicit!r} not found in {source}; available columns: {available}. {fix}",
            cli_hint=hint,
        )
    for name in defaults:
        if name in table.columns:
            return name
    if not required:
        return None
    raise DataError(
        f"no {kind} column found in {source} (looked for {', '.join(defaults)}); "
        f"available columns: {available}. {fix}",
        cli_hint=hint,
    )


# Cells that spreadsheets and pandas write for "no value"; never a class name.
MISSING_LABELS = frozenset({"nan", "na", "n/a", "<na>", "none", "null"})
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")
# More distinct labels than this share of the rows (and than MAX_FREE_CLASSES) looks like
# a regression target or an id column, not classes.
CLASS_SHARE = 0.2
MAX_FREE_CLASSES = 20


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING_LABELS | {""}


def _clean_texts(values: list, column: str, source: str) -> list[str]:
    texts = []
    for i, v in enumerate(values):
        # An empty string is a valid (if useless) text; None or NaN means the cell is absent.
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise DataError(
                f"text is missing in row {i + 1} of {source} (column {column!r}, rows counted "
                "from 1 without the header); fill it in or drop the row."
            )
        texts.append(v if isinstance(v, str) else str(v))
    return texts


def _label_key(value: Any, row: int, column: str, source: str) -> int | str:
    """Normalises one label: integral numbers and integer strings ("3" in a CSV) become ints."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str):
        value = value.strip()
        if _INT.fullmatch(value):
            return int(value)
        if _FLOAT.fullmatch(value) and float(value).is_integer():
            return int(float(value))  # "1.0" from a float column written as text
        if _FLOAT.fullmatch(value):
            raise DataError(_continuous(value, row, column, source))
        return value
    if isinstance(value, (float, np.floating)):
        raise DataError(_continuous(value, row, column, source))
    raise DataError(
        f"label {value!r} in row {row + 1} of {source} (column {column!r}) is not an integer "
        "or a string; use class names or integer class ids."
    )


def _continuous(value, row: int, column: str, source: str) -> str:
    return (
        f"label {value!r} in row {row + 1} of {source} (column {column!r}) is a fractional "
        "number: this looks like a regression target, and SPIN fits classifiers. Pass a "
        "column of class labels, or bin the values into classes first."
    )


def _check_class_count(n_classes: int, n_rows: int, column: str, source: str) -> None:
    if n_classes > MAX_FREE_CLASSES and n_classes > CLASS_SHARE * n_rows:
        raise DataError(
            f"column {column!r} of {source} holds {n_classes} distinct labels in {n_rows} "
            "rows: this looks like a regression target or an id column, not classes. Pass "
            "the column of class labels.",
            cli_hint="--label-column NAME",
        )


def _encode_labels(values, names, column, source) -> tuple[np.ndarray, tuple[str, ...]]:
    missing = [i for i, v in enumerate(values) if _is_missing(v)]
    if missing:
        raise DataError(
            f"label is missing in row {_rows(missing)} of {source} (column {column!r}, rows "
            "counted from 1; empty, NaN, None and null are no labels); fill the labels in "
            "or drop those rows."
        )
    keys = [_label_key(v, i, column, source) for i, v in enumerate(values)]
    if names is None:
        distinct = set(keys)
        _check_class_count(len(distinct), len(keys), column, source)
        if all(isinstance(k, int) for k in distinct):
            names = tuple(str(k) for k in sorted(distinct))
        else:
            names = tuple(sorted(str(k) for k in distinct))
    index = {name: i for i, name in enumerate(names)}
    ids = np.empty(len(keys), np.int64)
    for row, key in enumerate(keys):
        found = index.get(str(key))
        if found is None:
            raise DataError(
                f"label {str(key)!r} in row {row + 1} of {source} was not seen at fit time; "
                f"known labels: {', '.join(names)}. Use data with the training label set, "
                "or retrain on data that includes this label."
            )
        ids[row] = found
    return ids, names


def encode_labels(values, names=None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class ids for in-memory labels (strings or ints), with the sorted label names."""
    return _encode_labels(list(values), names, "label", "the given labels")


# ----------------------------------------------------------------------------- splits


def stratified_split(
    labels: np.ndarray, fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_idx, valid_idx): about `fraction` of each class goes to validation.

    A class with >= 2 rows puts at least one row in each part; a single-row class stays in
    training. Deterministic in `seed`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {labels.shape}.")
    if not 0.0 < fraction < 1.0:
        raise DataError(
            f"validation fraction must be between 0 and 1, got {fraction}; pass e.g. 0.2."
        )
    rng = np.random.default_rng(seed)
    valid = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        if len(rows) >= 2:
            n_valid = min(max(1, round(fraction * len(rows))), len(rows) - 1)
            valid.append(rows[:n_valid])
    valid_idx = np.sort(np.concatenate(valid)) if valid else np.zeros(0, np.int64)
    train_mask = np.ones(len(labels), bool)
    train_mask[valid_idx] = False
    return np.flatnonzero(train_mask), valid_idx.astype(np.int64)


def subset(ds: TextDataset, idx) -> TextDataset:
    """The rows `idx` (int indices or a boolean mask) of `ds`, in that order."""
    idx = np.asarray(idx)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    texts = [ds.texts[i] for i in idx]
    labels = None if ds.labels is None else ds.labels[idx]
    return TextDataset(texts, labels, ds.label_names, ds.source)


def check_classes(labels: np.ndarray, label_names: Sequence[str] | None = None) -> None:
    """Refuses training labels with fewer than two distinct classes."""
    distinct = np.unique(np.asarray(labels))
    if len(distinct) >= 2:
        return
    if len(distinct) == 0:
        raise DataError("no training labels; a classifier needs examples of at least two classes.")
    only = label_names[distinct[0]] if label_names is not None else str(distinct[0])
    raise DataError(
        f"only one class {only!r} in the training labels; a classifier needs at "
        "least two. Check the label column, or add examples of other classes.",
        cli_hint="--label-column NAME",
    )
