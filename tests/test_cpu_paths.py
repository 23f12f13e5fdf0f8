"""The CPU paths of models/layers.py: attention and the compensated fp32 matmul computed a
chunk of rows at a time (so that what they hold between steps stays in cache).

Chunked and whole give the same numbers, against float64 and against HF torch with the
chunking forced onto the tiny models; and at full size the forward's program never holds
what made the old paths slow: a whole batch's [B, N, T, S] attention scores, or [M, F]
accumulators carried through a scan once per block of the compensated sum.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spin_jax
from spin_jax.models import config_from_hf, family_of, forward_program, param_shapes
from spin_jax.models import layers as L
from tests import hf_tiny

TOL = 1e-5
cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU paths")


def np_attention(q, k, v, mask, causal, scale, bias=None):
    """float64 reference, q [B,T,N,H]."""
    s = np.einsum("btnh,bsnh->bnts", q, k).astype(np.float64) * scale
    if bias is not None:
        s = s + bias
    keep = mask[:, None, None, :]
    if causal:
        keep = keep & np.tril(np.ones((q.shape[1], k.shape[1]), bool))
    s = np.where(keep, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bnts,bsnh->btnh", w / w.sum(-1, keepdims=True), v)


@cpu_only
@pytest.mark.parametrize("causal,biased", [(False, False), (True, False), (False, True)])
def test_chunked_attention_equals_whole_and_float64(causal, biased):
    rng = np.random.default_rng(3)
    B, T, N, H = 7, 11, 3, 5
    q, k, v = (rng.standard_normal((B, T, N, H)).astype(np.float32) * 2 for _ in range(3))
    mask = np.arange(T)[None] < np.array([11, 1, 4, 11, 7, 2, 9])[:, None]
    bias = rng.standard_normal((1, N, T, T)).astype(np.float32) if biased else None
    scale = 1.0 if biased else H**-0.5
    want = np_attention(q, k, v, mask, causal, scale, bias)
    run = functools.partial(L.chunked_attention, causal=causal, scale=scale, bias=bias)
    whole = np.asarray(jax.jit(run)(q, k, v, mask))
    real = mask  # padded queries are not compared (HF's are garbage too)
    np.testing.assert_allclose(whole[real], want[real], atol=TOL, rtol=0)
    for rows in (1, 2, 3):  # 3: two chunks and a remainder row
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(L, "CHUNK_SCORES", rows * N * T * T)
            got = np.asarray(jax.jit(run)(q, k, v, mask))
        np.testing.assert_allclose(got[real], whole[real], atol=1e-6, rtol=0)


@cpu_only
@pytest.mark.parametrize("M,D,F", [(13, 40, 56), (64, 56, 40), (5, 384, 17)])
def test_compensated_rows_equals_scan(M, D, F):
    """The CPU's chunked compensated sum is the GPU's scan, to rounding of the last bit."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, D)).astype(np.float32) * 3
    w = rng.standard_normal((D, F)).astype(np.float32)
    want = x.astype(np.float64) @ w.astype(np.float64)
    ks = jnp.asarray(w).reshape(D // 8, 8, F)
    scan = np.asarray(jax.jit(L._compensated_scan)(x, ks))
    for rows in (1, 3, M):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(L, "CHUNK_PARTIALS", rows * (D // 8) * F)
            got = np.asarray(jax.jit(L.compensated_matmul)(x, w))
        np.testing.assert_allclose(got, scan, atol=4e-7 * np.abs(want).max(), rtol=0)
    plain = np.abs(x @ w - want).max()
    assert np.abs(scan - want).max() <= plain  # the point of compensating at all


@cpu_only
@pytest.mark.torch
@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_parity_with_chunks_forced(kind):
    """Layer-by-layer parity with HF float64 when every chunked path runs with remainders
    (the tiny models' batches are otherwise one chunk)."""
    hf = hf_tiny.gpt2() if kind == "gpt2" else hf_tiny.bert(kind)
    model = spin_jax.from_transformers(hf)
    ids, mask = hf_tiny.padded_batch(model.config.vocab_size, (1, 2, 9, 23, 5))  # T = 23
    want_h, want_f = hf_tiny.hf_features(hf, ids, mask)
    c = model.config
    fwd = functools.partial(
        family_of(c.model_type).forward, c, k=c.num_layers, pooled=False, use_scan=True
    )
    with pytest.MonkeyPatch.context() as mp:
        # Attention: 5 rows in chunks of 3 and a remainder of 2. The matmuls' 115 rows: in
        # chunks of 5 (FFN, a divisor) or of 14 and a remainder of 3 (q, k, v, o).
        mp.setattr(L, "CHUNK_SCORES", 3 * c.num_heads * 23 * 23)
        mp.setattr(L, "CHUNK_PARTIALS", 10 * 5 * 56)
        got = jax.jit(fwd)(model.params, jnp.asarray(ids), jnp.asarray(mask, bool))
    real = mask.astype(bool)
    assert np.abs(np.asarray(got.hidden)[:, real] - want_h[:, real]).max() <= TOL
    assert np.abs(np.asarray(got.ffn)[:, real] - want_f[:, real]).max() <= TOL


def _equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (jit, scan, map, cond)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


@cpu_only
@pytest.mark.parametrize("precision", ["default", "highest"])
def test_full_size_program_holds_no_whole_batch_intermediates(precision):
    """The MiniLM at 256 x 128 tokens (a 32768-token batch, as extraction runs it): no
    [B, N, T, S] scores (0.46 s a layer of attention against 0.23 s chunked, on 2 cores),
    and no scan carrying more than the [B, T, D] hidden state (the unchunked compensated
    sum carried two [B*T, F] accumulators through memory per block: 10x a plain matmul)."""
    B, T = 256, 128
    config = config_from_hf(json.loads((Path(hf_tiny.minilm_dir()) / "config.json").read_text()))
    ids = jax.ShapeDtypeStruct((B, T), jnp.int32)
    mask = jax.ShapeDtypeStruct((B, T), jnp.bool_)
    with jax.default_matmul_precision(precision):
        jaxpr = jax.make_jaxpr(functools.partial(forward_program, config))(
            param_shapes(config), ids, mask
        )
    eqns = list(_equations(jaxpr.jaxpr))
    shapes = {tuple(v.aval.shape) for e in eqns for v in e.outvars}
    assert (B, config.num_heads, T, T) not in shapes
    carries = [
        int(np.prod(v.aval.shape))
        for e in eqns
        if e.primitive.name == "scan"
        for v in e.invars[e.params["num_consts"] :][: e.params["num_carry"]]
    ]
    assert carries and max(carries) <= B * T * config.hidden_size
