"""Where the GPU time of integration's lane steps goes, kernel by kernel.

Runs `lanes.fit_masks` at full width on a synthetic standardised X [rows, width] (the
solver's dtype) for `--masks` prefix masks x the paper's 5 lams, `--max-iter` iterations at
most, once to compile, then traced: wall seconds against GPU busy time, kernel launches per
FISTA iteration of a call, and GPU time per kernel name, largest first.

    PYTHONPATH=. python benchmarks/profile_lanes.py --width 1024     # a narrow eta's lanes
"""

from __future__ import annotations

import argparse
import datetime

import jax
import numpy as np

from benchmarks.profile_kernels import stream_events, trace_events
from spin_jax import integration, lanes, probes
from spin_jax.options import SpinOptions, solver_dtype


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--masks", type=int, default=49)
    p.add_argument("--max-iter", type=int, default=256)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    N, M = args.rows, args.width
    X = rng.standard_normal((N, M), np.float32)
    y = (X[:, :8].sum(1) + rng.standard_normal(N) > 0).astype(np.int32)
    used = np.linspace(M // args.masks, M, args.masks).astype(int)
    masks = (np.arange(M)[None] < used[:, None]).astype(np.float32)
    Xd = jax.device_put(X.astype(solver_dtype(SpinOptions())))
    yd, md = jax.device_put(y), jax.device_put(masks)
    lams = jax.device_put(probes.lams_from_c(probes.PAPER_C_GRID, N))
    cap = lanes.lanes_within(integration.lane_batch_elements(), N, M, 1)

    calls = []
    step = lanes._step_lanes

    def counted(problem, state, take, size, *a):
        out = step(problem, state, take, size, *a)
        calls.append((size, out[1]))
        return out

    lanes._step_lanes = counted

    def run():
        calls.clear()
        fit = lanes.fit_masks(Xd, yd, 2, lams, md, max_iter=args.max_iter, tol=1e-4,
                              max_lanes=cap, shrink=16)  # fmt: skip
        return jax.block_until_ready(fit)

    run()
    trace, wall = trace_events(run)
    events, _ = stream_events(trace)
    busy = sum(e["dur"] for e in events) / 1e6
    span = (events[-1]["ts"] + events[-1]["dur"] - events[0]["ts"]) / 1e6
    print(f"# profile_lanes.py, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}; {args}")  # fmt: skip
    print(f"{len(calls)} calls (sizes {sorted({s for s, _ in calls})}); wall {wall:.3f} s, "
          f"GPU span {span:.3f} s, busy {busy:.3f} s; {len(events)} kernels")  # fmt: skip
    times, counts = {}, {}
    for e in events:
        times[e["name"]] = times.get(e["name"], 0) + e["dur"]
        counts[e["name"]] = counts.get(e["name"], 0) + 1
    print("\n| kernel | ms | launches | us each |\n|---|---:|---:|---:|")
    for name, t in sorted(times.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {name[:70]} | {t / 1000:.1f} | {counts[name]} | {t / counts[name]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
