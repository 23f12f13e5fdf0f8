"""Integration on an accelerator from host features gathers every group's columns once, on
the device (integration.union_columns), and takes each group's matrix from them there: the
same matrices as `gather` from the source, so the same fit. Forced here on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from spin_jax import columns, integration
from spin_jax.columns import Columns, gather, union_of
from spin_jax.learner import SpinOptions, fit_spin
from tests.test_learner import FAST, planted, splits
from tests.test_streaming import write_store


def some_columns(src, n, seed) -> Columns:
    rng = np.random.default_rng(seed)
    rep = rng.integers(0, 2, n)
    n_layers = np.where(rep == 0, src.shape("hidden")[1] - 1, src.shape("ffn")[1])
    layer = rng.integers(0, n_layers + 1) + rep  # hidden 0..L, ffn 1..L
    layer = np.minimum(layer, n_layers)
    width = np.where(rep == 0, src.shape("hidden")[3], src.shape("ffn")[3])
    neuron = rng.integers(0, width)
    pool = rng.integers(0, 3, n)
    return Columns(rep, pool, layer, neuron, np.zeros(n, np.int64))


def stats_of(cols: Columns):
    """A mean and std per column that depend on the column alone."""
    key = columns.column_keys(cols).astype(np.float64)
    return (np.sin(key) * 0.1).astype(np.float32), (1.0 + np.cos(key) ** 2).astype(np.float32)


@pytest.mark.parametrize("kind", ["memory", "store"])
def test_a_group_taken_from_the_union_is_its_gather(kind, tmp_path):
    train = splits(planted, ("neg", "pos"))[0]
    src = train if kind == "memory" else write_store(tmp_path / "s", train, chunk_rows=128)
    a, b = some_columns(src, 40, 0), some_columns(src, 70, 1)
    union = union_of([a, b])
    assert len(union) == len(np.unique(columns.column_keys(union)))
    row_bytes = sum(int(np.prod(src.shape(r)[1:])) * 4 for r in columns.REPS)  # float32
    # chunks of 128 rows: five, the last one of 88
    reads = []
    real_read = src.read
    src.read = lambda *a, **k: reads.append(k["rows"]) or real_read(*a, **k)
    got = columns.union_columns(src, union, *stats_of(union), np.float32, 128 * row_bytes)
    if kind == "store":  # two arrays a chunk, after the one row that finds their dtypes
        assert [len(r) for r in reads[2:]] == [128] * 8 + [88] * 2
    del src.read
    for cols in (a, b):
        want = gather(src, cols, *stats_of(cols))
        taken = np.asarray(got.take(cols, 128))
        np.testing.assert_array_equal(taken[:, : len(cols)], want)
        assert not taken[:, len(cols) :].any()  # the padding is 0
    stranger = some_columns(src, 5, 2)
    with pytest.raises(ValueError, match="not among the union"):
        got.take(stranger, 128)


def test_a_fit_through_the_union_is_the_fit_from_the_source(monkeypatch):
    train, valid, test = splits(planted, ("neg", "pos"))
    opts = SpinOptions(**FAST)
    want = fit_spin(train, valid, test, opts)
    built = []
    real = integration.columns_union
    monkeypatch.setattr(integration, "columns_union", lambda *a: built.append(a) or real(*a))
    monkeypatch.setattr(integration, "UNION_ON_DEVICE", {})  # as on an accelerator
    got = fit_spin(train, valid, test, opts)
    assert len(built) == 2  # train and valid, once each for all 12 groups
    (head, report), (head_w, report_w) = got, want
    assert report["chosen"] == report_w["chosen"]
    for field in ("rep", "pool", "layer", "neuron", "mean", "std", "weights", "intercept"):
        np.testing.assert_array_equal(getattr(head, field), getattr(head_w, field))
    assert [r["valid"] for r in report["grid"]] == [r["valid"] for r in report_w["grid"]]


def test_a_take_in_another_order_is_the_take_permuted():
    train = splits(planted, ("neg", "pos"))[0]
    cols = some_columns(train, 50, 3)
    union = columns.union_columns(train, union_of([cols]), *stats_of(union_of([cols])),
                                  np.float32, 1 << 20)  # fmt: skip
    order = np.random.default_rng(0).permutation(64)
    plain = np.asarray(union.take(cols, 64))
    np.testing.assert_array_equal(np.asarray(union.take(cols, 64, order)), plain[:, order])


def test_the_union_is_padded_to_a_multiple_of_1024_not_a_power_of_two():
    assert [columns.union_width(n) for n in (1, 129, 1024, 1025, 300_000)] == [
        128, 256, 1024, 2048, 300_032,
    ]  # fmt: skip


def test_groups_of_their_own_widths_fit_alike_through_the_union(monkeypatch):
    """Prefix widths (forced), each group its own width, a multiple of WIDTH_STEP (forced
    small, so the widths are no powers of two): taken from the union in the solver's
    column order, the fit is the one that reads each group from the source."""
    import jax

    from spin_jax import learner

    train, valid, test = splits(planted, ("neg", "pos"))
    monkeypatch.setattr(integration, "BY_WIDTH", {jax.default_backend(): 0})
    monkeypatch.setattr(learner, "shared_width", lambda ws, n: None)
    monkeypatch.setattr(integration, "WIDTH_STEP", 24)
    widths = []
    real = integration.own_width
    monkeypatch.setattr(learner, "own_width", lambda n, r: widths.append(real(n, r)) or widths[-1])
    opts = SpinOptions(**FAST)
    want = fit_spin(train, valid, test, opts)
    assert any(w & (w - 1) for w in widths)  # some width is not a power of two
    monkeypatch.setattr(integration, "UNION_ON_DEVICE", {})  # as on an accelerator
    got = fit_spin(train, valid, test, opts)
    assert got[1]["chosen"] == want[1]["chosen"]
    assert [r["valid"] for r in got[1]["grid"]] == [r["valid"] for r in want[1]["grid"]]
    np.testing.assert_array_equal(got[0].weights, want[0].weights)


def test_a_union_that_leaves_no_room_for_the_widest_group_is_not_built(monkeypatch, caplog):
    """The union alone would fit; with the widest group's arrays it would not: each group
    reads the source instead, and says so."""
    train, valid, test = splits(planted, ("neg", "pos"))
    monkeypatch.setattr(integration, "UNION_ON_DEVICE", {})
    sizes = {}
    real_union = integration.union_columns

    def measured(data, tables, cands, widths):
        cols = union_of([c for c in cands if len(c)])
        sizes["union"] = integration._matrix_bytes(data, columns.union_width(len(cols)))
        sizes["group"] = max(integration._group_bytes(data, w) for w in widths)
        return real_union(data, tables, cands, widths)

    monkeypatch.setattr(integration, "union_columns", measured)
    built = []
    real = integration.columns_union
    monkeypatch.setattr(integration, "columns_union", lambda *a: built.append(a) or real(*a))
    fit_spin(train, valid, test, SpinOptions(**FAST))
    assert len(built) == 2 and sizes["group"] > sizes["union"]
    free = (sizes["union"] + sizes["group"] / 2) / 0.8  # room for the union, not the group
    monkeypatch.setattr(integration, "free_device_bytes", lambda: free)
    built.clear()
    with caplog.at_level("WARNING", logger="spin_jax"):
        fit_spin(train, valid, test, SpinOptions(**FAST))
    assert not built
    assert "do not fit in free device memory" in caplog.text
