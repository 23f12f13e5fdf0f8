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
    PYTHONPATH=. python benchmarks/end_to_end.py --scale 17000 --ours-only   # our stages only

`--scale N` makes N train + valid texts (80/20) and N/4 test texts by recombining 1-3
sentences of same-label reviews, each split from its own reviews (no sentence crosses a
split), for a data size like the issue's 13.7k + 3.4k tweets. Both sides run on the GPU
when there is one (torch on "cuda").

Per stage (issue #8) it reports seconds, compile seconds and programs compiled (the JAX
event "/jax/core/compile/backend_compile_duration"), tokens/s of the extraction and
evaluation stages (real, non-padding tokens: the model's tokenizer at the fit's max length,
counted after the run so the count costs no stage time), peak device memory
(`memory_stats()["peak_bytes_in_use"]`; "n/a" where the backend gives none, as on CPU), peak
host memory, and the bytes of the pooled features held after extraction. Our stages are cut
by wrapping SpinClassifier's steps from here (restored after): model load, tokenising (train
+ valid), extraction (train + valid, each split's time added), probes (fit_spin up to
integration), integration, selection (choosing the candidate, building the head and the
report), evaluation on test. A stage's peak memory is the process's high-water mark when the
stage raised it, else the largest value sampled every 20 ms during it (a lower bound); the
reference runs after ours in the same process, so its host numbers include what ours left
resident. MB are 1e6 bytes. `--json PATH` writes every number.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import threading
import time

import numpy as np

C_GRID = (0.1, 0.2, 1.0, 10.0, 100.0)
ETAS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
OUR_STAGES = (
    "model load", "tokenising", "extraction", "probes", "integration", "selection", "evaluation"
)  # fmt: skip
REF_STAGES = ("extraction", "probes", "aggregation")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="HF folder (default: the demo's MiniLM)")
    p.add_argument("--recipe", default="paper", choices=["paper", "default"])
    p.add_argument("--sk-sample", type=float, default=1.0, help="share of sklearn fits run")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--scale", type=int, default=0, help="N recombined train+valid texts")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    p.add_argument("--ours-only", action="store_true",
                   help="our side and its per-stage table only: a profile, not a comparison")
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


# ---- per-stage metrics ---------------------------------------------------------------------


def _host_rss() -> int | None:
    """Bytes resident now (Linux /proc), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _host_peak() -> int:
    """The process's high-water mark in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def jax_device_memory():
    """(bytes in use, peak bytes in use) of the first local device, or None (CPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats.get("bytes_in_use", 0), stats["peak_bytes_in_use"]


def torch_device_memory():
    """As jax_device_memory for torch's CUDA allocator, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()


