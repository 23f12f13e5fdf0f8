"""Feature sources a classifier reads or a fit learns from, and the checks that they suit it:
the same model, every pooling, layer and column needed, labels numbered like training's."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from spin_jax.errors import SpinError
from spin_jax.head import SpinHead
from spin_jax.model import Model
from spin_jax.models import POOLINGS
from spin_jax.options import require_full
from spin_jax.selection import is_selective, missing_columns, poolings_of


@runtime_checkable
class FeatureSource(Protocol):
    """What the learner and the classifier read: a FeatureStore, MemoryFeatures,
    DeviceFeatures, or one of them relabelled."""

    manifest: dict
    labels: np.ndarray | None
    label_names: tuple[str, ...] | None

    @property
    def n_rows(self) -> int: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, **selection) -> np.ndarray: ...


def is_source(x) -> bool:
    """A feature source (FeatureSource), not texts."""
    return isinstance(x, FeatureSource)


def labels_of(src, names) -> np.ndarray:
    """A source's labels as ids into the classifier's label `names`."""
    if src.labels is None:
        raise SpinError(
            "the features hold no labels: extract the data with its label column to score it."
        )
    return np.asarray(align_labels(src, names, "scored").labels)


def _check_model_of(src, model: Model) -> None:
    m = src.manifest
    for key, want in (
        ("params_fingerprint", model.fingerprint),
        ("config_hash", model.config_hash),
    ):
        if m.get(key, want) != want:
            raise SpinError(
                f"features were extracted with another model ({key} "
                f"{m.get(key)} != {want}); extract them with this model."
            )


def check_source(src, model: Model, head: SpinHead) -> None:
    """A feature source to apply `head` to: this model, every pooling, layer and column the
    head reads."""
    _check_model_of(src, model)
    have = src.manifest.get("poolings", list(POOLINGS))
    lack = [p for p in poolings_of(head) if p not in have]
    if lack:
        raise SpinError(
            f"features hold poolings {have}; this classifier also reads {lack}. Extract "
            "them with SpinClassifier.extract_kept.",
            cli_hint="spin-jax extract --classifier RUN",
        )
    if is_selective(src):
        missing = missing_columns(src, head)
        if missing:
            rep, j, n = missing[0]
            raise SpinError(
                f"features lack {len(missing)} of the classifier's neurons (e.g. {rep} layer "
                f"{j} neuron {n}). Extract them with SpinClassifier.extract_kept.",
                cli_hint="spin-jax extract --classifier RUN",
            )
        return
    need = int(head.layer.max()) if len(head.layer) else 0
    k = src.manifest.get("num_layers", src.shape("ffn")[1])
    if k < need:
        raise SpinError(
            f"features were extracted with early exit at {k} layers; this classifier reads "
            f"layer {need}. Re-extract with num_layers={need} or more, or only the "
            "classifier's columns (SpinClassifier.extract_kept).",
            cli_hint=f"--num-layers {need}, or --classifier RUN",
        )


def check_features(src, model: Model) -> None:
    """Feature stores to fit on: from this model, with every pooling, layer and neuron."""
    require_full(src, "given")
    m = src.manifest
    if m.get("poolings", list(POOLINGS)) != list(POOLINGS):
        raise SpinError(
            f"features hold poolings {m.get('poolings')}; fitting needs all of "
            f"{list(POOLINGS)}. Re-extract with every pooling.",
            cli_hint="without --poolings",
        )
    _check_model_of(src, model)
    if m.get("num_layers", model.config.num_layers) != model.config.num_layers:
        raise SpinError(
            "features were extracted with early exit; fitting needs every layer.",
            cli_hint="extract without --num-layers",
        )


class _Relabelled:
    """A feature source whose labels are re-numbered; everything else is the source's."""

    def __init__(self, src, labels: np.ndarray, label_names: tuple[str, ...]):
        self._src, self.labels, self.label_names = src, labels, label_names

    def __getattr__(self, name):
        return getattr(self._src, name)


def align_labels(src, names: tuple[str, ...] | None, what: str):
    """Class ids of `src` as ids into the training `names`: each store numbers the labels it
    holds (a validation split lacking a class numbers the others differently)."""
    theirs = tuple(src.label_names) if src.label_names else None
    if names is None or theirs is None or theirs == names or src.labels is None:
        return src
    unseen = [n for n in theirs if n not in names]
    if unseen:
        raise SpinError(
            f"{what} labels {unseen} never occur in training (training labels: "
            f"{list(names)}); use a stratified split."
        )
    remap = np.array([names.index(n) for n in theirs], np.int64)
    return _Relabelled(src, remap[np.asarray(src.labels)], names)


