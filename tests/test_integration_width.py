"""Integration with one padded width for every group (what accelerators use, so each
program compiles once) chooses as integration with each group's own width (CPU's)."""

from __future__ import annotations

import numpy as np

from spin_jax import integration, learner
from spin_jax.learner import SpinOptions, fit_spin
from tests.test_learner import FAST, planted, splits


def test_one_shared_width_fits_like_a_width_per_group(monkeypatch):
    train, valid, test = splits(planted, ("neg", "pos"))
    head, report = fit_spin(train, valid, test, SpinOptions(**FAST))
    seen = []

    def shared(ws, n_rows):
        seen.append(ws)
        return 2 * integration.padded_width(max(ws))  # wider than any group's own

    monkeypatch.setattr(learner, "shared_width", shared)
    head_s, report_s = fit_spin(train, valid, test, SpinOptions(**FAST))
    assert len(seen) == 1 and len(seen[0]) == 12  # one width for the 12 groups
    # The same problems: on a GPU the products' rounding order differs with the width, so
    # scores may move by a validation row or two and a near tie may pick another candidate.
    rows = 2 / valid.n_rows + 1e-9
    assert abs(report_s["chosen"]["valid"] - report["chosen"]["valid"]) <= rows
    for a, b in zip(report["grid"], report_s["grid"], strict=True):
        assert (a["k"], a["eta"], a["lam"]) == (b["k"], b["eta"], b["lam"])
        assert abs(a["valid"] - b["valid"]) <= rows
        assert abs(a["n_neurons"] - b["n_neurons"]) <= 2
    if report_s["chosen"] == report["chosen"]:
        np.testing.assert_array_equal(head.neuron, head_s.neuron)
        np.testing.assert_allclose(head.weights, head_s.weights, atol=1e-3)
    assert integration.shared_width([100, 3000], 600) == 4096  # small: one width
    assert integration.shared_width([100, 3000], 50000) is None  # large: each its own