class Stages:
    """Consecutive named stages: seconds, JAX compile seconds and programs, peak memory.

    `start(name)` ends the running stage and opens the next; a compile listener adds to the
    running one; a thread samples host RSS and device bytes in use every 20 ms.
    """

    active: Stages | None = None  # the one the compile listener reports to
    _listening = False

    def __init__(self, device_memory=None, every: float = 0.02):
        self.device_memory = device_memory or (lambda: None)
        self.rows: dict[str, dict] = {}
        self.current: str | None = None
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every,), daemon=True)

    @classmethod
    def listen(cls):
        if cls._listening:
            return
        from jax import monitoring

        def on_event(event, duration, **_):
            stages = cls.active
            if event == COMPILE_EVENT and stages is not None and stages.current is not None:
                with stages._lock:
                    row = stages.rows[stages.current]
                    row["compile_s"] += duration
                    row["programs"] += 1

        monitoring.register_event_duration_secs_listener(on_event)
        cls._listening = True

    def __enter__(self):
        Stages.active = self
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        self._stop.set()
        self._thread.join()
        Stages.active = None

    def start(self, name: str) -> None:
        """Opens stage `name`; a name seen before (train, then valid extraction) adds to it."""
        self.stop()
        device = self.device_memory()
        with self._lock:
            row = self.rows.setdefault(name, {"seconds": 0.0, "compile_s": 0.0, "programs": 0})
            row.update({
                "_t0": time.perf_counter(), "_host0": _host_peak(), "_host_seen": 0,
                "_dev0": None if device is None else device[1], "_dev_seen": 0,
            })  # fmt: skip
            self.current = name

    def stop(self) -> None:
        if self.current is None:
            return
        device = self.device_memory()
        with self._lock:
            row = self.rows[self.current]
            row["seconds"] += time.perf_counter() - row.pop("_t0")
            host0, host = row.pop("_host0"), _host_peak()
            seen = max(row.pop("_host_seen"), _host_rss() or 0)
            peak = host if host > host0 else seen or host
            row["peak_host_bytes"] = max(peak, row.get("peak_host_bytes") or 0)
            dev0, dev_seen = row.pop("_dev0"), row.pop("_dev_seen")
            if device is None or dev0 is None:
                row["peak_device_bytes"] = None
            else:
                peak = device[1] if device[1] > dev0 else max(dev_seen, device[0])
                row["peak_device_bytes"] = max(peak, row.get("peak_device_bytes") or 0)
            self.current = None

    def _sample(self, every: float) -> None:
        while not self._stop.wait(every):
            if self.current is None:
                continue
            rss, device = _host_rss(), self.device_memory()
            with self._lock:
                row = self.rows.get(self.current)
                if row is None or "_t0" not in row:
                    continue
                row["_host_seen"] = max(row["_host_seen"], rss or 0)
                if device is not None:
                    row["_dev_seen"] = max(row["_dev_seen"], device[0])


@contextlib.contextmanager
def patched(obj, name: str, wrap):
    """obj.name replaced by wrap(original) for the block, restored after."""
    original = getattr(obj, name)
    setattr(obj, name, wrap(original))
    try:
        yield
    finally:
        setattr(obj, name, original)


def feature_bytes(src) -> int:
    """Bytes of a feature source's arrays: in memory (numpy / jax), or a store's on disk."""
    total = 0
    for value in src.arrays.values():
        if hasattr(value, "nbytes"):
            total += int(value.nbytes)
        else:  # FeatureStore: (shape, dtype)
            shape, dtype = value
            total += int(np.prod(shape)) * np.dtype(dtype).itemsize
    return total


def real_tokens(model, texts, max_length: int) -> int:
    """Non-padding tokens of texts as the fit feeds them (special tokens, truncation)."""
    from spin_jax.text import encode

    ids, _ = encode(model.tokenizer, texts, max_length)
    return int(sum(len(i) for i in ids))


# ---- ours ----------------------------------------------------------------------------------


