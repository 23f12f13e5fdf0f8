"""The whole method end to end, ours against the PyTorch way, in one run on one machine.

Ours: `SpinClassifier(model, recipe=...)`: extraction (pooling inside the jitted forward),
the vmapped optax probes, integration and selection, then evaluation on the test split
(only the chosen head's blocks, only its kept neurons). A fresh process: every compile is
counted, as a user's first run pays it.

The PyTorch way, as the official code does it: HF torch with forward hooks on each block's
FFN activation (and `output_hidden_states`), mean / max / first-token pooling over the real
tokens in torch, then scikit-learn: an L1 `LogisticRegression(solver="saga")` per (layer,
representation, pooling) at each C of the official grid {0.1, 0.2, 1, 10, 100}, the best C
on validation, eta sparsification with the official eta grid, and an aggregated L1 classifier
on the kept neurons of layers 0..k for every (combination, eta, k, C), the best validation
score chosen. With `--sk-sample F` only a fraction F of the probe and aggregation fits is
timed and the rest extrapolated (saying so); by default every fit runs, so its test score is
the reference's own.

    PYTHONPATH=. python benchmarks/end_to_end.py            # MiniLM, the shipped reviews, CPU
    PYTHONPATH=. python benchmarks/end_to_end.py --scale 17000 --sk-sample 0.02   # GPU

`--scale N` makes N train + valid texts (80/20) and N/4 test texts by recombining 1-3
sentences of same-label reviews, each split from its own reviews (no sentence crosses a
split), for a data size like the issue's 13.7k + 3.4k tweets. Both sides run on the GPU
when there is one (torch on "cuda").
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import time

import numpy as np

C_GRID = (0.1, 0.2, 1.0, 10.0, 100.0)
ETAS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="HF folder (default: the demo's MiniLM)")
    p.add_argument("--recipe", default="paper", choices=["paper", "default"])
    p.add_argument("--sk-sample", type=float, default=1.0, help="share of sklearn fits run")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--scale", type=int, default=0, help="N recombined train+valid texts")
    return p.parse_args(argv)


def splits(scale: int = 0):
    from spin_jax.cli.learn import DEMO_DATA
    from spin_jax.data import load_texts, stratified_split, subset

    data = load_texts(str(DEMO_DATA))
    rest, test = stratified_split(data.labels, 0.2, seed=1)
    tr, va = stratified_split(data.labels[rest], 0.2, seed=0)
    parts = [subset(data, i) for i in (rest[tr], rest[va], test)]
    if scale:
        sizes = (int(scale * 0.8), scale - int(scale * 0.8), scale // 4)
        pairs = enumerate(zip(parts, sizes, strict=True))
        parts = [recombined(d, n, seed) for seed, (d, n) in pairs]
    return parts


def recombined(ds, n: int, seed: int):
    """n texts of 1-3 sentences drawn from the reviews of one label (balanced labels)."""
    import re

    from spin_jax.data import TextDataset

    rng = np.random.default_rng(seed)
    pools = [
        [x for i in np.flatnonzero(ds.labels == c) for x in re.split(r"(?<=[.!?]) ", ds.texts[i])]
        for c in range(len(ds.label_names))
    ]
    labels = rng.integers(0, len(pools), n)
    texts = [" ".join(rng.choice(pools[c], rng.integers(1, 4))) for c in labels]
    return TextDataset(texts, labels.astype(np.int64), ds.label_names, f"{ds.source}*{n}")


# ---- ours ----------------------------------------------------------------------------------


def ours(model_dir, recipe, train, valid, test) -> dict:
    from spin_jax.classifier import SpinClassifier

    t0 = time.perf_counter()
    clf = SpinClassifier(model_dir, recipe=recipe, compilation_cache=False)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    clf.fit(train, None, valid=valid)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = np.argmax(clf.predict_proba(test.texts), axis=-1)
    eval_s = time.perf_counter() - t0
    times = clf.report["times"]
    return {
        "load_s": load_s,
        "fit_s": fit_s,
        "probes_s": times["probes_s"],
        "integration_s": times["integration_s"],
        "extract_s": fit_s - times["probes_s"] - times["integration_s"],
        "eval_s": eval_s,
        "test": float(np.mean(pred == test.labels)),
        "layers": clf.head.num_layers,
        "neurons": int(len(clf.head.rep)),
    }


# ---- the PyTorch way -----------------------------------------------------------------------


def torch_features(model_dir, texts, batch) -> tuple[np.ndarray, np.ndarray]:
    """hidden [N, L+1, 3, D] and ffn [N, L, 3, F] (pooling: first token, mean, max)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModel.from_pretrained(model_dir).eval().to(device)
    acts = []
    hooks = [
        block.intermediate.register_forward_hook(lambda m, i, o: acts.append(o))
        for block in model.encoder.layer
    ]
    hidden, ffn = [], []
    with torch.inference_mode():
        for s in range(0, len(texts), batch):
            enc = tok(texts[s : s + batch], padding=True, truncation=True, return_tensors="pt")
            enc = enc.to(device)
            acts.clear()
            out = model(**enc, output_hidden_states=True)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            hidden.append(np.stack([_pool(h, mask) for h in out.hidden_states], 1))
            ffn.append(np.stack([_pool(a, mask) for a in acts], 1))
    for h in hooks:
        h.remove()
    return np.concatenate(hidden), np.concatenate(ffn)


