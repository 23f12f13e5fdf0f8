"""The batch runner: a device program over rows of token ids, on all local devices.

Rows are sorted by token length and cut into batches of a few static shapes under a token
budget (batching.backend_plan: on CPU finer buckets and smaller batches), so XLA compiles
once per bucket and padding stays small.
Each batch is split by rows over the mesh (devices.py) and dispatched ahead of the host (up
to three in flight); its results are put back in the rows' original order, in numpy arrays
(placement "host") or in device buffers (placement "device", never through the host).

Extraction runs its pooled program through it (extraction._Runner adds a store's chunks),
and inference the classifiers' heads (spin_jax/inference.py): one batching, bucketing and
sharding for both.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import ahead
from spin_jax.batching import backend_plan, compile_tokens
from spin_jax.devices import default_mesh, device_sharding, mesh_put, replicate
from spin_jax.errors import StoreError
from spin_jax.store import DTYPES
from spin_jax.text import pad_batch


@dataclasses.dataclass
class Summary:
    rows: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    truncated: int = 0
    seconds: float = 0.0
    chunks_done: int = 0
    chunks_skipped: int = 0

    @property
    def padding_fraction(self) -> float:
        return 1 - self.tokens / max(self.padded_tokens, 1)

    def __str__(self) -> str:
        rate = self.tokens / max(self.seconds, 1e-9)
        return (
            f"{self.rows} rows, {self.tokens} tokens ({self.padding_fraction:.1%} padding), "
            f"{self.truncated} truncated, {self.seconds:.1f}s, {rate:,.0f} tokens/s, "
            f"{self.rows / max(self.seconds, 1e-9):,.1f} rows/s; chunks written "
            f"{self.chunks_done}, already done {self.chunks_skipped}"
        )


# (padded length, batch size) shapes each program ran in this process, by its shapes_key:
# a fit's valid and test splits then pad to the train split's shapes where that is cheaper
# than compiling their own (batching.backend_plan `known`).
SHAPES_RUN: dict = {}


def flops_per_token(params) -> float:
    """A forward's FLOPs per token, roughly: two per parameter (a multiply and an add)."""
    return 2.0 * sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


@functools.cache
def _scatter_program(sharding):
    """scatter(buf, rows, x): buf with buf[rows[i]] = x[i], in place (buf is donated).

    Rows out of range (a batch's filler rows) are dropped; the result stays in `sharding`.
    """

    def scatter(buf, rows, x):
        return buf.at[rows].set(x, mode="drop")

    return jax.jit(scatter, donate_argnums=0, out_shardings=sharding)


