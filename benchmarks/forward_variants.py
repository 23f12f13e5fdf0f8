"""A/B of ways to write the GPT-2 forward, timed as the extraction program.

benchmarks/profile_kernels.py showed, per 42 x 384 GPT2-XL batch on an H100, 4.9 ms in a
slice fusion (the fused QKV output split into q, k, v for cuDNN attention) and 2.2 ms in
copies (candidates: the layer's weights sliced out of the stacked params by the scan).
Variants, each alone and together:
  split_qkv  three matmuls with column slices of c_attn's kernel instead of one and a split
  unroll     the layer scan fully unrolled (static weight slices, no while loop)
  dslice     XLA's dynamic-slice fusion (gemms read weight slices in place)
Run: PYTHONPATH=. python benchmarks/forward_variants.py [--variants base,split_qkv,...]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.profile_pooling import CONFIGS, rand_params
from spin_jax import extraction
from spin_jax.extraction import _pooled_fn, compiler_options
from spin_jax.models import _forward, config_from_hf, gpt2
from spin_jax.models import layers as L

SHAPES = ((42, 384), (32, 512))


def split_qkv_block(c, x, mask, p):
    B, T, D = x.shape
    N = c.num_heads
    h = gpt2._ln(x, p["ln_1"], c)
    w, b = p["attn"]["c_attn"]["kernel"], p["attn"]["c_attn"]["bias"]
    q, k, v = (
        L.dense(h, {"kernel": w[:, i * D : (i + 1) * D], "bias": b[i * D : (i + 1) * D]}).reshape(
            B, T, N, D // N
        )
        for i in range(3)
    )
    scale = None if c.scale_attn_weights else 1.0
    att = L.attention(q, k, v, mask, causal=True, scale=scale)
    x = x + L.dense(att.reshape(B, T, D), p["attn"]["c_proj"])
    act = L.activation(c.activation)(L.dense(gpt2._ln(x, p["ln_2"], c), p["mlp"]["c_fc"]))
    return x + L.dense(act, p["mlp"]["c_proj"]), act


def unrolled_scan(body, carry, layers, use_scan=True):
    return jax.lax.scan(body, carry, layers, unroll=True)


@contextlib.contextmanager
def patched(variant: set[str]):
    saved = gpt2.block, L.scan_layers, extraction._forward
    # The unjitted forward: the jitted one would reuse its trace of the unpatched model.
    extraction._forward = _forward.__wrapped__
    if "split_qkv" in variant:
        gpt2.block = split_qkv_block
    if "unroll" in variant:
        L.scan_layers = unrolled_scan
    try:
        yield
    finally:
        gpt2.block, L.scan_layers, extraction._forward = saved


def time_ms(fn, n: int) -> float:
    jax.block_until_ready(fn())
    t = time.perf_counter()
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / n * 1000


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="base,split_qkv,unroll,dslice,split_qkv+unroll")
    p.add_argument("--n", type=int, default=10)
    args = p.parse_args()
    print(jax.devices()[0].device_kind, jax.__version__, flush=True)
    c = config_from_hf(CONFIGS["gpt2-xl"])
    params, rng = rand_params(c), np.random.default_rng(0)
    batches = []
    for B, T in SHAPES:
        ids = jnp.asarray(rng.integers(0, 1000, (B, T)), jnp.int32)
        lengths = rng.integers(T // 2, T + 1, (B, 1))
        batches.append((ids, jnp.asarray(np.arange(T)[None] < lengths, jnp.int32)))
    ref = None
    for name in args.variants.split(","):
        variant = set(name.split("+"))
        options = dict(compiler_options() or {})
        if "dslice" in variant:
            options["xla_gpu_enable_dynamic_slice_fusion"] = True
        with patched(variant):
            # A new function per variant: jit's trace cache is keyed on the function.
            fn = jax.jit(
                lambda *a: _pooled_fn(*a),  # noqa: PLW0108
                static_argnums=(0, 1, 2, 3, 4),
                compiler_options=options,
            )
            run = functools.partial(fn, c, c.num_layers, (0, 1, 2), jnp.dtype(jnp.bfloat16), ())
            t = time.perf_counter()
            out = jax.block_until_ready(run(params, *batches[0]))
            compile_s = time.perf_counter() - t
            ms = [time_ms(functools.partial(run, params, *b), args.n) for b in batches]
        got = np.asarray(out[1], np.float32)
        ref = got if ref is None else ref
        diff = float(np.abs(got - ref).max())
        cells = " ".join(f"{m:8.2f}" for m in ms)
        print(
            f"  {name:24s} {cells}   total {sum(ms):8.2f} ms   first call {compile_s:5.1f} s"
            f"   max|ffn - base| {diff:.3g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