def _pool(x, mask):
    import torch

    mean = (x * mask).sum(1) / mask.sum(1)
    big = torch.finfo(x.dtype).max
    mx = torch.where(mask > 0, x, -big).max(1).values
    return torch.stack([x[:, 0], mean, mx], 1).cpu().numpy()


def sk_fit(X, y, C):
    import sklearn
    from sklearn.linear_model import LogisticRegression

    version = tuple(int(p) for p in sklearn.__version__.split(".")[:2])
    kind = {"l1_ratio": 1.0} if version >= (1, 8) else {"penalty": "l1"}
    return LogisticRegression(solver="saga", C=C, tol=1e-4, max_iter=100, **kind).fit(X, y)


def sklearn_spin(feats: dict, ys, sample: float, rng) -> dict:
    """The official code's search on torch features; every fit timed, or a sample of them."""
    from joblib import Parallel, delayed

    train, valid, test = feats
    ytr, yva, yte = ys
    jobs, seconds = Parallel(n_jobs=-1), {"probes": 0.0, "aggregation": 0.0}
    combos = [(r, p) for r in ("hidden", "ffn") for p in range(3)]
    tables = {}
    for rep, p in combos:
        tables[rep, p], s = _probe_table(train[rep][:, :, p], valid[rep][:, :, p], ytr, yva,
                                         jobs, sample, rng)  # fmt: skip
        seconds["probes"] += s
    best = (-1.0, None)
    for rep, p in combos:
        first = 0 if rep == "hidden" else 1
        for eta in ETAS:
            keep = [_kept(w, eta) for w in tables[rep, p]]
            for k in range(len(keep)):
                cols = [(j, keep[j]) for j in range(k + 1)]
                Xtr, Xva, Xte = (
                    np.concatenate([f[rep][:, j, p][:, c] for j, c in cols], 1)
                    for f in (train, valid, test)
                )
                if Xtr.shape[1] == 0 or rng.random() > sample:
                    continue  # no kept neuron (every probe of these layers all-zero)
                t0 = time.perf_counter()
                m, mean, std = _standard(Xtr)
                fits = jobs(delayed(sk_fit)(m, ytr, C) for C in C_GRID)
                seconds["aggregation"] += time.perf_counter() - t0
                for f in fits:
                    score = f.score((Xva - mean) / std, yva)
                    if score > best[0]:
                        best = (score, (f, mean, std, Xte, rep, p, eta, k + first))
    score, (f, mean, std, Xte, *where) = best
    return {**seconds, "valid": score, "test": float(f.score((Xte - mean) / std, yte)),
            "where": where}  # fmt: skip


def _standard(X):
    mean, std = X.mean(0), X.std(0)
    std = np.where(std > 0, std, 1.0)
    return (X - mean) / std, mean, std


