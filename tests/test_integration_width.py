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
    monkeypatch.setattr(
        integration, "prefix_widths", lambda *a: widths.append(real(*a)) or real(*a)
    )
    # One wide group (every layer's hidden and FFN columns at every pooling), so that the
    # masks of shallow k fit in fewer columns than the deep ones.
    opts = SpinOptions(**{**FAST, "etas": (0.1, 0.5, 0.99)}, representations=("both",),
                       poolings=("all",))  # fmt: skip
    by_width = fit_spin(train, valid, test, opts)
    assert len({int(w) for ws in widths for w in ws}) > 1  # some masks did use a prefix
    # The reference: the same layer-sorted columns (so the same Lipschitz constants from
    # the power iteration), every mask at full width.
    monkeypatch.setattr(integration, "prefix_widths", lambda ext, cap: np.full(len(ext), cap))
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
    # None (accelerators): the widest group's own width, whatever its size.
    monkeypatch.setattr(integration, "SHARED_ELEMENTS_BY_WIDTH", {jax.default_backend(): None})
    assert integration.shared_width([100, 30000], 200000) == 30720  # a multiple of WIDTH_STEP
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


def test_groups_at_the_widest_groups_width_share_their_programs(monkeypatch):
    """As an accelerator integrates a large fit: lanes on prefix widths, and every group at
    the widest group's own width (`SHARED_ELEMENTS_BY_WIDTH` None), its lanes' prefixes at
    most its own width. The lane programs then compile once for all 12 groups, not once a
    group (GPT2-XL's own widths compiled 177 programs in 67 s of a 240 s fit on an H200),
    and the fit is the fit at each group's own width."""
    from collections import Counter

    from tests.test_compiles import compiled_names, features

    backend = jax.default_backend()
    # Groups of 88-736 candidates: several prefix widths (128, 256, 512) below their own.
    train, valid = features(600, 4, 0, D=64, F=128), features(300, 4, 1, D=64, F=128)
    opts = SpinOptions(n_lams=3, etas=(0.1, 0.5, 0.9))
    monkeypatch.setitem(integration.BY_WIDTH, backend, 0)
    monkeypatch.setitem(integration.NARROW, backend, False)
    monkeypatch.setattr(integration, "WIDTH_STEP", 8)  # own widths: no powers of two
    widths, real = [], integration.prefix_widths

    def spy(extents, cap):
        widths.append(cap)
        return real(extents, cap)

    monkeypatch.setattr(integration, "prefix_widths", spy)
    runs, programs = {}, {}
    for name, limit in (("own", 0), ("shared", None)):
        monkeypatch.setitem(integration.SHARED_ELEMENTS_BY_WIDTH, backend, limit)
        jax.clear_caches()
        widths.clear()
        names = compiled_names(
            lambda n=name: runs.__setitem__(n, fit_spin(train, valid, opts=opts))
        )
        programs[name] = Counter(names)
        assert len(widths) == 12
    assert len(set(widths)) > 1  # groups of several own widths
    for per_group in ("jit(_masks_setup)", "jit(_lanes_start)", "jit(_lanes_result)",
                      "jit(_score_masks)"):  # fmt: skip
        assert programs["own"][per_group] > 1 and programs["shared"][per_group] == 1, per_group
    steps = {name: p["jit(_lanes_step)"] for name, p in programs.items()}
    assert steps["shared"] < steps["own"], steps  # measured: 19 against 29
    total = {name: sum(p.values()) for name, p in programs.items()}
    assert total["shared"] < total["own"] / 2, total  # measured: 31 against 81
    assert_same_fit(valid, runs["own"], runs["shared"])
