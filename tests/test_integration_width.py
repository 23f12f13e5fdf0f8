"""Integration with one padded width for every group (what accelerators use, so each
program compiles once) chooses as integration with each group's own width; and stepping
each mask on only the prefix of layer-sorted columns it uses (CPU's) as at full width."""

from __future__ import annotations

import jax
import numpy as np

from spin_jax import integration, learner
from spin_jax.learner import SpinOptions, fit_spin
from tests.test_learner import FAST, planted, splits


def test_one_shared_width_fits_like_a_width_per_group(monkeypatch):
    monkeypatch.setattr(integration, "BY_WIDTH", {})  # every lane at the padded width
    train, valid, test = splits(planted, ("neg", "pos"))
    head, report = fit_spin(train, valid, test, SpinOptions(**FAST))
    seen = []

    def shared(ws, n_rows):
        seen.append(ws)
        return 2 * integration.padded_width(max(ws))  # wider than any group's own

    monkeypatch.setattr(learner, "shared_width", shared)
    head_s, report_s = fit_spin(train, valid, test, SpinOptions(**FAST))
    assert len(seen) == 1 and len(seen[0]) == 12  # one width for the 12 groups
    assert_same_fit(valid, (head, report), (head_s, report_s))


def test_prefix_widths_fit_like_the_full_width(monkeypatch):
    train, valid, test = splits(planted, ("neg", "pos"))
    monkeypatch.setattr(integration, "BY_WIDTH", {jax.default_backend(): 0})
    widths = []
    real = integration.prefix_widths
    monkeypatch.setattr(integration, "prefix_widths", lambda m: widths.append(real(m)) or real(m))
    # One wide group (every layer's hidden and FFN columns at every pooling), so that the
    # masks of shallow k fit in fewer columns than the deep ones.
    opts = SpinOptions(**{**FAST, "etas": (0.1, 0.5, 0.99)}, representations=("both",),
                       poolings=("all",))  # fmt: skip
    by_width = fit_spin(train, valid, test, opts)
    assert len({int(w) for ws in widths for w in ws}) > 1  # some masks did use a prefix
    # The reference: the same layer-sorted columns (so the same Lipschitz constants from
    # the power iteration), every mask at full width.
    monkeypatch.setattr(integration, "prefix_widths", lambda m: np.full(len(m), m.shape[1]))
    full = fit_spin(train, valid, test, opts)
    assert full[1]["chosen"] == by_width[1]["chosen"]
    assert_same_fit(valid, full, by_width, atol=1e-5)
    # And against the way accelerators integrate (columns in the candidates' order, all at
    # the padded width): the weights come back in the candidates' order.
    monkeypatch.setattr(integration, "BY_WIDTH", {})
    unsorted = fit_spin(train, valid, test, opts)
    assert unsorted[1]["chosen"] == by_width[1]["chosen"]
    assert_same_fit(valid, unsorted, by_width, atol=1e-5)


def assert_same_fit(valid, first, second, atol=1e-3):
    (head, report), (head_s, report_s) = first, second
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
        np.testing.assert_allclose(head.weights, head_s.weights, atol=atol)


def test_shared_width(monkeypatch):
    monkeypatch.setattr(integration, "BY_WIDTH", {})  # every lane steps the whole width
    assert integration.shared_width([100, 3000], 600) == 4096  # small: one width
    assert integration.shared_width([100, 3000], 50000) is None  # large: each its own
    # Lanes that step only their prefixes pay the padding in memory alone: shared up to
    # SHARED_ELEMENTS_BY_WIDTH.
    monkeypatch.setattr(integration, "BY_WIDTH", {jax.default_backend(): 1 << 20})
    monkeypatch.setattr(integration, "SHARED_ELEMENTS_BY_WIDTH", {jax.default_backend(): 1 << 31})
    assert integration.shared_width([100, 30000], 20000) == 32768
    assert integration.shared_width([100, 30000], 200000) is None  # past memory
    assert integration.shared_width([100, 200], 600) == 256  # below BY_WIDTH: as before


def test_by_width_from_the_products_size(monkeypatch):
    monkeypatch.setattr(integration, "BY_WIDTH", {jax.default_backend(): 1 << 28})
    assert not integration.by_width(1, 13600, 4096)  # MiniLM's fit on an H200
    assert integration.by_width(1, 20000, 65536)  # GPT2-XL's
    assert not integration.by_width(2, 20000, 65536)  # several devices: sharded problems
    monkeypatch.setattr(integration, "BY_WIDTH", {})
    assert not integration.by_width(1, 20000, 65536)


def test_accelerators_step_more_lanes_together(monkeypatch):
    """A GPU/TPU holds 4x the CPU's per-lane work a batch: at GPT2-XL's widest group (10000
    x 262144) the CPU's bound held 126 lanes, where an H200's step is still bound by reading
    X (lane_rate.py); the CPU keeps its own."""
    monkeypatch.setattr(integration.jax, "default_backend", lambda: "cpu")
    assert integration.lane_batch_elements() == integration.LANE_BATCH_ELEMENTS
    cpu = integration._lane_batches((10000, 262144), 490, 5, 2)[0]
    monkeypatch.setattr(integration.jax, "default_backend", lambda: "gpu")
    assert integration.lane_batch_elements() == integration.LANE_BATCH_ELEMENTS_ACCELERATOR
    gpu = integration._lane_batches((10000, 262144), 490, 5, 2)[0]
    assert (cpu, gpu) == (126, 504)


def test_own_widths_on_prefix_copies_fit_like_the_in_program_prefixes(monkeypatch):
    """Groups each at its own width (widths that are no powers of two), prefixes stepped
    on copies (lanes' narrow path, forced) or inside programs of the group's width: the same
    fit. (Against one shared width it is not the same problem on a GPU: the power iteration
    starts from a vector of the group's width, so the Lipschitz constants, and the lanes that
    stop at their cap, differ in the last bits.)"""
    train, valid, test = splits(planted, ("neg", "pos"))
    monkeypatch.setattr(integration, "BY_WIDTH", {jax.default_backend(): 0})
    monkeypatch.setattr(learner, "shared_width", lambda ws, n: None)
    monkeypatch.setattr(integration, "WIDTH_STEP", 8)
    runs = {}
    real = integration.lanes.fit_masks
    for narrow in (False, True):
        monkeypatch.setattr(integration, "NARROW", {jax.default_backend(): narrow})
        seen = []

        def spy(*a, seen=seen, **k):
            seen.append(k["narrow"])
            return real(*a, **k)

        monkeypatch.setattr(integration.lanes, "fit_masks", spy)
        runs[narrow] = fit_spin(train, valid, test, SpinOptions(**FAST))
        assert seen and set(seen) == {narrow}
    assert_same_fit(valid, runs[False], runs[True], atol=1e-5)
