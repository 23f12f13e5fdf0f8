"""The report of a fit (report.json): SPIN beside its baselines, per-layer probe scores,
per-k integration scores, the candidates, what was kept and how long each stage took; per
class precision, recall and F1 and the confusion matrix of each scored split; the kept
neurons' activations by class, layer by layer (the paper's Figure 4a); and the sizes of the
solves, from which run_record.py estimates the training FLOPs."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from spin_jax import probes
from spin_jax.columns import REPS
from spin_jax.head import Choice, SpinHead
from spin_jax.models import POOLINGS
from spin_jax.options import FitData, pool_sets, rep_sets

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)  # the boxes of Figure 4a: whiskers, box, median


def head_score(data: FitData, head: SpinHead, src, y) -> float:
    pred = np.argmax(head.padded_proba(head.padded_features(src)), axis=-1)
    return float(data.score(y, pred))  # numpy into one jitted program (no staging op)


def spin_scores(data: FitData, head: SpinHead) -> dict:
    """The chosen head on validation and test."""
    spin = {"num_layers": head.num_layers, "n_neurons": int(len(head.rep)), "test": None}
    for name, src, y in data.scored():
        spin[name] = head_score(data, head, src, y)
    return spin


def baselines(data: FitData, tables: dict, head_fn=None) -> dict:
    """The last-layer embedding, the best single layer and, if any, the fine-tuned head."""
    out = {}
    emb = tables.get(("hidden", 0))
    if emb is not None:
        out["embedding"] = {
            "layer": data.n_layers,
            "valid": float(emb.valid[-1]),
            "test": None if emb.test is None else float(emb.test[-1]),
        }
    (br, bp), bt = max(tables.items(), key=lambda kv: (kv[1].valid.max(), -kv[0][1]))
    j = int(np.argmax(bt.valid))
    out["best_single_layer"] = {
        "representation": br,
        "pooling": POOLINGS[bp],
        "layer": int(bt.layers[j]),
        "valid": float(bt.valid[j]),
        "test": None if bt.test is None else float(bt.test[j]),
    }
    if head_fn is not None:
        out["fine_tuned_head"] = head_fn(
            data.valid, data.test, data.yv, data.yt, data.n_classes, data.metric
        )
    return out


def build_report(
    data: FitData, *, spin: dict, best: Choice, choices: list, tables: dict, head_fn, times
) -> dict[str, Any]:
    per_layer = {
        f"{r}/{POOLINGS[p]}": {
            "layers": t.layers.tolist(),
            "valid": t.valid.tolist(),
            "test": None if t.test is None else t.test.tolist(),
        }
        for (r, p), t in tables.items()
    }
    per_layer_slp = {
        f"{r}/{POOLINGS[p]}": {
            "layers": t.layers.tolist(),
            "valid": t.slp_valid.tolist(),
            "test": None if t.slp_test is None else t.slp_test.tolist(),
        }
        for (r, p), t in tables.items()
        if t.slp_valid is not None
    }
    test = data.test
    head = best.head()
    names = _label_names(data)
    outputs = {name: _outputs(head, src) for name, src, _ in data.scored()}
    labels = {name: np.asarray(y) for name, _, y in data.scored()}
    shown = "test" if "test" in outputs else "valid"
    return {
        "metric": data.metric,
        "label_names": names,
        "n_classes": data.n_classes,
        "n_train": int(data.train.n_rows),
        "n_valid": int(data.valid.n_rows),
        "n_test": None if test is None else int(test.n_rows),
        "chosen": {
            "representation": best.rep,
            "pooling": best.pooling,
            "eta": best.eta,
            "num_layers": best.layers_used,
            "k": best.k,
            "n_neurons": best.n_neurons,
            "valid": best.valid,
        },
        "spin": spin,
        "baselines": baselines(data, tables, head_fn),
        "per_layer_probes": per_layer,
        "per_layer_slp": per_layer_slp or None,
        "per_k_integration_valid": best.per_k_valid,
        "neurons_kept_per_layer": _kept_per_layer(best, data.n_layers),
        "neurons_kept_per_layer_by_rep": _kept_per_layer_by_rep(head, data.n_layers),
        "neurons_kept_embeddings": int(np.sum(head.layer == 0)),  # layer 0: not a block
        "candidates": _best_per_combo(choices),
        "per_class": {
            name: per_class(labels[name], pred, data.n_classes, names)
            for name, (_, pred) in outputs.items()
        },
        "kept_activations": kept_activations(
            head, outputs[shown][0], labels[shown], names, split=shown
        ),
        "solves": _solves(data, choices),
        "options": dataclasses.asdict(data.opts),
        "times": times,
    }


def _label_names(data: FitData) -> list[str]:
    names = data.train.label_names
    return list(names) if names else [str(i) for i in range(data.n_classes)]


def _outputs(head: SpinHead, src) -> tuple[np.ndarray, np.ndarray]:
    """The head's standardised features [N, M] of a split and its predictions [N]."""
    X = head.padded_features(src)
    return np.asarray(X)[:, : len(head.rep)], np.argmax(head.padded_proba(X), axis=-1)


