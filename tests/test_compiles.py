"""The number of programs a whole fit compiles is a small constant: it does not grow with
layers, rows, groups or the eta grid (issue #8). Compiles dominate a small fit's time (a
4-layer synthetic fit compiled 189 programs in 35 of its 43 s before this bound)."""

from __future__ import annotations

import logging
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

from spin_jax import integration
from spin_jax.features import DeviceFeatures, MemoryFeatures
from spin_jax.learner import SpinOptions, fit_spin

COMPILES = []
monitoring.register_event_duration_secs_listener(
    lambda event, duration, **_: (
        COMPILES.append(duration) if event == "/jax/core/compile/backend_compile_duration" else None
    )
)
BOUND = 40  # programs in one whole fit (measured: 32 at 4 layers, 34 at 8)
# On the device the features are read in jitted gathers and a few eager ops: 51 and 53.
# (The report scores every head it shows at a padded width: with a program per head size
# the "paper-first" default's early-exit heads, each of its own size, made 38-43 and 57-62.)
BOUND_DEVICE = 64
# Host features gathered once on the device for integration: a few more gathers and takes.
BOUND_UNION = 48


def features(n, L, seed, D=16, F=32):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, L + 1, 3, D)).astype(np.float32)
    ffn = rng.normal(size=(n, L, 3, F)).astype(np.float32)
    y = (ffn[:, 1, 1, 3] + hidden[:, 2, 0, 5] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    return MemoryFeatures({"hidden": hidden, "ffn": ffn}, y, ("a", "b"), {})


def on_device(src: MemoryFeatures) -> DeviceFeatures:
    arrays = {k: jax.device_put(v) for k, v in src.arrays.items()}
    return DeviceFeatures(arrays, src.labels, src.label_names, src.manifest)


def compiles_of_a_fit(n, L, etas, place=lambda src: src) -> int:
    jax.clear_caches()  # as a new process: nothing compiled yet
    COMPILES.clear()
    train, valid = place(features(n, L, 0)), place(features(n // 2, L, 1))
    fit_spin(train, valid, opts=SpinOptions(n_lams=3, etas=etas))
    return len(COMPILES)


# Features on the device (a GPU's default) are gathered there: before one program per
# group, that path compiled ~15 programs a group (186 in a MiniLM fit on an H200).
@pytest.mark.parametrize(
    "place, bound", [(lambda src: src, BOUND), (on_device, BOUND_DEVICE)], ids=["host", "device"]
)
def test_a_whole_fit_compiles_a_bounded_number_of_programs(place, bound):
    small = compiles_of_a_fit(300, 4, (0.1, 0.5, 0.8), place)
    large = compiles_of_a_fit(600, 8, (0.05, 0.1, 0.3, 0.5, 0.8), place)
    assert 0 < small <= bound and 0 < large <= bound, (small, large)
    assert large <= small + 3, (small, large)  # twice the layers and rows, more etas


@pytest.fixture(params=["as this backend", "union on the device"])
def union(request, monkeypatch):
    """Integration as this backend does it, and as an accelerator does from host features:
    every group's columns gathered once on the device (integration.union_columns)."""
    if request.param == "union on the device":
        monkeypatch.setattr(integration, "UNION_ON_DEVICE", {})
    return request.param


def test_host_features_compile_a_bounded_number_of_programs(union):
    small = compiles_of_a_fit(300, 4, (0.1, 0.5, 0.8))
    large = compiles_of_a_fit(600, 8, (0.05, 0.1, 0.3, 0.5, 0.8))
    assert 0 < small <= BOUND_UNION and 0 < large <= BOUND_UNION, (small, large)
    assert large <= small + 3, (small, large)


def compiled_names(fn) -> list[str]:
    """Names of the programs fn() compiles (jax_log_compiles' "Compiling NAME ..." lines)."""
    names = []

    class Names(logging.Handler):
        def emit(self, record):
            words = record.getMessage().split()
            if len(words) > 1 and words[0] == "Compiling":
                names.append(words[1])

    handler, logger = Names(), logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            fn()
    finally:
        logger.removeHandler(handler)
    return names


def test_a_fit_on_host_features_compiles_only_its_own_programs(union):
    """No eager op on device arrays: each compiles a program of its own (selection and the
    report compiled 17 of them, ~0.1 s each on a GPU, before lams, scores and report
    probabilities went through numpy or one jitted program)."""
    ours = {
        name
        for module in sys.modules.values()
        if getattr(module, "__name__", "").startswith("spin_jax")
        for name in vars(module)
    }
    names = compiled_names(lambda: compiles_of_a_fit(300, 4, (0.1, 0.5, 0.8)))
    assert names
    eager = [n for n in names if n.removeprefix("jit(").removesuffix(")") not in ours]
    assert not eager, eager


def test_prefix_width_steps_serve_groups_of_other_widths():
    """Integration's groups each have a width of their own (not a power of two where their
    lanes step prefixes: integration.own_width). The step programs of a prefix width hold
    only that prefix and its lanes' state, so a second group whose masks use the same prefix
    widths compiles none of them again (GPT2-XL's 12 groups compiled 177 programs in 67 s
    when each group's steps held its own width: benchmarks/RESULTS.md, session 20)."""
    from spin_jax import lanes

    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.integers(0, 2, 400))
    lams = jnp.asarray([1e-2, 1e-3])

    def group(width: int) -> list[str]:
        X = jnp.asarray(rng.normal(size=(400, width)), jnp.float32)
        used = np.array([[40], [100], [128], [60]])  # prefix widths 128 (padded_width) alone
        masks = jnp.asarray((np.arange(width) < used) * 1.0, jnp.float32)
        widths = np.full(4, 128)
        return compiled_names(
            lambda: lanes.fit_masks(X, y, 2, lams, masks, widths=widths, max_iter=50, tol=1e-4,
                                    narrow=True)
        )

    jax.clear_caches()
    first, second = group(200), group(232)
    assert "jit(_lanes_step)" in first
    shared = {"jit(_lanes_step)", "jit(_width_start)", "jit(_solved)"}
    assert not shared & set(second), second