def _probe_table(Xtr, Xva, ytr, yva, jobs, sample, rng):
    """Per layer: the squared weights of the best-C probe; and the seconds spent."""
    from joblib import delayed

    weights, seconds = [], 0.0
    for j in range(Xtr.shape[1]):
        m, mean, std = _standard(Xtr[:, j])
        t0 = time.perf_counter()
        fits = jobs(delayed(sk_fit)(m, ytr, C) for C in C_GRID) if rng.random() <= sample else []
        seconds += time.perf_counter() - t0
        if not fits:  # not sampled: a stand-in so eta still selects something
            weights.append(np.ones(Xtr.shape[-1]))
            continue
        f = max(fits, key=lambda f: f.score((Xva[:, j] - mean) / std, yva))
        weights.append(np.square(f.coef_).sum(0))
    return weights, seconds / max(sample, 1e-9)


def _kept(importance, eta):
    total = importance.sum()
    if total <= 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-importance, kind="stable")
    n = int(np.searchsorted(np.cumsum(importance[order]) / total, eta - 1e-12)) + 1
    return np.sort(order[:n])


def reference(model_dir, train, valid, test, args) -> dict:
    t0 = time.perf_counter()
    feats = []
    for ds in (train, valid, test):
        h, f = torch_features(model_dir, ds.texts, args.batch)
        feats.append({"hidden": h, "ffn": f})
    extract_s = time.perf_counter() - t0
    ys = [np.asarray(d.labels) for d in (train, valid, test)]
    sk = sklearn_spin(feats, ys, args.sk_sample, np.random.default_rng(0))
    scale = 1.0 / args.sk_sample
    return {"extract_s": extract_s, "probes_s": sk["probes"],
            "aggregation_s": sk["aggregation"] * scale, "test": sk["test"], "where": sk["where"],
            "bytes": sum(a.nbytes for f in feats for a in f.values())}  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    from spin_jax.cli.learn import demo_model_dir

    model_dir = args.model or demo_model_dir()
    train, valid, test = splits(args.scale)
    mine = ours(model_dir, args.recipe, train, valid, test)
    print(f"ours: {mine}", flush=True)  # before the reference, which may take long
    ref = reference(model_dir, train, valid, test, args)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ref_total = ref["extract_s"] + ref["probes_s"] + ref["aggregation_s"]
    our_total = mine["load_s"] + mine["fit_s"] + mine["eval_s"]
    import jax
    import sklearn
    import torch

    print(f"# end_to_end.py, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"device: {jax.devices()[0].device_kind} ({os.cpu_count()} CPU cores, "
          f"{platform.machine()}); jax {jax.__version__}, torch {torch.__version__}, "
          f"scikit-learn {sklearn.__version__}")  # fmt: skip
    print(f"data: {len(train.texts)} train, {len(valid.texts)} valid, {len(test.texts)} test")
    print(f"sklearn fits run: {args.sk_sample:.0%} (the rest extrapolated)\n")
    print("| stage | ours s | PyTorch way s |")
    print("|---|---:|---:|")
    print(f"| extraction (all splits for the reference; train+valid for ours) | "
          f"{mine['extract_s']:.1f} | {ref['extract_s']:.1f} |")  # fmt: skip
    print(f"| probes | {mine['probes_s']:.1f} | {ref['probes_s']:.1f} |")
    print(f"| integration / aggregation | {mine['integration_s']:.1f} | "
          f"{ref['aggregation_s']:.1f} |")  # fmt: skip
    print(f"| evaluate the test split | {mine['eval_s']:.1f} | (in extraction) |")
    print(f"| model load | {mine['load_s']:.1f} | (in extraction) |")
    print(f"| **end to end** | **{our_total:.1f}** | **{ref_total:.1f}** |")
    print(f"\nspeedup {ref_total / our_total:.1f}x; test accuracy ours {mine['test']:.4f} "
          f"({args.recipe} recipe, {mine['layers']} layers, {mine['neurons']} neurons), "
          f"reference {ref['test']:.4f} (chosen {ref['where']}); features "
          f"{ref['bytes'] / 1e6:.1f} MB (fp32); peak host memory {peak_mb:.0f} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