def per_class(y, pred, n_classes: int, names) -> dict:
    """Precision, recall, F1 and support per class, and the confusion matrix (rows: the
    true class, columns: the predicted one)."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    confusion = np.bincount(y * n_classes + pred, minlength=n_classes**2)
    confusion = confusion.reshape(n_classes, n_classes)
    tp = np.diag(confusion).astype(np.float64)
    precision = tp / np.maximum(confusion.sum(0), 1)
    recall = tp / np.maximum(confusion.sum(1), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return {
        "labels": list(names),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": confusion.sum(1).tolist(),
        "confusion": confusion.tolist(),
    }


def kept_activations(head: SpinHead, X: np.ndarray, y, names, *, split: str) -> dict:
    """Per layer and class: quantiles (QUANTILES) and mean of the kept neurons'
    standardised activations, over the split's texts of that class and the layer's kept
    neurons. With two classes each neuron is signed by its weight, so a value above 0
    pushes toward the second class (`aligned_to`); with more, the values are as read."""
    y = np.asarray(y)
    binary = head.weights.shape[1] == 1
    signs = np.sign(head.weights[:, 0]) if binary else np.ones(len(head.rep))
    layers = []
    for j in np.unique(head.layer):
        cols = np.nonzero(head.layer == j)[0]
        values = X[:, cols] * signs[cols]
        by_class = {}
        for c, name in enumerate(names):
            v = values[y == c].ravel()
            by_class[name] = {
                "n": int(len(v)),
                "quantiles": np.quantile(v, QUANTILES).tolist() if len(v) else None,
                "mean": float(v.mean()) if len(v) else None,
            }
        layers.append({"layer": int(j), "n_neurons": int(len(cols)), "by_class": by_class})
    return {
        "split": split,
        "quantiles": list(QUANTILES),
        "aligned_to": names[-1] if binary else None,
        "layers": layers,
    }


def _solves(data: FitData, choices: list[Choice]) -> dict:
    """The sizes of the probe and integration solves (run_record.training_flops)."""
    opts = data.opts
    combos = {}
    for c in choices:
        combos.setdefault((c.rep, c.pooling), len(c.cand))
    return {
        "n_train": int(data.train.n_rows),
        "n_valid": int(data.valid.n_rows),
        "outputs": probes.n_columns(data.n_classes),
        "n_layers": data.n_layers,
        "n_lams": len(probes.PAPER_C_GRID) if opts.lam_grid == "paper" else opts.n_lams,
        "max_iter": opts.max_iter,
        "weak_max_iter": opts.weak_max_iter,
        "n_etas": len(opts.etas),
        "widths": {rep: int(data.train.shape(rep)[-1]) for rep in REPS},
        "probe_poolings": sorted({p for _, ps in pool_sets(opts) for p in ps}),
        "probe_representations": sorted({r for _, rs in rep_sets(opts) for r in rs}),
        "integration": [
            {"representation": r, "pooling": p, "columns": n} for (r, p), n in combos.items()
        ],
    }


def _best_per_combo(choices: list[Choice]) -> list[dict]:
    best = {}
    for c in choices:
        key = (c.rep, c.pooling)
        if key not in best or c.key() < best[key].key():
            best[key] = c
    return [
        {
            "representation": c.rep,
            "pooling": c.pooling,
            "eta": c.eta,
            "num_layers": c.layers_used,
            "n_neurons": c.n_neurons,
            "valid": c.valid,
        }
        for c in best.values()
    ]


def _kept_per_layer(best: Choice, L: int) -> list[int]:
    layers = best.cand.layer[best.used]
    return [int(np.sum(layers == j)) for j in range(1, L + 1)]


def _kept_per_layer_by_rep(head: SpinHead, L: int) -> dict[str, list[int]]:
    return {
        rep: [int(np.sum((head.rep == r) & (head.layer == j))) for j in range(1, L + 1)]
        for r, rep in enumerate(REPS)
    }
