"""Programs compiled ahead (spin_jax/ahead.py): each guess of a stage's shapes matches the
call that follows, so that call compiles nothing, and nothing is compiled twice or for
nothing. Forced on here (it is off by default), with the accelerators' full-width
integration lanes, which are what it serves."""

from __future__ import annotations

import collections
import logging
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spin_jax import ahead, integration
from tests.test_compiles import compiles_of_a_fit, on_device

# The learner's programs a stage compiles ahead; the rest (gathers, selection) compile at
# their first call.
AHEAD = {
    "_solve_chunk", "_score_chunk", "_pick_best", "_masks_setup", "_lanes_start",
    "_lanes_step", "_lanes_result", "_score_masks",
}  # fmt: skip


def compiles_by_thread(fn) -> tuple[collections.Counter, collections.Counter]:
    """(programs compiled in this thread, in any other), by name, while fn() runs."""
    here, elsewhere = collections.Counter(), collections.Counter()
    me = threading.get_ident()

    class Names(logging.Handler):
        def emit(self, record):
            words = record.getMessage().split()
            if len(words) > 1 and words[0] == "Compiling":
                name = words[1].removeprefix("jit(").removesuffix(")")
                (here if record.thread == me else elsewhere)[name] += 1

    handler, logger = Names(), logging.getLogger("jax")
    logger.addHandler(handler)
    before = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)  # global: the workers' compiles too
    try:
        fn()
        ahead.forget()  # every compile started has finished
    finally:
        jax.config.update("jax_log_compiles", before)
        logger.removeHandler(handler)
    return here, elsewhere


@pytest.fixture
def full_width(monkeypatch):
    monkeypatch.setattr(integration, "BY_WIDTH", {})  # every lane at full width, as a GPU
    monkeypatch.setattr(integration, "LANE_SHRINK", {})  # the accelerators' shrink
    monkeypatch.setattr(integration, "NO_SHRINK_ELEMENTS", 0)  # so smaller batches occur


def fit_compiles(monkeypatch, on: bool, place):
    monkeypatch.setenv(ahead.ENV, "1" if on else "0")
    ahead.forget()
    return compiles_by_thread(lambda: compiles_of_a_fit(300, 4, (0.1, 0.5, 0.8), place))


@pytest.mark.parametrize("place", [lambda src: src, on_device], ids=["host", "device"])
def test_a_fit_compiles_its_learner_programs_ahead_and_once(monkeypatch, full_width, place):
    off_here, off_elsewhere = fit_compiles(monkeypatch, False, place)
    here, elsewhere = fit_compiles(monkeypatch, True, place)
    assert not off_elsewhere and AHEAD <= set(off_here), off_here
    assert not AHEAD & set(here), here  # every guess matched: the calls compiled nothing
    total, total_off = here + elsewhere, off_here
    assert {n: c for n, c in total.items() if n != "_lanes_step"} == {
        n: c for n, c in total_off.items() if n != "_lanes_step"
    }
    # Batch sizes the lanes might shrink to are compiled ahead whether reached or not.
    assert total["_lanes_step"] >= total_off["_lanes_step"] >= 2


def test_compiling_ahead_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv(ahead.ENV, raising=False)
    assert not ahead.enabled()
    monkeypatch.setenv(ahead.ENV, "0")
    assert not ahead.enabled() and ahead.submit(jax.jit(jnp.sin), 1.0) is None
    monkeypatch.setenv(ahead.ENV, "1")
    assert ahead.enabled()


def test_a_failed_guess_is_only_logged_and_the_call_still_raises(monkeypatch, caplog):
    monkeypatch.setenv(ahead.ENV, "1")

    @jax.jit
    def needs_a_matrix(x):
        return x @ x.T

    future = ahead.submit(needs_a_matrix, jax.ShapeDtypeStruct((), jnp.float32))
    with caplog.at_level(logging.DEBUG, logger="spin_jax"):
        ahead.wait(future)  # does not raise
    assert future.exception() is not None and "compile ahead failed" in caplog.text
    with pytest.raises(ValueError, match="ndim"):
        needs_a_matrix(jnp.float32(1.0))
    assert ahead.submit(lambda x: x, 1.0) is None  # not a jitted program: nothing to do


@pytest.mark.parametrize("placement", ["host", "device"])
def test_extraction_compiles_each_batch_shape_ahead_and_once(monkeypatch, folder, placement):
    pytest.importorskip("torch")
    import spin_jax
    from spin_jax import runner
    from tests.test_extract import make_texts

    model = spin_jax.load_model(str(folder))
    # Compiles priced at nothing, so the plan runs a shape per length bucket.
    monkeypatch.setattr(runner, "compile_tokens", lambda *a, **k: 0)
    texts = make_texts(120, seed=2, max_words=60)
    opts = dict(max_length=64, dtype="float32", token_budget=256, progress=False)
    counts = {}
    for on in (False, True):
        monkeypatch.setenv(ahead.ENV, "1" if on else "0")
        jax.clear_caches()
        ahead.forget()
        runner.SHAPES_RUN.clear()
        got = {}
        counts[on] = compiles_by_thread(
            lambda got=got: got.update(
                hidden=spin_jax.extract(
                    model, texts, placement=placement, allow_empty=True, **opts
                ).read("hidden")
            )
        )
        counts[on, "features"] = got["hidden"]
    (off_here, off_elsewhere), (here, elsewhere) = counts[False], counts[True]
    program = "_pooled_fn"  # the extraction program's name in jit's log
    assert off_here[program] >= 3 and not off_elsewhere, off_here  # several batch shapes
    assert here[program] == 0 and elsewhere[program] == off_here[program]
    np.testing.assert_array_equal(counts[True, "features"], counts[False, "features"])


def test_prefix_widths_compile_every_step_program_before_the_rounds(monkeypatch):
    """On prefix widths (`integration.by_width`, forced on any backend) `fit_masks` submits the
    step program of every (width, chunk size) before its first round: each step the rounds
    call was submitted ahead, and none compiles twice."""
    from spin_jax import lanes

    ahead_of, late, real_submit = set(), [], ahead.submit

    def submit(fn, *args, **kwargs):
        if fn is lanes._lanes_step:
            key = (kwargs["width"], args[2].shape[0])
            if isinstance(args[2], jax.ShapeDtypeStruct):  # from `_compile_widths`
                ahead_of.add(key)
            elif key not in ahead_of:  # a call (`ahead.call` submits too) not guessed
                late.append(key)
        return real_submit(fn, *args, **kwargs)

    monkeypatch.setattr(integration, "BY_WIDTH", {jax.default_backend(): 0})
    monkeypatch.setattr(ahead, "submit", submit)
    here, elsewhere = fit_compiles(monkeypatch, True, lambda src: src)
    assert not late, late
    assert len({width for width, _ in ahead_of}) >= 2, ahead_of  # several widths
    assert here["_lanes_step"] == 0 and 0 < elsewhere["_lanes_step"] <= len(ahead_of)
