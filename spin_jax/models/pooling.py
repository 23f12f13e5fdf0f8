"""Masked mean and max over tokens as one GPU kernel that reads [B, T, F] where it lies.

Why a kernel: written as jnp reductions over T, XLA lays the FFN activation out token-minor
for them and transposes it twice per layer, so pooling GPT2-XL's activations cost ~20% of
the forward on an H100 (benchmarks/RESULTS.md). A Pallas (Triton) kernel takes its input
row-major: the activation stays in the layout its matmuls use, it is read once for both
poolings, and the padded rows of each example are masked out of the loads (not read).

Rows are right-padded: `lengths[b]` real tokens, then padding. Rows with no token pool to 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

CHUNK = 16  # tokens loaded per step; every length bucket of extraction is a multiple
_BLOCK_F = (256, 128, 64, 32)  # feature tile widths tried, widest first (powers of two)


def _block_f(n_features: int) -> int | None:
    return next((b for b in _BLOCK_F if n_features % b == 0), None)


def kernel_applies(x: jax.Array) -> bool:
    """Whether `mean_max` runs as a GPU kernel for x [B, T, F] (else: use jnp reductions)."""
    return (
        jax.default_backend() == "gpu"
        and x.ndim == 3
        and x.shape[1] % CHUNK == 0
        and _block_f(x.shape[2]) is not None
    )


def _kernel(len_ref, x_ref, mean_ref, max_ref, *, n_chunks: int, bf: int):
    b, f = pl.program_id(0), pl.program_id(1)
    n = len_ref[b]
    cols = pl.ds(f * bf, bf)

    def body(i, carry):
        total, top = carry
        valid = (i * CHUNK + jnp.arange(CHUNK) < n)[:, None]
        valid = jnp.broadcast_to(valid, (CHUNK, bf))
        tile = plgpu.load(x_ref.at[b, pl.ds(i * CHUNK, CHUNK), cols], mask=valid, other=0)
        tile = tile.astype(jnp.float32)
        total = total + jnp.sum(tile, axis=0)
        top = jnp.maximum(top, jnp.max(jnp.where(valid, tile, -jnp.inf), axis=0))
        return total, top

    init = (jnp.zeros((bf,), jnp.float32), jnp.full((bf,), -jnp.inf, jnp.float32))
    total, top = jax.lax.fori_loop(0, n_chunks, body, init)
    count = jnp.maximum(n, 1).astype(jnp.float32)
    mean_ref[...] = (total / count)[None]
    max_ref[...] = jnp.where(n > 0, top, 0.0)[None]


@functools.partial(jax.jit, static_argnames=("interpret",))
def mean_max(x: jax.Array, lengths: jax.Array, interpret: bool = False):
    """Masked mean and max of x [B, T, F] over its first lengths[b] tokens: two [B, F] fp32.

    `interpret=True` runs the kernel's semantics anywhere (CPU tests).
    """
    B, T, F = x.shape
    bf = _block_f(F)
    if T % CHUNK or bf is None:
        raise ValueError(f"mean_max needs T % {CHUNK} == 0 and F divisible by 32; got {x.shape}")
    out_block = pl.BlockSpec((1, bf), lambda b, f: (b, f))
    return pl.pallas_call(
        functools.partial(_kernel, n_chunks=T // CHUNK, bf=bf),
        grid=(B, F // bf),
        in_specs=[pl.no_block_spec, pl.no_block_spec],
        out_specs=(out_block, out_block),
        out_shape=(jax.ShapeDtypeStruct((B, F), jnp.float32),) * 2,
        interpret=interpret,
    )(lengths.astype(jnp.int32), x)
