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

CHUNK = 16  # tokens per step must divide T; every length bucket of extraction is a multiple


def _tiles(n_tokens: int, n_features: int) -> tuple[int, int | None, int]:
    """(tokens per step, features per program, warps), tuned on an H100 with
    benchmarks/pool_kernel_tune.py (48 calls in one program, GPT2-XL's widths, bf16):
    F = 6400 in 128-wide tiles on 1 warp reads 2.1 TB/s; F = 1600 (not a multiple of 128)
    in 64-wide tiles 1.4-1.5 TB/s with one warp per 16 tokens of a step."""
    chunk = next(c for c in (64, 32, CHUNK) if n_tokens % c == 0 or c == CHUNK)
    block = next((b for b in (128, 64, 32) if n_features % b == 0), None)
    return chunk, block, 1 if block == 128 else max(1, chunk // 16)


def kernel_applies(x: jax.Array) -> bool:
    """Whether `mean_max` runs as a GPU kernel for x [B, T, F] (else: use jnp reductions)."""
    return (
        jax.default_backend() == "gpu"
        and x.ndim == 3
        and x.shape[1] % CHUNK == 0
        and _tiles(*x.shape[1:])[1] is not None
    )


def _kernel(len_ref, x_ref, mean_ref, max_ref, *, chunk: int, bf: int):
    b, f = pl.program_id(0), pl.program_id(1)
    n = len_ref[b]
    cols = pl.ds(f * bf, bf)

    def body(i, carry):
        total, top = carry
        valid = (i * chunk + jnp.arange(chunk) < n)[:, None]
        valid = jnp.broadcast_to(valid, (chunk, bf))
        tile = plgpu.load(x_ref.at[b, pl.ds(i * chunk, chunk), cols], mask=valid, other=0)
        tile = tile.astype(jnp.float32)
        total = total + jnp.sum(tile, axis=0)
        top = jnp.maximum(top, jnp.max(jnp.where(valid, tile, -jnp.inf), axis=0))
        return total, top

    init = (jnp.zeros((bf,), jnp.float32), jnp.full((bf,), -jnp.inf, jnp.float32))
    total, top = jax.lax.fori_loop(0, x_ref.shape[1] // chunk, body, init)
    count = jnp.maximum(n, 1).astype(jnp.float32)
    mean_ref[...] = (total / count)[None]
    max_ref[...] = jnp.where(n > 0, top, 0.0)[None]


@functools.partial(jax.jit, static_argnames=("interpret", "chunk", "block_f", "num_warps"))
def mean_max(
    x: jax.Array,
    lengths: jax.Array,
    interpret: bool = False,
    *,
    chunk: int | None = None,
    block_f: int | None = None,
    num_warps: int | None = None,
):
    """Masked mean and max of x [B, T, F] over its first lengths[b] tokens: two [B, F] fp32.

    `interpret=True` runs the kernel's semantics anywhere (CPU tests). chunk (tokens per
    step), block_f (features per program) and num_warps override the tuned `_tiles`.
    """
    B, T, F = x.shape
    tiles = _tiles(T, F)
    chunk, bf, num_warps = chunk or tiles[0], block_f or tiles[1], num_warps or tiles[2]
    if T % chunk or bf is None or F % bf:
        raise ValueError(f"mean_max needs T % {chunk} == 0 and F divisible by 32; got {x.shape}")
    out_block = pl.BlockSpec((1, bf), lambda b, f: (b, f))
    return pl.pallas_call(
        functools.partial(_kernel, chunk=chunk, bf=bf),
        grid=(B, F // bf),
        in_specs=[pl.no_block_spec, pl.no_block_spec],
        out_specs=(out_block, out_block),
        out_shape=(jax.ShapeDtypeStruct((B, F), jnp.float32),) * 2,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps),
        interpret=interpret,
    )(lengths.astype(jnp.int32), x)
