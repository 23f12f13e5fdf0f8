"""Token explanations (spin_jax/explain.py): shares that sum to the head's logits, credited
to the tokens each pooled value comes from, for every family and pooling."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import spin_jax  # noqa: E402
from spin_jax.classifier import _head_logits, _token_shares, selection  # noqa: E402
from spin_jax.explain import MAX, MEAN, TOKEN  # noqa: E402
from spin_jax.learner import SpinHead  # noqa: E402
from tests import hf_tiny  # noqa: E402
from tests.test_t5 import LD, LE, hf_t5  # noqa: E402

pytestmark = pytest.mark.torch


def random_head(n_layers, widths, k, n_classes, seed, pools=(TOKEN, MEAN, MAX)):
    """Columns over both representations, every pooling, layers 1..k (hidden also 0)."""
    rng = np.random.default_rng(seed)
    rows = []
    for rep, width in enumerate(widths):
        for layer in range(rep, k + 1):  # hidden 0..k, FFN 1..k
            for pool in pools:
                rows.append((rep, pool, layer, int(rng.integers(width))))
    rep, pool, layer, neuron = (np.array(c, np.int64) for c in zip(*rows, strict=True))
    m = len(rows)
    return SpinHead(
        rep=rep,
        pool=pool,
        layer=layer,
        neuron=neuron,
        mean=rng.normal(size=m).astype(np.float32),
        std=rng.uniform(0.5, 2.0, m).astype(np.float32),
        weights=rng.normal(size=(m, n_classes)).astype(np.float32),
        intercept=rng.normal(size=n_classes).astype(np.float32),
        num_layers=k,
    )


def models():
    yield "gpt2", spin_jax.from_transformers(hf_tiny.gpt2())
    yield "bert", spin_jax.from_transformers(hf_tiny.bert())
    yield "t5", spin_jax.from_transformers(hf_t5())


@pytest.fixture(scope="module", params=["gpt2", "bert", "t5"])
def family(request):
    return request.param, dict(models())[request.param]


def shares_and_logits(model, head, ids, mask):
    c, k, sel = model.config, head.num_layers, selection(head)
    with jax.default_matmul_precision("highest"):
        shares = _token_shares(model.params, ids, mask, sel, config=c, k=k)
        logits = _head_logits(model.params, ids, mask, sel, config=c, k=k)
    return np.asarray(shares), np.asarray(logits)


@pytest.mark.parametrize("n_classes", [1, 3])
def test_shares_sum_to_the_logits(family, n_classes):
    name, model = family
    c = model.config
    ks = [1, c.num_layers] if name != "t5" else [LE, LE + 1, LE + LD]  # T5: decoder columns
    ids, mask = hf_tiny.padded_batch(c.vocab_size, seed=3)
    for k in ks:
        head = random_head(c.num_layers, (c.hidden_size, c.ffn_size), k, n_classes, seed=k)
        shares, logits = shares_and_logits(model, head, ids, mask)
        assert shares.shape == (*ids.shape, n_classes)
        assert np.all(shares[mask == 0] == 0)  # padding is credited nothing
        np.testing.assert_allclose(shares.sum(1) + head.intercept, logits, atol=1e-4, rtol=1e-5)


def one_column(rep, pool, layer, neuron, k, mu=0.5):
    """A head on one column; its mean mu != 0 keeps a credited share non-zero (T5's ReLU
    activations are often exactly 0)."""
    return SpinHead(
        rep=np.array([rep]),
        pool=np.array([pool]),
        layer=np.array([layer]),
        neuron=np.array([neuron]),
        mean=np.full(1, mu, np.float32),
        std=np.ones(1, np.float32),
        weights=np.ones((1, 1), np.float32),
        intercept=np.zeros(1, np.float32),
        num_layers=k,
    )


def credited(model, head, ids, mask):
    shares, _ = shares_and_logits(model, head, ids, mask)
    return [set(np.nonzero(row[:, 0])[0].tolist()) for row in shares]


def test_single_token_and_max_columns_credit_one_token(family):
    name, model = family
    c = model.config
    ids, mask = hf_tiny.padded_batch(c.vocab_size, seed=4)
    lengths = mask.sum(1)
    k = c.num_layers
    head = one_column(1, TOKEN, 1, 3, k)  # an encoder (or GPT-2) layer's FFN neuron
    want = [{int(n) - 1} if name == "gpt2" else {0} for n in lengths]
    assert credited(model, head, ids, mask) == want
    for rep in (0, 1):
        got = credited(model, one_column(rep, MAX, 1, 2, k), ids, mask)
        assert [len(s) for s in got] == [1] * len(got)
        assert all(max(s) < n for s, n in zip(got, lengths, strict=True))


def test_mean_columns_credit_every_real_token_equally_weighted(family):
    _, model = family
    c = model.config
    ids, mask = hf_tiny.padded_batch(c.vocab_size, seed=5)
    head = one_column(0, MEAN, 1, 1, 1)
    shares, logits = shares_and_logits(model, head, ids, mask)
    with jax.default_matmul_precision("highest"):
        per_token = np.asarray(spin_jax.forward(model, ids, mask, pooled=False).hidden)[1, ..., 1]
    want = np.where(mask == 1, (per_token - 0.5) / mask.sum(1, keepdims=True), 0.0)
    np.testing.assert_allclose(shares[..., 0], want, atol=1e-6)


def test_t5_decoder_shares_go_to_the_token_the_decoder_reads():
    model = dict(models())["t5"]
    c = model.config
    ids, mask = hf_tiny.padded_batch(c.vocab_size, seed=6)
    head = one_column(1, TOKEN, LE + 1, 5, LE + 1)  # first decoder block's FFN, last position
    # decoder mask "same": the last real position n - 1 reads input token n - 2
    want = [{max(int(n) - 2, 0)} for n in mask.sum(1)]
    assert credited(model, head, ids, mask) == want


def test_t5_shifted_decoder_mask_shares_sum_to_the_logits():
    model = spin_jax.from_transformers(hf_t5(), decoder_mask="shifted")
    c = model.config
    ids, mask = hf_tiny.padded_batch(c.vocab_size, seed=7)
    head = random_head(c.num_layers, (c.hidden_size, c.ffn_size), LE + LD, 2, seed=1)
    shares, logits = shares_and_logits(model, head, ids, mask)
    assert np.all(shares[mask == 0] == 0)
    np.testing.assert_allclose(shares.sum(1) + head.intercept, logits, atol=1e-4, rtol=1e-5)
