"""Feature extraction at scale: tokenize, bucket by length, run, pool, store.

Rows are processed in chunks of the original order (so a finished chunk is final and a
crash loses at most the chunk in flight); inside a chunk the batch runner (runner.py) sorts
rows by token length and cuts them into batches of a few static shapes under a token budget,
so XLA compiles once per bucket and padding stays small. Results are put back in the
original order.

Without a store, the features stay in memory: in host memory (MemoryFeatures, numpy) or,
with placement "device", on the accelerator (DeviceFeatures, jax Arrays), each batch's
results scattered into device buffers in the original row order, never through the host.

A selective extraction (`neurons=`) runs only the blocks up to the deepest selected layer
and gathers the selected neurons inside the device program; its store holds one array,
"columns" [N, P, M], described by the manifest's "neurons" (spin_jax.selection).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax._version import __version__
from spin_jax.batching import (  # noqa: F401
    BUCKETS,
    TOKEN_BUDGET,
    backend_plan,
    bucket_length,
    plan_batches,
)
from spin_jax.data import DataError, TextDataset, check_texts
from spin_jax.devices import (  # noqa: F401 - re-exported: tests and benchmarks use them
    default_mesh,
    device_memory_free,
    device_sharding,
    host_sharding,
    mesh_put,
    replicate,
    round_up,
)
from spin_jax.features import DeviceFeatures, MemoryFeatures  # noqa: F401 - re-exported
from spin_jax.files import write_json_atomic
from spin_jax.model import Model
from spin_jax.models import POOLINGS, InputError, _check_k
from spin_jax.programs import (  # noqa: F401 - re-exported: benchmarks and tests use them
    HOST_COPIES,
    _pooled_fn,
    _pooled_rows,
    compiler_options,
    pooled_dispatcher,
    pooled_program,
)
from spin_jax.runner import BatchRunner, Summary  # noqa: F401 - Summary: re-exported
from spin_jax.selection import COLUMNS, NeuronSelection, parse_neurons
from spin_jax.store import DTYPES as STORE_DTYPES
from spin_jax.store import FeatureStore
from spin_jax.streaming import (  # noqa: F401 - placement_of: re-exported
    announce_store,
    features_bytes,
    placement_of,
    require_spill_dir,
)
from spin_jax.text import encode_rows, max_length_of

log = logging.getLogger("spin_jax")
REPRESENTATIONS = ("hidden", "ffn")


# ---- where features in memory are kept: "auto" by the budgets (spin_jax/streaming.py) ----

PLACEMENTS = ("auto", "host", "device")


# ---- the run -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExtractOptions:
    max_length: int | None = None
    dtype: str = "float16"
    num_layers: int | None = None  # early exit: only the first k blocks
    poolings: tuple[str, ...] = POOLINGS
    chunk_rows: int | None = None  # default: about chunk_bytes per chunk
    chunk_bytes: int = 1 << 30
    token_budget: int = TOKEN_BUDGET
    progress: bool = True
    neurons: NeuronSelection | None = None  # selective extraction, as `extract` validated it
    placement: str = "auto"  # without `out`: "host", "device" or "auto" (see placement_of)
    allow_empty: bool = False  # accept empty or whitespace-only texts in a list of texts
    # Without `out`, "auto" keeps features on the device up to device_budget bytes, on the
    # host up to host_budget, and writes larger ones to a store in spill_dir (read
    # memory-mapped); None: the defaults of streaming.placement_of.
    device_budget: int | None = None
    host_budget: int | None = None
    spill_dir: str | os.PathLike | None = None

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise InputError(f"placement={self.placement!r}: choose one of {PLACEMENTS}.")
        unknown = sorted(set(self.poolings) - set(POOLINGS))
        if isinstance(self.poolings, str) or unknown or not self.poolings:
            raise DataError(f"poolings {self.poolings!r}: pass a tuple of some of {POOLINGS}.")
        if self.dtype not in STORE_DTYPES:
            raise DataError(f"dtype {self.dtype!r}: choose one of {sorted(STORE_DTYPES)}.")
        budgets = ("device_budget", "host_budget")
        for name in ("token_budget", "max_length", "chunk_rows", "chunk_bytes", *budgets):
            value = getattr(self, name)
            whole = isinstance(value, int) and not isinstance(value, bool)
            if value is not None and (not whole or value < 1):
                raise InputError(f"{name}={value!r}: pass a positive whole number.")
        if self.num_layers is not None and (
            not isinstance(self.num_layers, int) or self.num_layers < 0
        ):
            raise InputError(f"num_layers={self.num_layers!r}: pass a number of blocks >= 0.")


def _as_dataset(data, allow_empty: bool) -> TextDataset:
    if isinstance(data, TextDataset):
        return data  # load_texts checked its texts
    texts = check_texts(data, "the given texts", allow_empty=allow_empty)
    if not texts:
        raise DataError("no texts to extract: the dataset is empty.")
    return TextDataset(
        texts=[str(t) for t in texts], labels=None, label_names=None, source="<memory>"
    )


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _identity(model: Model, ds: TextDataset, opts: ExtractOptions, k: int, max_length: int):
    tok = model.tokenizer
    identity = {
        "model": model.source,
        "revision": model.revision,
        "model_type": model.config.model_type,
        "config_hash": model.config_hash,
        "params_fingerprint": model.fingerprint,
        "model_dtype": model.dtype,
        "tokenizer": f"{type(tok).__name__}:{getattr(tok, 'name_or_path', '')}",
        "max_length": max_length,
        "dtype": opts.dtype,
        "num_layers": k,
        "poolings": list(opts.poolings),
        "texts_sha256": texts_hash(ds.texts),
        "spin_jax": __version__,
    }
    if opts.neurons is not None:  # a selective store; full stores keep their old manifest
        identity["neurons"] = opts.neurons.to_json()
    return identity


def _array_specs(model: Model, k: int, opts: ExtractOptions):
    c, P = model.config, len(opts.poolings)
    if opts.neurons is not None:
        return {COLUMNS: ((P, len(opts.neurons)), opts.dtype)}
    return {
        "hidden": ((k + 1, P, c.hidden_size), opts.dtype),
        "ffn": ((k, P, c.ffn_size), opts.dtype),
    }


def _chunk_rows(specs, opts: ExtractOptions) -> int:
    if opts.chunk_rows:
        return opts.chunk_rows
    row_bytes = sum(np.prod(s) * STORE_DTYPES[d].itemsize for s, d in specs.values())
    return int(max(64, min(65536, opts.chunk_bytes // max(row_bytes, 1))))


def extract(model: Model, data, out=None, *, neurons=None, **options):
    """Extracts pooled features of every layer for `data` (TextDataset or list of texts).

    With `out`, writes (or resumes) a FeatureStore there and returns it; without, returns
    the features in memory, where `placement` says: "host" MemoryFeatures (numpy), "device"
    DeviceFeatures (jax Arrays on the accelerator, for probes that read them there), "auto"
    (the default) the device when they fit its budget, else the host when they fit the
    host's, else a FeatureStore written to `spill_dir` and read memory-mapped
    (streaming.placement_of; `device_budget`, `host_budget` in bytes). Options: see
    ExtractOptions.

    `neurons` extracts only these neurons (spin_jax.selection): {"hidden": {layer: [neuron,
    ...]}, "ffn": {...}} (hidden layers 0..L, 0 = embeddings; ffn layers 1..L = block), the
    manifest form {"hidden": [[layer, neuron], ...], ...}, or a NeuronSelection. Only the
    blocks up to the deepest selected layer run (unless num_layers is given), and the result
    is one array "columns" [N, P, M]: the hidden pairs sorted, then the ffn pairs.
    """
    opts = ExtractOptions(**options)
    ds = _as_dataset(data, opts.allow_empty)
    _check_options(ds, opts, out)
    k = _check_k(model.config, opts.num_layers)  # before a store is made with a wrong shape
    if neurons is not None:
        sel = parse_neurons(neurons, model.config, opts.num_layers)
        opts = dataclasses.replace(opts, neurons=sel)
        k = sel.num_layers if opts.num_layers is None else k
    max_length = min(opts.max_length or max_length_of(model), max_length_of(model))
    ids, truncated_rows = encode_rows(model.tokenizer, ds.texts, max_length)
    truncated = int(truncated_rows.sum())
    warn_truncated(truncated, len(ids), max_length)
    specs = _array_specs(model, k, opts)
    identity = _identity(model, ds, opts, k, max_length)
    placement = "store" if out is not None else _placement(opts, specs, len(ids))
    if placement == "store" and out is None:
        out = _spill(opts, specs, len(ids))
    if out is None:
        runner = _Runner(model, k, opts, max_length, placement)
        arrays = runner.run_rows(ids, np.arange(len(ids)), specs)
        runner.summary.truncated = truncated
        log.info("extracted (%s memory): %s", placement, runner.summary)
        kind = DeviceFeatures if placement == "device" else MemoryFeatures
        return kind(arrays, ds.labels, ds.label_names, identity)
    runner = _Runner(model, k, opts, max_length)
    store = FeatureStore.create(
        out,
        manifest=identity,
        n_rows=len(ds),
        chunk_rows=_chunk_rows(specs, opts),
        arrays=specs,
        labels=ds.labels,
        label_names=ds.label_names,
    )
    runner.fill_store(store, ids, truncated_rows, specs)
    _write_summary(store, runner.summary)
    return store


def _placement(opts: ExtractOptions, specs, n_rows: int) -> str:
    budgets = dict(device_budget=opts.device_budget, host_budget=opts.host_budget)
    return placement_of(opts.placement, specs, n_rows, **budgets)


def _spill(opts: ExtractOptions, specs, n_rows: int):
    """The store folder for features over the host budget, announced in one line."""
    total = features_bytes(specs, n_rows)
    out = require_spill_dir(opts.spill_dir, total, opts.host_budget)
    announce_store(f"{n_rows} texts", total, opts.host_budget, out)
    return out


def _check_options(ds: TextDataset, opts: ExtractOptions, out) -> None:
    if out is not None and opts.placement == "device":
        raise InputError(
            "placement='device' keeps features in accelerator memory, but `out` writes them "
            "to a store on disk; drop `out`, or the placement."
        )
    if len(ds) == 0:
        raise DataError(f"{ds.source} has no rows to extract.")


def warn_truncated(n_truncated: int, n_texts: int, max_length: int) -> None:
    """One warning line for texts cut to max_length tokens (their tail is not read)."""
    if n_truncated:
        log.warning(
            "%d of %d texts are longer than %d tokens: each is read up to its first %d.",
            n_truncated,
            n_texts,
            max_length,
            max_length,
        )


def _write_summary(store, summary: Summary) -> None:
    """summary.json over the whole store: each chunk's stats summed, whichever run wrote it
    (a resumed run computes only the chunks that were missing); chunks_done and
    chunks_skipped say what this run did."""
    if jax.process_index() != 0:
        return
    log.info("extracted into %s: %s", store.path, summary)
    whole = dataclasses.replace(summary, rows=0, tokens=0, padded_tokens=0, seconds=0.0)
    whole.truncated = 0
    for stats in store.chunk_stats():
        for key in ("rows", "tokens", "padded_tokens", "truncated", "seconds"):
            setattr(whole, key, getattr(whole, key) + stats.get(key, 0))
    record = {**dataclasses.asdict(whole), "padding_fraction": whole.padding_fraction}
    write_json_atomic(store.path / "summary.json", record)


class _Runner(BatchRunner):
    """Extraction's run: the pooled program (or the selected neurons) of the first k
    blocks, and a store filled chunk by chunk."""

    def __init__(
        self, model: Model, k: int, opts: ExtractOptions, max_length: int, placement="host"
    ):
        static = dict(
            config=model.config,
            k=k,
            poolings=tuple(POOLINGS.index(p) for p in opts.poolings),
            out_dtype=jnp.dtype(STORE_DTYPES[opts.dtype]),
            options=(),
        )
        cols = None  # the gather indices of a selective extraction
        if opts.neurons is not None:
            cols = {name: jnp.asarray(i) for name, i in opts.neurons.indices().items()}

        def program(mesh):
            # On the device, results skip the copy to the host: the program's outputs are kept.
            on_device = placement == "device"
            run = pooled_program(None, mesh) if on_device else pooled_dispatcher(mesh)
            return functools.partial(run, **static)

        neurons = None if opts.neurons is None else str(opts.neurons.to_json())
        super().__init__(
            model,
            program,
            cols,
            max_length=max_length,
            token_budget=opts.token_budget,
            placement=placement,
            check_float16=opts.dtype == "float16",
            shapes_key=("extract", placement, model.dtype, neurons, *static.items()),
        )
        self.k, self.opts = k, opts

    def fill_store(self, store: FeatureStore, ids, truncated_rows, specs):
        missing = store.missing_chunks()
        self.summary.chunks_skipped = store.n_chunks - len(missing)
        total = sum(np.subtract(*store.chunk_rows_range(i)[::-1]) for i in missing)
        self.bar = _progress(total, self.opts.progress and jax.process_index() == 0)
        for i in missing:
            start, stop = store.chunk_rows_range(i)
            before = dataclasses.replace(self.summary)
            arrays = self.run_rows(ids, np.arange(start, stop), specs)
            self.summary.truncated += int(truncated_rows[start:stop].sum())
            if jax.process_index() == 0:
                store.write_chunk(i, arrays, stats=self._chunk_stats(before))
            self.summary.chunks_done += 1
        if self.bar is not None:
            self.bar.close()

    def _chunk_stats(self, before: Summary) -> dict:
        """What the last chunk cost: the summary's growth since `before`."""
        now = self.summary
        return {
            "rows": now.rows - before.rows,
            "tokens": now.tokens - before.tokens,
            "padded_tokens": now.padded_tokens - before.padded_tokens,
            "truncated": now.truncated - before.truncated,
            "seconds": round(now.seconds - before.seconds, 6),
        }


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="rows", desc="extract", smoothing=0.1)