def ours(model_dir, recipe, train, valid, test) -> dict:
    import spin_jax.classifier as classifier
    import spin_jax.extraction as extraction
    import spin_jax.learner as learner
    from spin_jax.classifier import SpinClassifier

    Stages.listen()
    held = []  # bytes of the feature sources extract returned (train, valid), not the sources:
    # holding them would keep them resident through evaluation

    def extract(original):
        def wrapped(self, *a, **k):
            stages.start("extraction")
            src = original(self, *a, **k)
            held.append(feature_bytes(src))
            return src

        return wrapped

    def staged(name, then=None):
        """A wrap: stage `name` opens at the call, and `then` (if any) when it returns."""

        def wrap(original):
            def wrapped(*a, **k):
                stages.start(name)
                out = original(*a, **k)
                if then is not None:
                    stages.start(then)
                return out

            return wrapped

        return wrap

    with contextlib.ExitStack() as stack:
        stages = stack.enter_context(Stages(jax_device_memory))
        stack.enter_context(patched(SpinClassifier, "_extract", extract))
        stack.enter_context(
            patched(extraction, "encode_rows", staged("tokenising", then="extraction"))
        )
        stack.enter_context(patched(classifier, "fit_spin", staged("probes")))
        stack.enter_context(
            patched(learner, "integrate_all", staged("integration", then="selection"))
        )
        stages.start("model load")
        clf = SpinClassifier(model_dir, recipe=recipe, compilation_cache=False)
        t0 = time.perf_counter()
        clf.fit(train, None, valid=valid)
        fit_s = time.perf_counter() - t0
        stages.start("evaluation")
        pred = np.argmax(clf.predict_proba(test.texts), axis=-1)
        stages.stop()
    rows = stages.rows
    counts = {
        name: real_tokens(clf.model, ds.texts, clf.max_length)
        for name, ds in (("train", train), ("valid", valid), ("test", test))
    }
    rows["extraction"]["tokens"] = counts["train"] + counts["valid"]
    rows["evaluation"]["tokens"] = counts["test"]
    for name in ("extraction", "evaluation"):
        rows[name]["tokens_per_s"] = rows[name]["tokens"] / max(rows[name]["seconds"], 1e-9)
    rows["extraction"]["feature_bytes"] = sum(held)
    times = clf.report["times"]
    return {
        "load_s": rows["model load"]["seconds"],
        "fit_s": fit_s,
        "probes_s": times["probes_s"],
        "integration_s": times["integration_s"],
        "extract_s": rows["extraction"]["seconds"] + rows["tokenising"]["seconds"],
        "selection_s": rows["selection"]["seconds"],
        "eval_s": rows["evaluation"]["seconds"],
        "test": float(np.mean(pred == test.labels)),
        "layers": clf.head.num_layers,
        "neurons": int(len(clf.head.rep)),
        "tokens": counts,
        "stages": rows,
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


def sklearn_spin(feats: dict, ys, sample: float, rng, stages=None) -> dict:
    """The official code's search on torch features; every fit timed, or a sample of them."""
    from joblib import Parallel, delayed

    if stages is not None:
        stages.start("probes")
    train, valid, test = feats
    ytr, yva, yte = ys
    jobs, seconds = Parallel(n_jobs=-1), {"probes": 0.0, "aggregation": 0.0}
    combos = [(r, p) for r in ("hidden", "ffn") for p in range(3)]
    tables = {}
    for rep, p in combos:
        tables[rep, p], s = _probe_table(train[rep][:, :, p], valid[rep][:, :, p], ytr, yva,
                                         jobs, sample, rng)  # fmt: skip
        seconds["probes"] += s
    if stages is not None:
        stages.start("aggregation")
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


def reference(model_dir, train, valid, test, args, tokens: int) -> dict:
    """The PyTorch way; `tokens`: real tokens of all three splits (ours' count)."""
    with Stages(torch_device_memory) as stages:
        stages.start("extraction")
        t0 = time.perf_counter()
        feats = []
        for ds in (train, valid, test):
            h, f = torch_features(model_dir, ds.texts, args.batch)
            feats.append({"hidden": h, "ffn": f})
        extract_s = time.perf_counter() - t0
        ys = [np.asarray(d.labels) for d in (train, valid, test)]
        sk = sklearn_spin(feats, ys, args.sk_sample, np.random.default_rng(0), stages)
    rows = stages.rows
    for row in rows.values():  # torch / scikit-learn: no JAX compile to count
        row["compile_s"] = row["programs"] = None
    rows["extraction"]["tokens"] = tokens
    rows["extraction"]["tokens_per_s"] = tokens / max(extract_s, 1e-9)
    nbytes = sum(a.nbytes for f in feats for a in f.values())
    rows["extraction"]["feature_bytes"] = nbytes
    scale = 1.0 / args.sk_sample
    return {"extract_s": extract_s, "probes_s": sk["probes"],
            "aggregation_s": sk["aggregation"] * scale, "test": sk["test"], "where": sk["where"],
            "bytes": nbytes, "stages": rows}  # fmt: skip


def _s(x, digits=1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _mb(x) -> str:
    return "n/a" if x is None else f"{x / 1e6:,.0f}"


def _rate(x) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def stage_table(title: str, rows: dict, names, seconds: dict | None = None) -> None:
    """One markdown row per stage; `seconds` overrides a stage's wall seconds (the sampled
    scikit-learn fits, extrapolated)."""
    print(f"\n{title}\n")
    print("| stage | s | compile s | programs | tokens/s | peak device MB | peak host MB "
          "| features MB |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        row = rows.get(name)
        if row is None:
            print(f"| {name} | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        sec = (seconds or {}).get(name, row["seconds"])
        programs = row["programs"]
        print(f"| {name} | {sec:.2f} | {_s(row['compile_s'], 2)} | "
              f"{'n/a' if programs is None else programs} | {_rate(row.get('tokens_per_s'))} | "
              f"{_mb(row['peak_device_bytes'])} | {_mb(row['peak_host_bytes'])} | "
              f"{_mb(row.get('feature_bytes'))} |")  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    from spin_jax.cli.learn import demo_model_dir

    model_dir = args.model or demo_model_dir()
    train, valid, test = splits(args.scale)
    mine = ours(model_dir, args.recipe, train, valid, test)
    brief = {k: v for k, v in mine.items() if k != "stages"}
    print(f"ours: {brief}", flush=True)  # before the reference, which may take long
    if args.ours_only:
        import jax

        now = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}"
        print(f"# end_to_end.py --ours-only, {now} UTC; {jax.devices()[0].device_kind}, "
              f"jax {jax.__version__}")  # fmt: skip
        stage_table("ours, per stage (train+valid extracted; the test split in evaluation):",
                    mine["stages"], OUR_STAGES)  # fmt: skip
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "ours": mine}, f, indent=1, default=str)
        return 0
    ref = reference(model_dir, train, valid, test, args, sum(mine["tokens"].values()))
    peak_mb = _host_peak() / 1e6  # MB as the tables (1e6 bytes)
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
    print(f"| extraction (all splits for the reference; train+valid for ours, tokenising "
          f"included) | {mine['extract_s']:.1f} | {ref['extract_s']:.1f} |")  # fmt: skip
    print(f"| probes | {mine['probes_s']:.1f} | {ref['probes_s']:.1f} |")
    print(f"| integration / aggregation | {mine['integration_s']:.1f} | "
          f"{ref['aggregation_s']:.1f} |")  # fmt: skip
    print(f"| evaluate the test split | {mine['eval_s']:.1f} | (in extraction) |")
    print(f"| model load | {mine['load_s']:.1f} | (in extraction) |")
    print(f"| **end to end** | **{our_total:.1f}** | **{ref_total:.1f}** |")
    stage_table("ours, per stage (train+valid extracted; the test split in evaluation):",
                mine["stages"], OUR_STAGES)  # fmt: skip
    sampled = {"probes": ref["probes_s"], "aggregation": ref["aggregation_s"]}
    stage_table("the PyTorch way, per stage (model load and the test split in extraction; "
                "probes / aggregation seconds as above):", ref["stages"], REF_STAGES,
                sampled)  # fmt: skip
    print(f"\nspeedup {ref_total / our_total:.1f}x; test accuracy ours {mine['test']:.4f} "
          f"({args.recipe} recipe, {mine['layers']} layers, {mine['neurons']} neurons), "
          f"reference {ref['test']:.4f} (chosen {ref['where']}); features "
          f"{ref['bytes'] / 1e6:.1f} MB (fp32); peak host memory {peak_mb:.0f} MB")  # fmt: skip
    if args.json:
        record = {
            "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M}Z",
            "device": jax.devices()[0].device_kind,
            "cpu_cores": os.cpu_count(),
            "versions": {
                "jax": jax.__version__,
                "torch": torch.__version__,
                "sklearn": sklearn.__version__,
            },  # fmt: skip
            "args": vars(args),
            "data": {"train": len(train.texts), "valid": len(valid.texts), "test": len(test.texts)},
            "ours": {**mine, "total_s": our_total},
            "reference": {**ref, "total_s": ref_total, "where": [str(w) for w in ref["where"]]},
            "peak_host_mb": peak_mb,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