class BatchRunner:
    """Runs a device program over rows of token ids and assembles its outputs by row.

    `program(mesh)` builds the dispatch, `dispatch(params, ids, mask, aux)` -> one batch's
    outputs, one per array of the `specs` given to `run_rows`, in their order (the batch's
    rows first, filler rows after them). `aux` is what the program reads besides the model
    (a selection's gather indices, the heads), replicated on every device like the params.
    With `check_float16`, a batch whose outputs overflow float16 is refused.
    `shapes_key` (hashable: the program and its static arguments) lets later runs of the
    same program plan their batches at shapes it already compiled (SHAPES_RUN).
    """

    def __init__(
        self,
        model,
        program,
        aux=None,
        *,
        max_length: int,
        token_budget: int,
        placement: str = "host",
        check_float16: bool = False,
        shapes_key=None,
    ):
        self.model, self.max_length, self.token_budget = model, max_length, token_budget
        self.mesh = default_mesh()
        self.params = replicate(self.mesh, model.params)
        self.aux = replicate(self.mesh, aux)
        self.on_device = placement == "device"
        self.dispatch = program(self.mesh)
        self.check_float16 = check_float16
        self.pad_id = int(getattr(model.tokenizer, "pad_token_id", None) or 0)
        self.flops_per_token = flops_per_token(model.params)
        self.shapes_key = shapes_key  # the program's identity in SHAPES_RUN (None: none)
        self.summary = Summary()
        self.bar = None  # a progress bar (tqdm) to update by rows, if any

    def _dispatch(self, ids, mask):
        ids, mask = mesh_put(self.mesh, ids), mesh_put(self.mesh, mask)
        return self.dispatch(self.params, ids, mask, self.aux)

    def run_rows(self, ids: list[np.ndarray], rows: np.ndarray, specs) -> dict[str, np.ndarray]:
        """The outputs for ids[rows], as arrays {name: [len(rows), *shape]} in the order of
        `rows`; `specs` is {name: (shape, dtype name)}."""
        out = self._buffers(len(rows), specs)
        lengths = np.array([len(ids[r]) for r in rows])
        multiple = 1 if self.mesh is None else self.mesh.size
        backend = jax.default_backend()
        # A compile weighed against padding: on all devices at once, tokens are cheaper.
        cost = compile_tokens(backend, self.flops_per_token / multiple)
        known = SHAPES_RUN.setdefault(self.shapes_key, set()) if self.shapes_key else set()
        plan = backend_plan(
            backend, lengths, self.max_length, self.token_budget, multiple, cost,
            frozenset(known),
        )  # fmt: skip
        compiling = self._compile_ahead(plan, known)
        known.update((blen, size) for _, blen, size in plan)
        pending = deque()
        start = time.perf_counter()
        for local, blen, size in plan:
            ahead.wait(compiling.pop((blen, size), None))
            batch = [ids[rows[i]] for i in local]
            # Fill the batch to its static size with one-token rows that are dropped later.
            batch += [np.array([self.pad_id], np.int32)] * (size - len(batch))
            b_ids, b_mask = pad_batch(batch, blen, self.pad_id)
            pending.append((local, self._dispatch(b_ids, b_mask)))
            self.summary.tokens += int(lengths[local].sum())
            self.summary.padded_tokens += size * blen
            if len(pending) > 2:  # keep the device busy while the host copies results
                self._collect(pending.popleft(), out)
        while pending:
            self._collect(pending.popleft(), out)
        self.summary.rows += len(rows)
        self.summary.seconds += time.perf_counter() - start
        return out

    def _compile_ahead(self, plan, known) -> dict:
        """{(length, rows): its compile}, started for each batch shape of the plan that
        this program has not run yet, so they compile side by side (ahead.py)."""
        if not ahead.enabled():
            return {}
        shapes = dict.fromkeys((blen, size) for _, blen, size in plan if (blen, size) not in known)
        sharding = None
        if self.mesh is not None:  # as mesh_put places a batch
            spec = jax.sharding.PartitionSpec("data", None)
            sharding = jax.sharding.NamedSharding(self.mesh, spec)
        out = {}
        for blen, size in shapes:
            batch = jax.ShapeDtypeStruct((size, blen), np.int32, sharding=sharding)
            out[blen, size] = ahead.submit(self.dispatch, self.params, batch, batch, self.aux)
        return out

    def _buffers(self, n: int, specs) -> dict:
        if not self.on_device:
            return {name: np.empty((n, *s), DTYPES[d]) for name, (s, d) in specs.items()}
        sharding = device_sharding(self.mesh, n)
        return {
            name: jnp.zeros((n, *s), DTYPES[d], device=sharding) for name, (s, d) in specs.items()
        }

    def _collect(self, item, out):
        local, results = item  # the program's outputs, in the order of `out` (its specs)
        n = len(local)
        if self.check_float16:
            _check_float16(results, local, self.on_device)
        if self.on_device:
            self._scatter(local, results, out)
        else:
            for buf, x in zip(out.values(), results, strict=True):
                buf[local] = np.asarray(x)[:n]
        if self.bar is not None:
            self.bar.update(n)
            rate = self.summary.tokens / max(self.bar.format_dict["elapsed"], 1e-9)
            self.bar.set_postfix(tok_s=f"{rate:,.0f}")

    def _scatter(self, local, results, out):
        """Writes a batch's rows into the device buffers `out`, in place, on the device."""
        jax.block_until_ready(results)  # at most three batches in flight, as on the host
        first = next(iter(out.values()))
        n_out, size = len(first), len(results[0])
        rows = np.full(size, n_out, np.int32)  # filler rows: out of range, dropped
        rows[: len(local)] = local
        scatter = _scatter_program(first.sharding)
        for name, x in zip(list(out), results, strict=True):
            if x.sharding.device_set != first.sharding.device_set:
                x = jax.device_put(x, first.sharding)  # device to device, onto the first
            out[name] = scatter(out[name], rows, x)


@jax.jit
def _any_inf(x):
    return jnp.isinf(x).any()


def _check_float16(results, rows, on_device: bool) -> None:
    """float16 tops out at 65504: a larger activation would be stored as inf, silently.
    Checked where the batch is (results on their way to the host are read there)."""
    has_inf = _any_inf if on_device else (lambda x: np.isinf(np.asarray(x)).any())
    if any(bool(has_inf(x)) for x in results):
        raise StoreError(
            f"a feature of the batch holding rows {int(np.min(rows)) + 1}..{int(np.max(rows)) + 1}"
            " overflows float16 (|value| > 65504): this model's activations need a wider "
            "dtype. Extract with dtype='bfloat16' or 'float32', into a new folder (a store "
            "keeps the dtype it was started with).",
            cli_hint="--dtype / --feature-dtype bfloat16",
        )
