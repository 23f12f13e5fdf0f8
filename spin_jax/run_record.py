"""What a run folder records beyond the learner's report (report.py): the data it read and
how, the versions, the model's size, the trainable parameters and estimated training FLOPs
of SPIN against fine-tuning the model (the paper's Tables 5 and 6), and the measured
inference time per text at each depth (Table 7).

FLOPs follow the usual counts (Kaplan et al. 2020): a forward pass costs 2 N FLOPs per token
for a model of N parameters, a training step 6 N (forward and backward); a solver iteration
of an L1 logistic regression on n rows, d features and K outputs costs 4 n d K (the product
X W and the gradient X^T R), times the iterations the solves took (report.json's
`solves`; a report of an older fit counts every solve at max_iter, an upper bound).
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from spin_jax._version import __version__
from spin_jax.head import SpinHead
from spin_jax.text import encode

log = logging.getLogger("spin_jax")
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "transformers", "tokenizers", "matplotlib")
FINE_TUNING_EPOCHS = 3  # the fine-tuning estimate's epochs (the paper's baselines fine-tune 3)
TIMING_TEXTS = 64  # texts per inference timing


def versions() -> dict:
    """spin_jax's version, its main dependencies', Python's, and the accelerator's."""
    import jax

    out = {"spin_jax": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    device = jax.devices()[0]
    out["device"] = f"{device.platform}: {getattr(device, 'device_kind', '')}".strip()
    out["n_devices"] = jax.device_count()
    return out


def model_size(model) -> dict:
    """The frozen model's parameters, blocks and widths."""
    import jax

    c = model.config
    return {
        "source": model.source,
        "model_type": c.model_type,
        "parameters": int(sum(np.prod(x.shape) for x in jax.tree.leaves(model.params))),
        "layers": int(c.num_layers),
        "hidden": int(c.hidden_size),
        "ffn": int(c.ffn_size),
    }


def n_tokens(source, model, max_length: int) -> int | None:
    """Tokens a split's forward reads: of its texts (tokenised as extraction does), or as
    counted in a feature store's summary.json; None when neither is known."""
    texts = getattr(source, "texts", None)
    if texts is not None:
        ids, _ = encode(model.tokenizer, texts, max_length)
        return int(sum(len(i) for i in ids))
    summary = Path(getattr(source, "path", "")) / "summary.json"
    if summary.is_file():
        return int(json.loads(summary.read_text()).get("tokens", 0)) or None
    return None


def trainable_parameters(report: dict, size: dict) -> dict:
    """Table 5: what fine-tuning trains against what SPIN fits."""
    s, K = report["solves"], report["solves"]["outputs"]
    probes = sum(
        s["n_layers"] * len(s["probe_poolings"]) * (s["widths"][rep] + 1) * K
        for rep in s["probe_representations"]
    )
    return {
        "fine_tuning": size["parameters"] + (size["hidden"] + 1) * K,
        "spin_head": (report["spin"]["n_neurons"] + 1) * K,
        "spin_probes": probes,
    }


def training_flops(report: dict, size: dict, tokens: dict) -> dict:
    """Table 6: estimated training FLOPs (module docstring), by stage, and fine-tuning's."""
    s, N = report["solves"], size["parameters"]
    K, R, L, it = s["outputs"], s["n_lams"], s["n_layers"], s["max_iter"]
    fit_tokens = (tokens.get("train") or 0) + (tokens.get("valid") or 0)
    per_step = 4 * s["n_train"] * K  # per feature, per iteration of one lam
    if "probe_iterations" in s:  # the iterations the solves took
        probes = sum(
            per_step * s["widths"][name.split("/")[0]] * n
            for name, n in s["probe_iterations"].items()
        )
        integration = sum(
            per_step * c["columns"] * c["iterations"] for c in s["integration_iterations"]
        )
    else:  # a report of an older fit: every solve at its iteration limit, an upper bound
        solve = per_step * R * it
        probes = sum(
            solve * L * len(s["probe_poolings"]) * s["widths"][rep]
            for rep in s["probe_representations"]
        )
        integration = sum(solve * s["n_etas"] * L * c["columns"] for c in s["integration"])
    return {
        "tokens": tokens,
        "spin": {
            "extraction": 2 * N * fit_tokens,
            "probes": probes,
            "integration": integration,
            "total": 2 * N * fit_tokens + probes + integration,
        },
        "fine_tuning": {
            "epochs": FINE_TUNING_EPOCHS,
            "total": 6 * N * (tokens.get("train") or 0) * FINE_TUNING_EPOCHS,
        },
        "exact_tokens": all(tokens.get(k) is not None for k in ("train", "valid")),
        "measured_iterations": "probe_iterations" in s,
    }


