"""Selective extraction: which neurons of which layers to compute, and reading them back.

A selection names, per representation, (layer, neuron) pairs in the layer convention of
SpinHead.layer: hidden layer 0 is the embedding output and hidden layer j the output of
block j (0..L); ffn layer j is block j's FFN activation (1..L). Extracting a selection runs
only as many blocks as its deepest layer (unless num_layers says more), gathers the selected
neurons inside the jitted program, so only they leave the device, and stores one array

  columns  [N, P, M]   M = len(hidden) + len(ffn): the hidden pairs in their listed order,
                       then the ffn pairs; P the store's "poolings", in that order

with the selection in the manifest, as part of the store identity (a resume with another
selection is refused): "neurons": {"hidden": [[layer, neuron], ...], "ffn": [...]}, each
list sorted and unique. A selective source has no "hidden" / "ffn" arrays, so code expecting
[N, L, P, F] fails loudly instead of misreading axes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from spin_jax.columns import REPS, store_layer
from spin_jax.models import POOLINGS, InputError

COLUMNS = "columns"  # the array of a selective store
FIRST_LAYER = {"hidden": 0, "ffn": 1}
EXAMPLE = '{"hidden": {"0": [3, 7]}, "ffn": {"2": [10, 11]}}'
_INT = re.compile(r"-?[0-9]+")


@dataclasses.dataclass(frozen=True)
class NeuronSelection:
    """Neurons to extract: sorted unique (layer, neuron) pairs per representation."""

    hidden: tuple[tuple[int, int], ...] = ()
    ffn: tuple[tuple[int, int], ...] = ()

    def __len__(self) -> int:
        return len(self.hidden) + len(self.ffn)

    @property
    def num_layers(self) -> int:
        """Blocks to run: the deepest selected layer (hidden layer 0 needs none)."""
        return max((j for pairs in (self.hidden, self.ffn) for j, _ in pairs), default=0)

    def to_json(self) -> dict[str, list[list[int]]]:
        return {rep: [list(p) for p in getattr(self, rep)] for rep in REPS}

    def indices(self) -> dict[str, np.ndarray]:
        """int32 gather indices into Features.hidden [L+1, ...] and Features.ffn [L, ...]."""
        h = np.array(self.hidden, np.int32).reshape(-1, 2)
        f = np.array(self.ffn, np.int32).reshape(-1, 2)
        return {
            "h_layer": h[:, 0],
            "h_neuron": h[:, 1],
            "f_layer": store_layer("ffn", f[:, 0]),
            "f_neuron": f[:, 1],
        }

    def column_of(self) -> dict[tuple[str, int, int], int]:
        """(rep, layer, neuron) -> column of the `columns` array."""
        keys = [(rep, j, n) for rep in REPS for j, n in getattr(self, rep)]
        return {key: c for c, key in enumerate(keys)}


def parse_neurons(spec, config, num_layers: int | None = None) -> NeuronSelection:
    """Validates a selection for a model `config`; see `extract(neurons=...)` for the forms."""
    if isinstance(spec, NeuronSelection):
        spec = spec.to_json()
    if not isinstance(spec, Mapping):
        raise InputError(
            f"neurons must map a representation to its layers' neuron indices, e.g. {EXAMPLE}; "
            f"got {type(spec).__name__}."
        )
    unknown = sorted(map(str, set(spec) - set(REPS)))
    if unknown:
        raise InputError(f"unknown representation(s) {unknown} in neurons; use {list(REPS)}.")
    width = {"hidden": config.hidden_size, "ffn": config.ffn_size}
    sel = NeuronSelection(
        **{
            rep: _pairs(rep, spec[rep], config.num_layers, width[rep])
            for rep in REPS
            if rep in spec
        }
    )
    if not len(sel):
        raise InputError(f"the neuron selection is empty; name at least one, e.g. {EXAMPLE}.")
    if num_layers is not None and sel.num_layers > num_layers:
        raise InputError(
            f"neurons select layer {sel.num_layers}, deeper than num_layers={num_layers}; "
            f"raise num_layers to {sel.num_layers} or leave it out (it defaults to the deepest)."
        )
    return sel


def _pairs(rep: str, layers, last: int, width: int) -> tuple[tuple[int, int], ...]:
    """Sorted unique (layer, neuron) pairs from {layer: [neuron, ...]} or [[layer, neuron]]."""
    first = FIRST_LAYER[rep]
    out = set()
    for key, neurons in _by_layer(rep, layers):
        j = _integer(key, f"{rep} layer {key!r}", strings=isinstance(key, str))
        if not first <= j <= last:
            raise InputError(
                f"{rep} layer {j} is out of range: this model has {rep} layers {first} to "
                f"{last} ({'0 = embeddings, ' if rep == 'hidden' else ''}j = block j)."
            )
        if isinstance(neurons, (str, bytes, Mapping)) or not isinstance(neurons, Iterable):
            raise InputError(f"{rep} layer {j}: give a list of neuron indices, not {neurons!r}.")
        idx = [_integer(n, f"{rep} layer {j} neuron {n!r}") for n in neurons]
        if not idx:
            raise InputError(f"{rep} layer {j} lists no neurons; drop the layer or name some.")
        bad = [n for n in idx if not 0 <= n < width]
        if bad:
            raise InputError(
                f"{rep} layer {j} neuron {bad[0]} is out of range: {rep} neurons of this "
                f"model are 0 to {width - 1}."
            )
        out.update((j, n) for n in idx)
    return tuple(sorted(out))


def _by_layer(rep: str, layers) -> Iterable[tuple[object, list]]:
    if isinstance(layers, Mapping):
        return layers.items()
    pairs = list(layers) if isinstance(layers, Iterable) and not isinstance(layers, str) else None
    if pairs is None or any(
        isinstance(p, (str, Mapping)) or not isinstance(p, Iterable) or len(list(p)) != 2
        for p in pairs
    ):
        raise InputError(
            f"neurons[{rep!r}] must be {{layer: [neuron, ...]}} or [[layer, neuron], ...]; "
            f"got {layers!r}."
        )
    return [(j, [n]) for j, n in pairs]


def _integer(x, what: str, strings: bool = False) -> int:
    """An int index; JSON object keys (layers) may be decimal strings."""
    if strings and _INT.fullmatch(x):
        return int(x)
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise InputError(f"{what} is not an integer index.")
    return int(x)


def load_neurons(path) -> dict:
    """A selection from a JSON file, e.g. {EXAMPLE}."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"neurons file not found: {path}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}); write e.g. {EXAMPLE}.") from None


