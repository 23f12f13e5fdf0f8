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
    F = 6400 in 128-wide tiles on 1 warp reads 2.1 TB/s. Narrower widths that are no
    multiple of 128 are first grouped (`_group`): F = 1600 in 64-wide tiles read 1.4-1.5
    TB/s, as 6400 wide ~1.9-2.0."""
    chunk = next(c for c in (64, 32, CHUNK) if n_tokens % c == 0 or c == CHUNK)
    block = next((b for b in (128, 64, 32) if n_features % b == 0), None)
    return chunk, block, 1 if block == 128 else max(1, chunk // 16)


def _group(n_tokens: int, n_features: int) -> int:
    """Tokens read side by side as one kernel row: x [B, T, F] is read as [B, T/g, g*F] (a
    free reshape), so a width that is no multiple of 128 (GPT2-XL's F = 1600) is still read
    in 128-wide tiles, the fast ones above (g = 4: 6400 wide, as the FFN activation)."""
    if n_features % 128 == 0:
        return 1
    return next(
        (g for g in (4, 2) if (g * n_features) % 128 == 0 and n_tokens % (g * CHUNK) == 0), 1
    )


def kernel_applies(x: jax.Array) -> bool:
    """Whether `mean_max` runs as a GPU kernel for x [B, T, F] (else: use jnp reductions)."""
    return (
        jax.default_backend() == "gpu"
        and x.ndim == 3
        and x.shape[1] % CHUNK == 0
        and _tiles(*x.shape[1:])[1] is not None
    )


def _kernel(len_ref, x_ref, sum_ref, max_ref, *, chunk: int, bf: int, width: int, group: int):
    """Sum and max over the real tokens of one row b, one tile of bf columns f. A kernel row
    holds `group` tokens of `width` features: column c of row r is token r * group + c //
    width. Rows of real tokens only are loaded with a per-row mask (which keeps the loads
    vectorised); the one row holding both real tokens and padding, after the loop."""
    b, f = pl.program_id(0), pl.program_id(1)
    n = len_ref[b]
    cols = pl.ds(f * bf, bf)

    def body(i, carry):
        total, top = carry
        valid = ((i * chunk + jnp.arange(chunk) + 1) * group <= n)[:, None]
        valid = jnp.broadcast_to(valid, (chunk, bf))
        tile = plgpu.load(x_ref.at[b, pl.ds(i * chunk, chunk), cols], mask=valid, other=0)
        tile = tile.astype(jnp.float32)
        total = total + jnp.sum(tile, axis=0)
        return total, jnp.maximum(top, jnp.max(jnp.where(valid, tile, -jnp.inf), axis=0))

    init = (jnp.zeros((bf,), jnp.float32), jnp.full((bf,), -jnp.inf, jnp.float32))
    total, top = jax.lax.fori_loop(0, x_ref.shape[1] // chunk, body, init)
    if group > 1:  # the row with the last n % group real tokens (none if n % group == 0)
        row = jnp.minimum(n // group, x_ref.shape[1] - 1)
        slot = (f * bf + jnp.arange(bf)) // width  # which token of the row, per column
        valid = slot < n - (n // group) * group
        tile = plgpu.load(x_ref.at[b, row, cols], mask=valid, other=0).astype(jnp.float32)
        total, top = total + tile, jnp.maximum(top, jnp.where(valid, tile, -jnp.inf))
    sum_ref[...] = total[None]
    max_ref[...] = top[None]


@functools.partial(jax.jit, static_argnames=("interpret", "chunk", "block_f", "num_warps", "group"))
def mean_max(
    x: jax.Array,
    lengths: jax.Array,
    interpret: bool = False,
    *,
    chunk: int | None = None,
    block_f: int | None = None,
    num_warps: int | None = None,
    group: int | None = None,
):
    """Masked mean and max of x [B, T, F] over its first lengths[b] tokens: two [B, F] fp32.

    `interpret=True` runs the kernel's semantics anywhere (CPU tests). chunk (tokens per
    step), block_f (features per program), num_warps and group (tokens per kernel row)
    override the tuned `_tiles` and `_group`.
    """
    B, T, F = x.shape
    g = group or _group(T, F)
    if T % g:
        raise ValueError(f"mean_max: group={g} must divide T; got {x.shape}")
    wide = x.reshape(B, T // g, g * F)  # row-major: a bitcast, no copy
    tiles = _tiles(*wide.shape[1:])
    chunk, bf, num_warps = chunk or tiles[0], block_f or tiles[1], num_warps or tiles[2]
    if (T // g) % chunk or bf is None or (g * F) % bf:
        raise ValueError(f"mean_max needs T % {chunk} == 0 and F divisible by 32; got {x.shape}")
    lengths = lengths.astype(jnp.int32)
    out_block = pl.BlockSpec((1, bf), lambda b, f: (b, f))
    total, top = pl.pallas_call(
        functools.partial(_kernel, chunk=chunk, bf=bf, width=F, group=g),
        grid=(B, g * F // bf),
        in_specs=[pl.no_block_spec, pl.no_block_spec],
        out_specs=(out_block, out_block),
        out_shape=(jax.ShapeDtypeStruct((B, g * F), jnp.float32),) * 2,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps),
        interpret=interpret,
    )(lengths, wide)
    total, top = total.reshape(B, g, F).sum(1), top.reshape(B, g, F).max(1)
    count = jnp.maximum(lengths, 1).astype(jnp.float32)[:, None]
    return total / count, jnp.where(lengths[:, None] > 0, top, 0.0)
