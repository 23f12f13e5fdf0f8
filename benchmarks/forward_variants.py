"""A/B of ways to write the GPT-2 forward, timed as the extraction program.

benchmarks/profile_kernels.py showed, per 42 x 384 GPT2-XL batch on an H100, 4.9 ms in a
slice fusion (HF's fused QKV matmul output split into q, k, v for cuDNN attention) and
2.2-3.0 ms in copies (the layer's weights sliced out of the stacked params by the scan).
"base" is the library's program (separate q, k, v kernels, extraction.compiler_options());
variants change it, each alone or joined by "+":
  fused_qkv  HF's fused c_attn: one matmul whose output is split (the layout before)
  unroll     the layer scan fully unrolled (static weight slices, no while loop);
             unrollN: N blocks per loop iteration
  dslice     XLA's dynamic-slice fusion (gemms read weight slices in place)
  merge      XLA's dot merger on (it merges the q, k, v matmuls, which share their input)
  dbuf       XLA's while-loop double buffering
  stream     the pooling kernel on a second CUDA stream (compute_on("gpu_stream:1")),
             overlapping the matmuls
  vecs       every per-layer vector (biases, norms) indexed by the step inside the loop
             body rather than sliced by the scan (one copy each a layer); norms: only
             the norms' scales and biases (dense biases stay cuBLAS epilogue operands)
  lhs        XLA's latency-hiding scheduler (may overlap the async weight copies)
  nolt       legacy cuBLAS gemms rather than cublasLt (dynamic-slice fusion reads those)
  conc       command buffers scheduled CONCURRENT rather than serialized (with graphs: the
             pooling kernels may run beside the matmuls inside the layer loop)
  graphs     CUDA graphs (XLA command buffers) also around the while loop; graphs_ds also
             around dynamic-slice fusions
Run: PYTHONPATH=. python benchmarks/forward_variants.py [--variants base,split_qkv,...]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.profile_kernels import kernel_times
from benchmarks.profile_pooling import CONFIGS, rand_params, static_args
from benchmarks.xla_flags import time_ms
from spin_jax import models
from spin_jax.models import _forward, config_from_hf, gpt2, pooling
from spin_jax.models import layers as L
from spin_jax.programs import STATIC, _pooled_fn, compiler_options

SHAPES = ((42, 384), (32, 512))
OPTION_VARIANTS = {  # variant name -> the XLA option it sets
    "dslice": ("xla_gpu_enable_dynamic_slice_fusion", True),
    "merge": ("xla_gpu_dot_merger_threshold_mb", 32),
    "dbuf": ("xla_gpu_enable_while_loop_double_buffering", True),
    "nolt": ("xla_gpu_enable_cublaslt", False),
    "lhs": ("xla_gpu_enable_latency_hiding_scheduler", True),
    "stream": ("xla_gpu_experimental_stream_annotation", True),
    # CUDA graphs also around the layer loop and its dynamic slices (XLA's default leaves
    # the while loop out of the command buffers).
    "graphs": (
        "xla_gpu_enable_command_buffer",
        "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL",
    ),
    # Independent commands of a command buffer run concurrently (a graph DAG from buffer
    # dependencies): the memory-bound pooling may overlap the next matmul.
    "conc": ("xla_gpu_command_buffer_scheduling_mode", "CONCURRENT"),
    "graphs_ds": (
        "xla_gpu_enable_command_buffer",
        "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL,DYNAMIC_SLICE_FUSION",
    ),
}


def fused_qkv_block(c, x, mask, p):
    """GPT-2's block as it was with HF's fused c_attn: one matmul, its output split."""
    B, T, D = x.shape
    N = c.num_heads
    qkv = L.dense(gpt2._ln(x, p["ln_1"], c), p["attn"]["c_attn"]).reshape(B, T, 3, N, D // N)
    scale = None if c.scale_attn_weights else 1.0
    att = L.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask, causal=True, scale=scale)
    x = x + L.dense(att.reshape(B, T, D), p["attn"]["c_proj"])
    act = L.activation(c.activation)(L.dense(gpt2._ln(x, p["ln_2"], c), p["mlp"]["c_fc"]))
    return x + L.dense(act, p["mlp"]["c_proj"]), act


def fused_qkv_params(params):
    """The q, k, v kernels concatenated back into c_attn, once, outside the timed program."""
    attn = params["layers"]["attn"]
    c_attn = {
        leaf: jnp.concatenate([attn[n][leaf] for n in ("q", "k", "v")], axis=-1)
        for leaf in ("kernel", "bias")
    }
    layers = {**params["layers"], "attn": {"c_attn": c_attn, "c_proj": attn["c_proj"]}}
    return {**params, "layers": layers}


def on_stream(fn):
    """fn run on a second CUDA stream (XLA stream annotation), beside the matmuls."""
    from jax._src.core import MemorySpace
    from jax.experimental import compute_on as co

    # compute_on2 in jax 0.10, compute_on with the same arguments in 0.11.
    wrap = getattr(co, "compute_on2", co.compute_on)
    return wrap(fn, compute_type="gpu_stream:1", out_memory_spaces=MemorySpace.Device)


def indexed_scan(pick):
    """A layer scan in which the stacked leaves that pick(leaf, dense_biases) selects are
    not sliced by the scan but indexed by the step inside the body: a dynamic slice XLA can
    fuse into its consumer (a layer norm) instead of a copy per leaf and layer."""

    def scan(body, carry, layers, use_scan=True):
        flat, tree = jax.tree_util.tree_flatten_with_path(layers)
        dense = {path[:-1] for path, _ in flat if getattr(path[-1], "key", None) == "kernel"}
        held = [pick(x, path[:-1] in dense) for path, x in flat]
        scanned = [x for (_, x), h in zip(flat, held, strict=True) if not h]

        def step(c, xs):
            i, sliced = xs
            sliced = iter(sliced)
            leaves = [
                jax.lax.dynamic_index_in_dim(x, i, keepdims=False) if h else next(sliced)
                for (_, x), h in zip(flat, held, strict=True)
            ]
            return body(c, tree.unflatten(leaves))

        return jax.lax.scan(step, carry, (jnp.arange(flat[0][1].shape[0]), scanned))

    return scan


INDEXED = {  # variant -> which stacked leaves the body indexes (indexed_scan)
    "vecs": lambda x, dense: x.ndim == 2,  # every per-layer vector
    "norms": lambda x, dense: x.ndim == 2 and not dense,  # norm scales and biases
}


def unrolled_scan(unroll):
    def scan(body, carry, layers, use_scan=True):
        return jax.lax.scan(body, carry, layers, unroll=unroll)

    return scan


@contextlib.contextmanager
def patched(variant: set[str]):
    saved = gpt2.block, L.scan_layers, models._forward, pooling.mean_max
    # The unjitted forward: the jitted one would reuse its trace of the unpatched model.
    models._forward = _forward.__wrapped__
    if "fused_qkv" in variant:
        gpt2.block = fused_qkv_block
    if "stream" in variant:
        pooling.mean_max = on_stream(saved[3])
    for v in variant:
        if v in INDEXED:
            L.scan_layers = indexed_scan(INDEXED[v])
        if v.startswith("unroll"):
            L.scan_layers = unrolled_scan(int(v[6:] or 0) or True)
    try:
        yield
    finally:
        gpt2.block, L.scan_layers, models._forward, pooling.mean_max = saved


def profile(fn, top: int, calls: int = 3):
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(calls):
                out = fn()
            jax.block_until_ready(out)
        path = next(Path(d).rglob("perfetto_trace.json.gz"))
        times, _, tracks = kernel_times(json.loads(gzip.decompress(path.read_bytes())))
    print(
        f"    GPU time {sum(times.values()) / calls / 1000:.2f} ms per call; "
        f"tracks {sorted(tracks)}"
    )
    for name, us in times.most_common(top):
        print(f"    {us / calls / 1000:8.3f} ms  {name[:100]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="base,fused_qkv,fused_qkv+merge,merge,unroll,dslice")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--profile", type=int, default=0, help="print this many top kernels")
    p.add_argument("--hlo", default=None, help="write each variant's optimized HLO here")
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
        for token, (key, value) in OPTION_VARIANTS.items():
            if token in variant:
                options[key] = value
        weights = fused_qkv_params(params) if "fused_qkv" in variant else params
        try:
            ref = run_variant(args, name, variant, options, c, weights, batches, ref)
        except Exception as e:  # noqa: BLE001 - an option this XLA lacks: report, go on
            print(f"  {name:24s} failed: {type(e).__name__}: {e}"[:400], flush=True)


def run_variant(args, name, variant, options, c, weights, batches, ref):
    """Times one variant, prints its row; returns the reference FFN output."""
    static = static_args(c)
    with patched(variant):
        # A new function per variant: jit's trace cache is keyed on the function.
        fn = jax.jit(
            lambda *a, **kw: _pooled_fn(*a, **kw),
            static_argnames=STATIC,
            compiler_options=options,
        )
        run = functools.partial(fn, **static)
        t = time.perf_counter()
        out = jax.block_until_ready(run(weights, *batches[0]))
        compile_s = time.perf_counter() - t
        ms = [time_ms(functools.partial(run, weights, *b), args.n) for b in batches]
        if args.hlo:
            hlo = fn.lower(weights, *batches[0], **static).compile().as_text()
            Path(args.hlo, f"{name}.hlo.txt").write_text(hlo)
        if args.profile:
            profile(functools.partial(run, weights, *batches[0]), args.profile)
    got = np.asarray(out[1], np.float32)
    ref = got if ref is None else ref
    cells = " ".join(f"{m:8.2f}" for m in ms)
    print(
        f"  {name:24s} {cells}   total {sum(ms):8.2f} ms   first call {compile_s:5.1f} s"
        f"   max|ffn - base| {float(np.abs(got - ref).max()):.3g}",
        flush=True,
    )
    return ref


if __name__ == "__main__":
    main()
