"""Integration's weak lams (C = 1 / (lam N) > 1) capped apart (`SpinOptions.weak_max_iter`):
each lane stops at its lam's cap, on one device (lanes) and several (the vmapped path), with
the solutions of the lanes run alone at that cap."""

from __future__ import annotations

import numpy as np
import pytest

from spin_jax import integration, lanes
from spin_jax.learner import SpinOptions


def problem(n=120, f=16, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, f)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.standard_normal(n) > 0).astype(np.int32)
    masks = np.ones((2, f), np.float32)
    masks[1, f // 2 :] = 0
    return X, y, masks


def test_lam_caps_picks_the_weak_lams():
    opts = SpinOptions(max_iter=300, weak_max_iter=40)
    N = 1000
    lams = np.array([1e-2, 1e-3, 1e-4, 1e-5])  # C = 0.1, 1, 10, 100
    assert integration.lam_caps(opts, lams, N).tolist() == [300, 300, 40, 40]
    # lam 0 (an auto grid on all-zero columns), C infinite: weak, and no division by it
    assert integration.lam_caps(opts, np.zeros(2), N).tolist() == [40, 40]
    assert integration.lam_caps(SpinOptions(), lams, N).tolist() == [300, 300, 100, 100]
    plain = SpinOptions(max_iter=300, weak_max_iter=None)
    assert integration.lam_caps(plain, lams, N).tolist() == [300] * 4


@pytest.mark.parametrize("sharded", [False, True])
def test_each_lane_stops_at_its_lams_cap(sharded):
    X, y, masks = problem()
    lams = np.array([1e-2, 1e-4], np.float32)
    caps = np.array([25, 7])

    def fit(max_iter):
        if sharded:  # the several-device path, here on one
            kw = dict(max_iter=tuple(np.broadcast_to(max_iter, 2).tolist()), tol=0.0, smooth=None)
            return integration._fit_masks_sharded(X, y, 2, lams, masks, **kw)
        return lanes.fit_masks(X, y, 2, lams, masks, max_iter=max_iter, tol=0.0)

    both = fit(caps)
    assert np.asarray(both.n_iter).tolist() == [[25, 7], [25, 7]]  # tol 0: every lane to its cap
    for r, cap in enumerate(caps):
        alone = fit(int(cap))
        for got, want in [(both.weights, alone.weights), (both.intercept, alone.intercept)]:
            np.testing.assert_allclose(got[:, r], want[:, r], rtol=1e-6, atol=1e-7)


def test_a_cap_below_one_is_refused():
    X, y, masks = problem()
    with pytest.raises(ValueError, match="max_iter must be positive"):
        lanes.fit_masks(X, y, 2, np.array([1e-2, 1e-3]), masks, max_iter=np.array([5, 0]))


def test_a_weak_cap_that_is_not_a_count_is_one_line():
    from spin_jax.errors import SpinError

    with pytest.raises(SpinError, match="weak_max_iter=0"):
        SpinOptions(weak_max_iter=0)
