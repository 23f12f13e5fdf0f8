"""The report of a fit (report.json): SPIN beside its baselines, per-layer probe scores,
per-k integration scores, the candidates, what was kept and how long each stage took."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from spin_jax.head import Choice, SpinHead
from spin_jax.models import POOLINGS
from spin_jax.options import FitData


def head_score(data: FitData, head: SpinHead, src, y) -> float:
    pred = np.argmax(head.proba(head.features(src)), axis=-1)
    return float(data.score(y, jnp.asarray(pred)))


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
    return {
        "metric": data.metric,
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
        "candidates": _best_per_combo(choices),
        "times": times,
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
