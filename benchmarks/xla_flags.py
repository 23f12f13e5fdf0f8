"""Which XLA GPU options make the extraction program fastest?

Times extraction._pooled_fn (the forward with all poolings, bf16, random weights) compiled
with each set of XLA options, on a few batch shapes of the token budget, per model shape.
Prints ms per batch and writes the fastest set (by total time over the shapes) as JSON.
Run: PYTHONPATH=. python benchmarks/xla_flags.py [--models gpt2-xl,bert-base] [--best F]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.profile_pooling import CONFIGS, rand_params, static_args
from spin_jax.models import config_from_hf
from spin_jax.programs import STATIC, _pooled_fn

BASE = {"xla_gpu_enable_triton_gemm": False}
VARIANTS = {
    "xla defaults": {},
    "cublas (library default)": BASE,
    "cublas + cublasLt epilogues": {**BASE, "xla_gpu_enable_cublaslt": True},
    "cublas + cudnn layer norm": {**BASE, "xla_gpu_enable_cudnn_layer_norm": True},
    "cublas, no command buffers": {**BASE, "xla_gpu_enable_command_buffer": ""},
    "cublas + latency hiding": {**BASE, "xla_gpu_enable_latency_hiding_scheduler": True},
}
SHAPES = ((42, 384), (32, 512), (64, 256))


def time_ms(fn, n: int) -> float:
    jax.block_until_ready(fn())
    t = time.perf_counter()
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / n * 1000


def batch(rng, B: int, T: int):
    ids = jnp.asarray(rng.integers(0, 1000, (B, T)), jnp.int32)
    lengths = rng.integers(T // 2, T + 1, (B, 1))
    return ids, jnp.asarray(np.arange(T)[None] < lengths, jnp.int32)


def bench(name: str, n: int) -> dict[str, float]:
    c = config_from_hf(CONFIGS[name])
    p, rng = rand_params(c), np.random.default_rng(0)
    batches = [batch(rng, B, T) for B, T in SHAPES]
    totals = {}
    print(f"== {name}: ms per batch at {SHAPES}", flush=True)
    for label, options in VARIANTS.items():
        fn = jax.jit(_pooled_fn, static_argnames=STATIC, compiler_options=options)
        static = static_args(c)
        try:
            ms = [time_ms(functools.partial(fn, p, *b, **static), n) for b in batches]
        except Exception as e:  # noqa: BLE001 - an option this XLA lacks: report, go on
            print(f"  {label:32s} failed: {type(e).__name__}: {e}"[:300], flush=True)
            continue
        totals[label] = sum(ms)
        cells = " ".join(f"{m:8.2f}" for m in ms)
        print(f"  {label:32s} {cells}   total {sum(ms):8.2f}", flush=True)
    return totals


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="gpt2-xl,bert-base")
    p.add_argument("--n", type=int, default=10, help="timed calls per shape")
    p.add_argument("--best", default=None, help="write the fastest options (first model) here")
    args = p.parse_args()
    print(jax.devices()[0].device_kind, jax.__version__, flush=True)
    results = {m: bench(m, args.n) for m in args.models.split(",")}
    first = results[args.models.split(",")[0]]
    best = min(first, key=first.get)
    print(f"fastest for {args.models.split(',')[0]}: {best}")
    if args.best:
        with open(args.best, "w") as f:
            json.dump(VARIANTS[best], f)


if __name__ == "__main__":
    main()
