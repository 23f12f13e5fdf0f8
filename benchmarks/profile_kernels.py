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
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.profile_pooling import CONFIGS, rand_params
from spin_jax.extraction import pooled_program
from spin_jax.models import config_from_hf


def kernel_times(trace: dict) -> tuple[collections.Counter, set[str]]:
    """Microseconds per kernel name on the GPU's stream tracks of a Perfetto JSON trace
    (the GPU's other tracks, XLA modules and ops, span those same kernels), and the names
    of the tracks read."""
    events, tracks = stream_events(trace)
    times = collections.Counter()
    for e in events:
        times[e["name"]] += e.get("dur", 0)
    return times, tracks


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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt2-xl")
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--shape", default="42,384")
    args = p.parse_args()
    c = config_from_hf(CONFIGS[args.model])
    params, rng = rand_params(c), np.random.default_rng(0)
    B, T = (int(x) for x in args.shape.split(","))
    ids = jnp.asarray(rng.integers(0, 1000, (B, T)), jnp.int32)
    mask = jnp.asarray(np.arange(T)[None] < rng.integers(T // 2, T + 1, (B, 1)), jnp.int32)
    fn = functools.partial(
        pooled_program(), c, c.num_layers, (0, 1, 2), jnp.dtype(jnp.bfloat16), (), params
    )
    jax.block_until_ready(fn(ids, mask))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(args.calls):
                out = fn(ids, mask)
            jax.block_until_ready(out)
        path = next(Path(d).rglob("perfetto_trace.json.gz"))
        trace = json.loads(gzip.decompress(path.read_bytes()))
    times, tracks = kernel_times(trace)
    print(f"GPU tracks: {sorted(tracks)}")
    detail(stream_events(trace)[0], args.calls)
    total = sum(times.values())
    print(f"{args.model} {B}x{T}: GPU time {total / args.calls / 1000:.2f} ms per call")
    for name, us in times.most_common(args.top):
        per_call = us / args.calls / 1000
        print(f"  {per_call:8.3f} ms {100 * us / total:5.1f}%  {name[:110]}")


if __name__ == "__main__":
    main()