def efficiency(report: dict, model, tokens: dict) -> dict:
    size = model_size(model)
    return {
        "model": size,
        "parameters": trainable_parameters(report, size),
        "flops": training_flops(report, size, tokens),
    }


def fit_record(clf, *, data: dict, splits: dict, seconds: float) -> dict:
    """What `spin-jax fit` adds to report.json before saving: the data (`data`: sources,
    columns, split), options, versions, efficiency, inference times, extraction time.

    `splits` maps "train"/"valid"/"test" to a TextDataset or a feature store (or None);
    `seconds` is the whole fit's wall time, of which extraction is what the probes and the
    integration (report["times"]) did not take.
    """
    tokens = {
        k: None if v is None else n_tokens(v, clf.model, clf.max_length) for k, v in splits.items()
    }
    times = dict(clf.report.get("times", {}))
    times["extraction_s"] = max(seconds - sum(times.values()), 0.0)
    with_texts = [splits.get(k) for k in ("test", "valid", "train")]
    timed = next((v for v in with_texts if getattr(v, "texts", None)), None)
    return {
        "run": {
            "data": data,
            "feature_dtype": clf.feature_dtype,
            "max_length": clf.max_length,
            "valid_fraction": clf.valid_fraction,
            "seed": clf.seed,
            "versions": versions(),
        },
        "times": times,
        "efficiency": efficiency(clf.report, clf.model, tokens),
        "inference": None if timed is None else inference_times(clf, timed.texts),
    }


# ---- inference time per text -------------------------------------------------------------


def inference_times(clf, texts, *, n_texts: int = TIMING_TEXTS) -> dict:
    """Seconds per text of the classifier's own inference (k blocks, its kept neurons), of a
    head as wide at each depth of report["early_exit"], and of the last-layer baseline
    (every block, the whole last hidden state), each on the same texts after a run that
    compiles its programs."""
    sample = list(texts)[:n_texts]
    size, head = model_size(clf.model), clf.head
    D = size["hidden"]
    depths = {int(e["num_layers"]): int(e["n_neurons"]) for e in clf.report.get("early_exit", [])}
    logger = logging.getLogger("spin_jax")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the texts' truncation warning was given by the fit
    try:
        out = {
            "n_texts": len(sample),
            "device": versions()["device"],
            "spin": {"num_layers": head.num_layers, "seconds": _per_text(clf, head, sample)},
            "baseline": {
                "num_layers": size["layers"],
                "seconds": _per_text(clf, _wide_head(size["layers"], size["hidden"], D), sample),
            },
            "by_layers": {
                str(n): _per_text(clf, _wide_head(n, max(m, 1), D), sample)
                for n, m in sorted(depths.items())
                if n > 0
            },
        }
    finally:
        logger.setLevel(level)
    return out


def _wide_head(num_layers: int, n_neurons: int, width: int) -> SpinHead:
    """A head reading n_neurons hidden columns of block num_layers: the cost of a classifier
    of that depth and width (the weights are zero; only the time is read)."""
    m = n_neurons
    return SpinHead(
        rep=np.zeros(m, np.int64),
        pool=np.zeros(m, np.int64),
        layer=np.full(m, num_layers, np.int64),
        neuron=np.arange(m, dtype=np.int64) % width,
        mean=np.zeros(m, np.float32),
        std=np.ones(m, np.float32),
        weights=np.zeros((m, 1), np.float32),
        intercept=np.zeros(1, np.float32),
        num_layers=num_layers,
    )


def _per_text(clf, head: SpinHead, texts) -> float | None:
    if not texts:
        return None
    timed = copy.copy(clf)
    timed.head = head
    timed.decision_function(texts)  # compiles
    start = time.perf_counter()
    timed.decision_function(texts)
    return (time.perf_counter() - start) / len(texts)