load_neurons.__doc__ = load_neurons.__doc__.format(EXAMPLE=EXAMPLE)


# ---- a classifier's columns ----------------------------------------------------------------


def head_columns(head) -> list[tuple[str, int, int]]:
    """A SpinHead's (rep, layer, neuron) per column, in its column order."""
    cols = zip(head.rep.tolist(), head.layer.tolist(), head.neuron.tolist(), strict=True)
    return [(REPS[r], j, n) for r, j, n in cols]


def neurons_of(head) -> NeuronSelection:
    """The (rep, layer, neuron) columns a SpinHead reads, as a selection to extract."""
    pairs = {rep: set() for rep in REPS}
    for rep, j, n in head_columns(head):
        pairs[rep].add((j, n))
    return NeuronSelection(**{rep: tuple(sorted(p)) for rep, p in pairs.items()})


def poolings_of(head) -> tuple[str, ...]:
    """The poolings a SpinHead reads, in POOLINGS order."""
    return tuple(POOLINGS[p] for p in sorted(set(head.pool.tolist())))


def is_selective(src) -> bool:
    return "neurons" in (getattr(src, "manifest", None) or {})


def selection_of(src) -> NeuronSelection:
    n = src.manifest["neurons"]
    return NeuronSelection(**{rep: tuple(map(tuple, n.get(rep, []))) for rep in REPS})


def missing_columns(src, head) -> list[tuple[str, int, int]]:
    """The head's (rep, layer, neuron) columns a selective source lacks."""
    have = selection_of(src).column_of()
    return [c for c in dict.fromkeys(head_columns(head)) if c not in have]


def read_head_columns(src, head, rows=None) -> np.ndarray:
    """[n, M] float32 raw values of the head's columns, in its order, from a selective source."""
    col = selection_of(src).column_of()
    pools = list(src.manifest.get("poolings", POOLINGS))
    c = [col[key] for key in head_columns(head)]
    p = [pools.index(POOLINGS[q]) for q in head.pool.tolist()]
    return src.read(COLUMNS, rows=rows, dtype=np.float32)[:, p, c]
