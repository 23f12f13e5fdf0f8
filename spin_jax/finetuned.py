"""A fine-tuned checkpoint's own classification head, scored as a baseline beside SPIN."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

from spin_jax.errors import ArtifactError
from spin_jax.model import Model, head_logits
from spin_jax.options import score

log = logging.getLogger("spin_jax")


def head_label_order(model: Model, names: tuple[str, ...] | None) -> tuple[np.ndarray, str]:
    """For each training class, the fine-tuned head's output that means it, and how matched.

    The checkpoint's id2label names are matched to the data's label names (case and spaces
    ignored). HF's default names LABEL_0.. say nothing, so then output j is class j, as
    HF's own training would have numbered sorted labels. Names that do not match are an
    ArtifactError naming both sides.
    """
    id2label = model.hf_config.get("id2label") or {}
    heads = {int(j): str(n) for j, n in id2label.items()}
    n_out = len(heads)
    if names is None or not heads:
        return np.arange(len(names or [])), "by position"
    if all(heads[j] == f"LABEL_{j}" for j in heads):
        if n_out != len(names):
            raise ArtifactError(
                f"the checkpoint's head has {n_out} outputs, the data {len(names)} classes."
            )
        return np.arange(n_out), "by position (the checkpoint's labels are LABEL_0..)"
    key = {n.strip().lower(): j for j, n in heads.items()}
    missing = [n for n in names if n.strip().lower() not in key]
    if missing:
        raise ArtifactError(
            f"the checkpoint's labels {sorted(heads.values())} do not name the data's "
            f"classes {missing}; rename the labels to match, or fix id2label in config.json."
        )
    return np.array([key[n.strip().lower()] for n in names]), "by name (id2label)"


def head_baseline(model: Model, names: tuple[str, ...] | None):
    """The fine-tuned checkpoint's own classification head, scored like the others, its
    outputs put in the data's class order (head_label_order); None with a warning if the
    checkpoint's labels cannot be matched to the data's."""
    try:
        order, how = head_label_order(model, names)
    except ArtifactError as e:
        log.warning("the fine-tuned head is not scored as a baseline: %s", e)
        return None

    def run(valid, test, yv, yt, n_classes, metric):
        out = {"label_match": how}
        for name, src, y in (("valid", valid, yv), ("test", test, yt)):
            if src is None:
                out[name] = None
                continue
            L = src.shape("hidden")[1] - 1
            x = src.read("hidden", layers=[L], poolings=[0])[:, 0, 0]
            logits = np.asarray(head_logits(model, jnp.asarray(x)))[:, order]
            pred = np.argmax(logits, axis=-1)
            out[name] = float(score(metric, y, jnp.asarray(pred), n_classes))
        return out

    return run
