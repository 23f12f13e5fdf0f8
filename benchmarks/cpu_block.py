"""Where one encoder block's time goes on CPU: its parts timed in isolation, interleaved.

The real all-MiniLM-L6-v2's first block on a batch of --batch x --tokens random activations
(32768 tokens by default, one extraction batch), fp32, at each --precision: q (one of the
four D x D matmuls), the FFN's two matmuls (the first with its GELU), attention (ours, and
the whole-batch XLA attention it replaced: `jax.nn.dot_product_attention`), a layer norm,
the pooling of a [B, T, D] and a [B, T, F] activation, the whole block, and the same FFN
matmul in torch for scale. At "highest", the compensated matmul is also timed as the
unchunked scan it replaced. Each round runs every part once; the table gives the median and
best of --rounds.

    PYTHONPATH=. python benchmarks/cpu_block.py [--batch 256] [--tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import spin_jax
from spin_jax.cli.learn import demo_model_dir
from spin_jax.models import bert
from spin_jax.models import layers as L


def whole_batch_attention(q, k, v, mask):
    """The attention before chunking: XLA's, over the whole batch at once."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], implementation="xla")


def scan_matmul(x, kernel):
    """The compensated matmul before chunking: one scan step per block of 8, [M, F] carries."""
    D, F = kernel.shape
    y = L._compensated_scan(x.reshape(-1, D), kernel.reshape(D // 8, 8, F))
    return y.reshape(*x.shape[:-1], F)


def parts(c, p, x, h, mask, precision):
    """{name: (jitted fn, args)} for one block's parts."""
    B, T, D = x.shape
    q = x.reshape(B, T, c.num_heads, D // c.num_heads)
    idx = jnp.zeros(B, jnp.int32)
    act = L.activation(c.activation)
    out = {
        "q = dense(x) (1 of 4 D x D)": (lambda x: L.dense(x, p["attn"]["q"]), (x,)),
        "FFN in + GELU (D x F)": (lambda x: act(L.dense(x, p["ffn_in"])), (x,)),
        "FFN out (F x D)": (lambda h: L.dense(h, p["ffn_out"]), (h,)),
        "attention (ours)": (lambda q, m: L.attention(q, q, q, m, causal=False), (q, mask)),
        "attention (whole batch, before)": (
            lambda q, m: whole_batch_attention(q, q, q, m),
            (q, mask),
        ),
        "layer norm": (lambda x: bert._ln(x, p["attn_ln"], c), (x,)),
        "pool [B,T,D]": (lambda x, m: L.pool(x, m, idx), (x, mask)),
        "pool [B,T,F]": (lambda h, m: L.pool(h, m, idx), (h, mask)),
        "block": (lambda x, m: bert.block(c, x, m, p), (x, mask)),
    }
    if precision == "highest":
        kernel = p["ffn_in"]["kernel"]
        out["FFN in matmul, unchunked scan (before)"] = (lambda x: scan_matmul(x, kernel), (x,))
    return {name: (jax.jit(f), args) for name, (f, args) in out.items()}


def torch_matmul(x, kernel):
    import torch

    torch.set_num_threads(os.cpu_count())
    a, b = torch.tensor(np.asarray(x).reshape(-1, x.shape[-1])), torch.tensor(np.asarray(kernel))

    def run():
        with torch.no_grad():
            a @ b  # torch runs eagerly: done when it returns

    return run


def time_parts(fns, rounds):
    times = {name: [] for name in fns}
    for f, args in fns.values():
        jax.block_until_ready(f(*args))  # compiles, warms up
    for _ in range(rounds):
        for name, (f, args) in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[name].append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", default="default,highest")
    args = ap.parse_args()
    model = spin_jax.load_model(demo_model_dir())
    c = model.config
    p = jax.tree.map(lambda a: a[0], model.params["layers"])
    rng = np.random.default_rng(0)
    B, T = args.batch, args.tokens
    x = jnp.asarray(rng.standard_normal((B, T, c.hidden_size)), jnp.float32)
    h = jnp.asarray(rng.standard_normal((B, T, c.ffn_size)), jnp.float32)
    mask = jnp.asarray(np.arange(T)[None] < rng.integers(T // 2, T + 1, B)[:, None])
    print(f"{os.cpu_count()} cores, jax {jax.__version__}; MiniLM block, {B} x {T} tokens, fp32")
    for precision in args.precision.split(","):
        with jax.default_matmul_precision(precision):
            fns = parts(c, p, x, h, mask, precision)
            fns["torch: FFN in matmul (D x F)"] = (torch_matmul(x, p["ffn_in"]["kernel"]), ())
            times = time_parts(fns, args.rounds)
        print(f"\nprecision {precision}\n| part | median s | best s |\n|---|---:|---:|")
        for name, s in times.items():
            print(f"| {name} | {statistics.median(s):.3f} | {min(s):.3f} |")


if __name__ == "__main__":
    main()
