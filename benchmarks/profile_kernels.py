"""Where the GPU time of one extraction batch goes, kernel by kernel.

Traces a few calls of the extraction program (GPT2-XL shape, bf16, random weights, one
42 x 384 batch) with jax.profiler, reads the Perfetto trace it writes, and prints GPU time
per kernel name (summed over calls, per call), largest first.
Run: PYTHONPATH=. python benchmarks/profile_kernels.py [--model gpt2-xl] [--top 30]
"""

from __future__ import annotations

import argparse
import collections
import functools
import gzip
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.profile_pooling import CONFIGS, rand_params, static_args
from spin_jax.extraction import pooled_program
from spin_jax.models import config_from_hf


def kernel_times(trace: dict) -> tuple[collections.Counter, collections.Counter, set[str]]:
    """Microseconds and launches per kernel name on the GPU's stream tracks of a Perfetto JSON trace
    (the GPU's other tracks, XLA modules and ops, span those same kernels), and the names
    of the tracks read."""
    events, tracks = stream_events(trace)
    times, counts = collections.Counter(), collections.Counter()
    for e in events:
        times[e["name"]] += e.get("dur", 0)
        counts[e["name"]] += 1
    return times, counts, tracks


def stream_events(trace: dict) -> tuple[list[dict], set[str]]:
    """The complete events on the GPU's stream tracks, by start time, and the GPU's tracks."""
    events = trace["traceEvents"]
    meta = [e for e in events if e.get("ph") == "M"]
    gpu = {
        e["pid"]
        for e in meta
        if e.get("name") == "process_name" and "/device:GPU" in str(e["args"].get("name"))
    }
    tracks = {
        (e["pid"], e["tid"]): str(e["args"].get("name"))
        for e in meta
        if e.get("name") == "thread_name" and e.get("pid") in gpu
    }
    streams = {k for k, name in tracks.items() if "Stream" in name}
    out = [e for e in events if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in streams]
    return sorted(out, key=lambda e: e["ts"]), set(tracks.values())


def detail(events: list[dict], calls: int) -> None:
    """Idle time between kernels, and how the device-to-device copies are made up."""
    busy = sum(e["dur"] for e in events)
    span = events[-1]["ts"] + events[-1]["dur"] - events[0]["ts"]
    gaps = [b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(events, events[1:], strict=False)]
    big = sorted(gaps)[-(calls - 1) :] if calls > 1 else []  # the gaps between calls
    print(
        f"span {span / 1000:.2f} ms, busy {busy / 1000:.2f} ms, idle inside calls "
        f"{(span - busy - sum(big)) / calls / 1000:.2f} ms per call, {len(events) / calls:.0f} "
        f"events per call"
    )
    copies = [e for e in events if "Memcpy" in e["name"]]
    if copies:
        durs = np.array([e["dur"] for e in copies])
        print(
            f"copies: {len(copies) / calls:.0f} per call, us min/median/max "
            f"{durs.min():.1f}/{np.median(durs):.1f}/{durs.max():.1f}; "
            f"< 5 us: {(durs < 5).sum() / calls:.0f} per call, "
            f"{durs[durs < 5].sum() / calls / 1000:.2f} ms; sample args "
            f"{[e.get('args') for e in copies[:2]]}"[:600]
        )


def trace_events(run) -> tuple[dict, float]:
    """The Perfetto trace of run() and its wall seconds."""
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            t0 = time.perf_counter()
            run()
            wall = time.perf_counter() - t0
        path = next(Path(d).rglob("perfetto_trace.json.gz"))
        return json.loads(gzip.decompress(path.read_bytes())), wall


def profile_pass(model: str, passes: int, save: str | None = None) -> None:
    """A whole extract_throughput pass of the spin_jax contender: wall time against GPU busy
    time, and the GPU's idle time inside and between the batches' programs."""
    from benchmarks import extract_throughput as bench

    args = bench.parse_args(["--models", model])
    _, m, batches, _ = bench.prepare(model, args, "cuda", bench.torch.bfloat16)
    dispatch, collect = bench.jax_contender(m, bare=False)
    run = functools.partial(bench.run_pass, dispatch, collect, batches, 0)
    for _ in range(passes):  # compile every shape, then a warm pass
        run()
    trace, wall = trace_events(lambda: (run(), bench.sync("cuda")))
    if save:
        Path(save).write_bytes(gzip.compress(json.dumps(trace).encode()))
    events, _ = stream_events(trace)
    kernels = [e for e in events if "Memcpy" not in e["name"] or "DtoD" in e["name"]]
    busy, gaps, end = 0.0, [], kernels[0]["ts"]  # the union of kernel intervals, any stream
    for e in kernels:
        start, stop = e["ts"], e["ts"] + e["dur"]
        busy += max(0, stop - max(start, end))
        if start > end:
            gaps.append(start - end)
        end = max(end, stop)
    busy, span, gaps = busy / 1e6, (end - kernels[0]["ts"]) / 1e6, np.array(gaps)
    big = gaps[gaps > 200]  # > 200 us: between programs rather than between kernels
    print(
        f"{model}: {len(batches)} batches, wall {wall:.3f} s (traced), GPU span {span:.3f} s, "
        f"busy {busy:.3f} s; idle {span - busy:.3f} s, of which {big.sum() / 1e6:.3f} s in "
        f"{len(big)} gaps > 200 us (max {gaps.max() / 1000:.1f} ms); host copies "
        f"{sum(e['dur'] for e in events if 'DtoH' in e['name']) / 1e6:.3f} s"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pass", dest="whole", default=None, help="profile a whole pass of this model")
    p.add_argument("--save", default=None, help="with --pass: write the trace here (.json.gz)")
    p.add_argument("--model", default="gpt2-xl")
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--shape", default="42,384")
    args = p.parse_args()
    if args.whole:
        return profile_pass(args.whole, 2, args.save)
    c = config_from_hf(CONFIGS[args.model])
    params, rng = rand_params(c), np.random.default_rng(0)
    B, T = (int(x) for x in args.shape.split(","))
    ids = jnp.asarray(rng.integers(0, 1000, (B, T)), jnp.int32)
    mask = jnp.asarray(np.arange(T)[None] < rng.integers(T // 2, T + 1, (B, 1)), jnp.int32)
    fn = functools.partial(pooled_program(), params, **static_args(c))
    jax.block_until_ready(fn(ids, mask))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(args.calls):
                out = fn(ids, mask)
            jax.block_until_ready(out)
        path = next(Path(d).rglob("perfetto_trace.json.gz"))
        trace = json.loads(gzip.decompress(path.read_bytes()))
    times, counts, tracks = kernel_times(trace)
    print(f"GPU tracks: {sorted(tracks)}")
    detail(stream_events(trace)[0], args.calls)
    total = sum(times.values())
    print(f"{args.model} {B}x{T}: GPU time {total / args.calls / 1000:.2f} ms per call")
    for name, us in times.most_common(args.top):
        per_call = us / args.calls / 1000
        n = counts[name] / args.calls
        print(f"  {per_call:8.3f} ms {100 * us / total:5.1f}% {n:5.0f}x  {name[:100]}")


if __name__ == "__main__":
    main()
