"""Where extraction time goes: the forward with each pooling alone, and the host copy.

Random bf16 weights, one batch shape (42 x 384), BERT-base and GPT2-XL shapes.
Run: PYTHONPATH=. python benchmarks/profile_pooling.py
"""

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax.extraction import _pooled_rows, host_sharding, pooled_program
from spin_jax.models import config_from_hf, core, family_of, param_shapes
from spin_jax.models import layers as L

CONFIGS = {
    "bert-base": dict(
        model_type="bert",
        vocab_size=30522,
        max_position_embeddings=512,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
    ),
    "gpt2-xl": dict(
        model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=1600, n_layer=48, n_head=25
    ),
}


def rand_params(config):
    shapes = param_shapes(config, jnp.bfloat16)
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 512))
    return jax.tree.map(
        lambda s: (0.02 * jax.random.normal(next(keys), s.shape)).astype(jnp.bfloat16), shapes
    )


def timeit(name, fn, n=10):
    jax.block_until_ready(fn())
    t = time.perf_counter()
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    print(f"  {name:32s} {(time.perf_counter() - t) / n * 1000:8.2f} ms", flush=True)


def reducer(which, m, tok):
    def red(x):
        x32 = x.astype(jnp.float32)
        if which == "none":
            return jnp.zeros((), jnp.float32)
        if which == "mean":
            return jnp.where(m[..., None], x32, 0).sum(1)
        if which == "max":
            return jnp.where(m[..., None], x32, -jnp.inf).max(1)
        if which == "token":
            return jnp.take_along_axis(x32, tok[:, None, None], axis=1)[:, 0]
        if which == "mean_einsum":
            s = jnp.einsum("BT,BTF->BF", m.astype(x.dtype), x, preferred_element_type=jnp.float32)
            return s / m.sum(-1, keepdims=True)
        if which == "max_native":
            return jnp.where(m[..., None], x, -jnp.inf).max(1).astype(jnp.float32)
        if which == "max_transposed":
            xt = jnp.swapaxes(x, 1, 2)
            return jnp.where(m[:, None, :], xt, -jnp.inf).max(-1).astype(jnp.float32)
        if which == "token_native":
            return jnp.take_along_axis(x, tok[:, None, None], axis=1)[:, 0].astype(jnp.float32)
        if which == "lean":  # reductions in the storage dtype where exact
            s = jnp.einsum("BT,BTF->BF", m.astype(x.dtype), x, preferred_element_type=jnp.float32)
            mx = jnp.where(m[..., None], x, -jnp.inf).max(1).astype(jnp.float32)
            t = jnp.take_along_axis(x, tok[:, None, None], axis=1)[:, 0].astype(jnp.float32)
            return jnp.stack([t, s / m.sum(-1, keepdims=True), mx], axis=1)
        if which == "dot_mean":  # mean as a matmul with the mask, the rest as L.pool
            s = jnp.einsum("BT,BTF->BF", m.astype(x.dtype), x, preferred_element_type=jnp.float32)
            mx = jnp.where(m[..., None], x, -jnp.inf).max(1).astype(jnp.float32)
            mx = jnp.where(m.any(-1, keepdims=True), mx, 0.0)
            t = jnp.take_along_axis(x, tok[:, None, None], axis=1)[:, 0].astype(jnp.float32)
            count = jnp.maximum(m.sum(-1, keepdims=True, dtype=jnp.float32), 1.0)
            return jnp.stack([t, s / count, mx], axis=1)
        if which == "chunked":  # max/sum over T in two stages (T/8 groups of 8): layout probe
            B, T, F = x.shape
            g = 8 if T % 8 == 0 else 1
            xm = jnp.where(m[..., None], x32, -jnp.inf).reshape(B, T // g, g, F).max(2).max(1)
            xs = jnp.where(m[..., None], x32, 0.0).reshape(B, T // g, g, F).sum(2).sum(1)
            count = jnp.maximum(m.sum(-1, keepdims=True, dtype=jnp.float32), 1.0)
            t = jnp.take_along_axis(x32, tok[:, None, None], axis=1)[:, 0]
            return jnp.stack([t, xs / count, jnp.where(m.any(-1, keepdims=True), xm, 0.0)], 1)
        if which == "all_jnp":  # layers.pool without the GPU kernel
            return L.pool_jnp(x, m, tok)
        if which == "barrier":
            return L.pool(jax.lax.optimization_barrier(x), m, tok)
        return L.pool(x, m, tok)

    return red


@functools.partial(jax.jit, static_argnums=(0, 1))
def variant(config, which, params, ids, mask):
    fam, m = family_of(config.model_type), mask.astype(bool)
    tok = L.last_token_index(m)
    x = fam.embed(config, params, ids, m)
    block = functools.partial(fam.block, config)
    if which == "hidden_only":
        red = reducer("all", m, tok)

        def only_hidden(x, mask, p):
            h, act = block(x, mask, p)
            return h, act[:, :1, :1]

        return core.run_stack(only_hidden, x, m, params["layers"], red)[1][0]
    return core.run_stack(block, x, m, params["layers"], reducer(which, m, tok))[1]


def erf_gelu(x):
    """Exact GELU through erf (one rational approximation) rather than erfc."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1 / np.sqrt(2))).astype(x.dtype))


def host_copy(program):
    return [np.asarray(x) for x in program()]


def pinned_rows(c, p, ids, mask):
    """The extraction program with its outputs placed in pinned host memory by the program."""
    fn = pooled_program(host_sharding(None))
    return functools.partial(fn, p, ids, mask, **static_args(c))


def static_args(c) -> dict:
    """The extraction program's static arguments: every layer and pooling, in bf16."""
    return dict(config=c, k=c.num_layers, poolings=(0, 1, 2), out_dtype=jnp.dtype(jnp.bfloat16))


def main():
    if os.environ.get("GELU") == "erf":
        L.ACTIVATIONS["gelu"] = erf_gelu
    print(jax.devices()[0].device_kind, jax.__version__)
    rng = np.random.default_rng(0)
    for name in os.environ.get("MODELS", ",".join(CONFIGS)).split(","):
        d = CONFIGS[name]
        c = config_from_hf(d)
        p = rand_params(c)
        B, T = 42, 384
        ids = jnp.asarray(rng.integers(0, 1000, (B, T)), jnp.int32)
        mask = jnp.asarray(np.arange(T)[None] < rng.integers(200, T + 1, (B, 1)), jnp.int32)
        print(f"== {name}", flush=True)
        for w in os.environ.get("VARIANTS", "token,all,lean,hidden_only").split(","):
            timeit(f"reduce={w}", functools.partial(variant, c, w, p, ids, mask))
        rows = functools.partial(_pooled_rows, p, ids, mask, **static_args(c))
        timeit("_pooled_rows", rows)
        timeit("_pooled_rows + host copy", functools.partial(host_copy, rows))
        if os.environ.get("PINNED", "1") == "1":
            try:
                pinned = pinned_rows(c, p, ids, mask)
                timeit("_pooled_rows -> pinned_host", pinned)
                timeit("  ... + np.asarray", functools.partial(host_copy, pinned))
            except Exception as e:  # noqa: BLE001 - a profile reports what failed and goes on
                print(f"  pinned_host output failed: {type(e).__name__}: {e}"[:300])


if __name__ == "__main__":
    main()
