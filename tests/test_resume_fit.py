"""A crashed fit resumes after its last finished probe group, and only for the same run."""

from __future__ import annotations

import numpy as np
import pytest

from spin_jax import learner
from spin_jax.learner import SpinOptions, fit_spin
from tests.test_multidevice import OPTIONS, planted


def test_probe_groups_are_checkpointed_and_reused(tmp_path, monkeypatch):
    train, valid = planted(300, 0), planted(150, 1)
    head, report = fit_spin(train, valid, None, SpinOptions(**OPTIONS), checkpoint_dir=tmp_path)
    saved = sorted(p.name for p in tmp_path.glob("probes-*.npz"))
    assert saved == [
        f"probes-{r}-{p}.npz" for r in ("ffn", "hidden") for p in ("max", "mean", "token")
    ]

    def crash(*args, **kwargs):
        raise RuntimeError("probes were recomputed")

    monkeypatch.setattr(learner, "fit_probe_table", crash)
    again, report2 = fit_spin(train, valid, None, SpinOptions(**OPTIONS), checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(again.weights, head.weights)
    np.testing.assert_array_equal(again.neuron, head.neuron)
    assert report2["per_layer_probes"] == report["per_layer_probes"]
    with pytest.raises(RuntimeError, match="recomputed"):  # other options: no reuse
        fit_spin(
            train, valid, None, SpinOptions(**{**OPTIONS, "n_lams": 2}), checkpoint_dir=tmp_path
        )
    with pytest.raises(RuntimeError, match="recomputed"):  # other data: no reuse
        fit_spin(planted(300, 5), valid, None, SpinOptions(**OPTIONS), checkpoint_dir=tmp_path)
