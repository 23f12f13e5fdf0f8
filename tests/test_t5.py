"""T5 parity against HF torch (T5Model, T5EncoderModel), equivalent paths and shapes."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers  # noqa: E402 - a dependency; torch is not, and is imported where used

try:
    import torch
except ImportError:  # the tests marked torch skip (conftest)
    torch = None

from spin_jax.models import config_from_hf, forward_params, param_shapes  # noqa: E402
from spin_jax.models import t5 as t5_model  # noqa: E402
from spin_jax.models.layers import ConfigError, WeightsError  # noqa: E402
from tests.hf_tiny import padded_batch, reference  # noqa: E402
from weights_convert import convert, convert_state_dict, read_state_dict  # noqa: E402

LE, LD = 2, 3
TOL = 1e-5
TINY = dict(
    vocab_size=97,
    d_model=40,
    d_kv=8,
    num_heads=5,
    d_ff=56,
    num_layers=LE,
    num_decoder_layers=LD,
    relative_attention_num_buckets=12,
    relative_attention_max_distance=16,
    layer_norm_epsilon=1e-4,
    decoder_start_token_id=0,
)
FLAN_T5_XL = dict(
    model_type="t5",
    d_model=2048,
    d_kv=64,
    num_heads=32,
    d_ff=5120,
    num_layers=24,
    num_decoder_layers=24,
    feed_forward_proj="gated-gelu",
    vocab_size=32128,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
    is_encoder_decoder=True,
    tie_word_embeddings=False,
)


def hf_t5(cls="T5Model", **kw):
    """A tiny random HF T5 whose relative-bias tables are large enough that a wrong bucket
    shows far above the tolerance (HF's init makes them small)."""
    torch.manual_seed(0)
    model = getattr(transformers, cls)(transformers.T5Config(**{**TINY, **kw})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_attention_bias" in name:
                p.normal_(0.0, 2.0)
    return model


def blocks(model):
    stacks = [model.encoder] + ([model.decoder] if hasattr(model, "decoder") else [])
    return [b for s in stacks for b in s.block]


def shifted(mask):
    return np.concatenate([np.ones_like(mask[:, :1]), mask[:, :-1]], axis=1)


def hf_features(model, ids, mask, dec_mask=None, ffn="gate", dtype="float64"):
    """Per-token hidden states [L+1,B,T,D] and FFN activations [L,B,T,F] as our layers are
    ordered, from a `dtype` copy of the model (float64: the true reference);
    `ffn="product"` reads the gated product at wo's input."""
    model = reference(model, dtype)
    acts = []

    def keep(_, args, out=None):
        acts.append((out if out is not None else args[0]).detach().numpy())

    ffns = [b.layer[-1].DenseReluDense for b in blocks(model)]
    hooks = (
        [f.wo.register_forward_pre_hook(keep) for f in ffns]
        if ffn == "product"
        else [f.act.register_forward_hook(keep) for f in ffns]
    )
    ti = torch.tensor(ids, dtype=torch.long)
    kw = dict(input_ids=ti, attention_mask=torch.tensor(mask), output_hidden_states=True)
    if dec_mask is not None:
        kw.update(
            decoder_input_ids=model._shift_right(ti), decoder_attention_mask=torch.tensor(dec_mask)
        )
    with torch.no_grad():
        out = model(**kw)
    for h in hooks:
        h.remove()
    hidden = (
        out.hidden_states
        if dec_mask is None
        else (out.encoder_hidden_states + out.decoder_hidden_states[1:])
    )
    return np.stack([h.numpy() for h in hidden]), np.stack(acts)


def layer_masks(mask, dec_mask, n_enc, n_dec):
    return np.stack([mask] * n_enc + [dec_mask] * n_dec).astype(bool)


def np_pool(x, mask, token_index):
    """Reference pooling over real tokens of x [B,T,D]: (token, mean, max)."""
    m = mask.astype(bool)[..., None]
    token = x[np.arange(len(x)), token_index]
    mean = np.where(m, x, 0).sum(1) / m.sum(1)
    mx = np.where(m, x, -np.inf).max(1)
    return np.stack([token, mean, mx], axis=1)


def pool_layers(x, mask, dec_mask, n_enc):
    first = np.zeros(len(mask), int)
    last = dec_mask.sum(1) - 1
    return np.stack(
        [
            np_pool(h, mask, first) if i < n_enc else np_pool(h, dec_mask, last)
            for i, h in enumerate(x)
        ]
    )


def ours(model, **replace):
    c = dataclasses.replace(config_from_hf(model.config.to_dict()), **replace)
    params, _ = convert(c, model)
    return c, params


def assert_close(got, want, where):
    err = np.abs(np.asarray(got) - want)[where].max()
    assert err <= TOL, err


@pytest.mark.parametrize(
    "proj, decoder_mask", [("relu", "shifted"), ("gated-gelu", "shifted"), ("gated-gelu", "same")]
)
@pytest.mark.torch
def test_parity_encoder_decoder(proj, decoder_mask):
    model = hf_t5(feed_forward_proj=proj)
    c, params = ours(model, decoder_mask=decoder_mask)
    ids, mask = padded_batch(c.vocab_size)
    dec_mask = shifted(mask) if decoder_mask == "shifted" else mask
    hidden, ffn = hf_features(model, ids, mask, dec_mask)
    f = forward_params(c, params, ids, mask, pooled=False)
    assert f.hidden.shape == (LE + LD + 1, 4, 23, 40) and f.ffn.shape == (LE + LD, 4, 23, 56)
    assert_close(f.hidden, hidden, layer_masks(mask, dec_mask, LE + 1, LD))
    assert_close(f.ffn, ffn, layer_masks(mask, dec_mask, LE, LD))

    p = forward_params(c, params, ids, mask, pooled=True)
    np.testing.assert_allclose(p.hidden, pool_layers(hidden, mask, dec_mask, LE + 1), atol=TOL)
    np.testing.assert_allclose(p.ffn, pool_layers(ffn, mask, dec_mask, LE), atol=TOL)


@pytest.mark.torch
def test_parity_encoder_model():
    # inner width N*H = 35 != d_model, and another gated activation
    model = hf_t5("T5EncoderModel", feed_forward_proj="gated-silu", d_kv=7)
    c, params = ours(model)
    assert c.mode == "encoder" and c.num_layers == LE and "decoder" not in params
    ids, mask = padded_batch(c.vocab_size, seed=1)
    hidden, ffn = hf_features(model, ids, mask)
    f = forward_params(c, params, ids, mask, pooled=False)
    assert_close(f.hidden, hidden, layer_masks(mask, mask, LE + 1, 0))
    assert_close(f.ffn, ffn, layer_masks(mask, mask, LE, 0))


@pytest.mark.torch
def test_encoder_mode_of_full_checkpoint():
    model = hf_t5(feed_forward_proj="gated-gelu")
    c, params = ours(model)
    ce, pe = ours(model, mode="encoder")
    ids, mask = padded_batch(c.vocab_size)
    full = forward_params(c, params, ids, mask, pooled=False)
    enc = forward_params(ce, pe, ids, mask, pooled=False)
    np.testing.assert_array_equal(enc.hidden, full.hidden[: LE + 1])
    np.testing.assert_array_equal(enc.ffn, full.ffn[:LE])


@pytest.mark.torch
def test_ffn_output_product():
    model = hf_t5(feed_forward_proj="gated-gelu")
    c, params = ours(model, ffn_output="product")
    ids, mask = padded_batch(c.vocab_size)
    _, ffn = hf_features(model, ids, mask, mask, ffn="product")
    f = forward_params(c, params, ids, mask, pooled=False)
    assert_close(f.ffn, ffn, layer_masks(mask, mask, LE, LD))
    # the same through a per-call option
    g = forward_params(c, params, ids, mask, pooled=False, ffn_output="gate")
    _, gate = hf_features(model, ids, mask, mask)
    assert_close(g.ffn, gate, layer_masks(mask, mask, LE, LD))


@pytest.fixture(scope="module")
def tiny_gated():
    c, params = ours(hf_t5(feed_forward_proj="gated-gelu"))
    ids, mask = padded_batch(c.vocab_size, seed=2)
    return c, params, ids, mask


def on_cpu():
    """These tests claim bit-equal (or 1e-6) results of two programs that compute the same
    thing. That holds on CPU; on a GPU XLA fuses the k-block and the full program (or the
    scan and the loop) differently, and the reductions then round differently (measured on
    an H200: up to 2e-6 absolute, 6e-5 relative, at "highest" precision). Parity with HF
    on any device is test_parity_*'s job; this pins the platform, not the tolerance."""
    return jax.default_device(jax.devices("cpu")[0])


@pytest.mark.torch
@pytest.mark.parametrize("k", [0, 1, LE, LE + 1, LE + LD])
def test_early_exit(tiny_gated, k):
    with on_cpu():
        _early_exit(tiny_gated, k)


def _early_exit(tiny_gated, k):
    c, params, ids, mask = tiny_gated
    full = forward_params(c, params, ids, mask, pooled=False)
    # the Python loop compiles slowly: only where each stack is cut short or empty
    for use_scan in (True, False) if k in (0, LE + 1) else (True,):
        f = forward_params(c, params, ids, mask, pooled=False, num_layers=k, use_scan=use_scan)
        np.testing.assert_array_equal(f.hidden, full.hidden[: k + 1])
        np.testing.assert_allclose(f.ffn, full.ffn[:k], atol=0, rtol=0)


@pytest.mark.torch
@pytest.mark.parametrize("pooled", [True, False])
def test_scan_equals_loop(tiny_gated, pooled):
    c, params, ids, mask = tiny_gated
    with on_cpu():
        a = forward_params(c, params, ids, mask, pooled=pooled, use_scan=True)
        b = forward_params(c, params, ids, mask, pooled=pooled, use_scan=False)
    np.testing.assert_allclose(a.hidden, b.hidden, atol=1e-6)
    np.testing.assert_allclose(a.ffn, b.ffn, atol=1e-6)


@pytest.mark.torch
def test_relative_buckets_match_hf():
    bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    rel = np.arange(-700, 701)
    for nb, md in ((32, 128), (12, 16), (7, 20)):
        for bidirectional in (True, False):
            want = bucket(torch.tensor(rel), bidirectional, nb, md).numpy()
            got = t5_model.relative_position_bucket(rel, bidirectional, nb, md)
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("proj", ["gated-foo", "relu-gated", "gated-gelu-x"])
def test_unsupported_feed_forward_proj(proj):
    with pytest.raises(ConfigError, match="feed_forward_proj"):
        config_from_hf({**FLAN_T5_XL, "feed_forward_proj": proj})


def test_bad_config_options():
    with pytest.raises(ConfigError, match="is_decoder"):
        config_from_hf({**FLAN_T5_XL, "is_decoder": True})
    c = config_from_hf(FLAN_T5_XL)
    with pytest.raises(ConfigError, match="mode"):
        dataclasses.replace(c, mode="decoder")
    assert config_from_hf({**FLAN_T5_XL, "feed_forward_proj": "gelu"}).activation == "gelu"
    assert c.activation == "gelu_new" and c.gated


@pytest.mark.torch
def test_missing_decoder_weights():
    model = hf_t5("T5EncoderModel")
    c = config_from_hf({**model.config.to_dict(), "is_encoder_decoder": True})
    with pytest.raises(WeightsError, match="mode='encoder'"):
        convert(c, model)


@pytest.mark.torch
def test_unexpected_weight_and_head():
    model = hf_t5("T5ForSequenceClassification", num_labels=3)
    c = config_from_hf(model.config.to_dict())
    sd = read_state_dict(model)
    params, head = convert_state_dict(c, sd)
    kind, h = head
    assert kind == "t5" and h["dense"]["kernel"].shape == (40, 40)
    assert h["out"]["kernel"].shape == (40, 3)
    _, head = convert_state_dict(dataclasses.replace(c, mode="encoder"), sd)
    assert head is None
    with pytest.raises(WeightsError, match="unexpected"):
        convert_state_dict(c, {**sd, "transformer.encoder.block.0.extra.weight": np.zeros(2)})


@pytest.mark.parametrize("mode", ["encoder_decoder", "encoder"])
def test_flan_t5_xl_shapes(mode):
    c = dataclasses.replace(config_from_hf(FLAN_T5_XL), mode=mode)
    L = 48 if mode == "encoder_decoder" else 24
    assert c.num_layers == L and c.hidden_size == 2048 and c.ffn_size == 5120
    shapes = param_shapes(c, jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((2, 300), jnp.int32)  # longer than the max distance
    mask = jax.ShapeDtypeStruct((2, 300), jnp.bool_)
    for pooled, P in ((True, 3), (False, 300)):
        fwd = functools.partial(t5_model.forward, c, k=L, pooled=pooled, use_scan=True)
        out = jax.eval_shape(fwd, shapes, ids, mask)
        assert out.hidden.shape == (L + 1, 2, P, 2048)
        assert out.ffn.shape == (L, 2, P, 5120)
    if mode == "encoder_decoder":
        # flan-t5-xl's 2,849,757,184 parameters, less its untied lm_head
        n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
        assert n == 2_849_757_184 - 32128 * 2048


@pytest.mark.torch
@pytest.mark.parametrize("decoder_mask", ["shifted", "same"])
def test_pooling_unchanged_by_extra_padding(tiny_gated, decoder_mask):
    c, params, ids, mask = tiny_gated
    wide_ids, wide_mask = (np.pad(a, ((0, 0), (0, 7))) for a in (ids, mask))
    a = forward_params(c, params, ids, mask, decoder_mask=decoder_mask)
    b = forward_params(c, params, wide_ids, wide_mask, decoder_mask=decoder_mask)
    # "shifted" drops the last token of a row that fills the padded length (the 23-token
    # row here) and sees it once padding follows: only "same" keeps every row unchanged.
    rows = slice(None) if decoder_mask == "same" else mask[:, -1] == 0
    np.testing.assert_allclose(a.hidden[:, rows], b.hidden[:, rows], atol=1e-5)
    np.testing.assert_allclose(a.ffn[:, rows], b.ffn[:, rows], atol=1e-5)
    if decoder_mask == "shifted":
        assert np.abs(a.hidden[-1, ~rows] - b.hidden[-1, ~rows]).max() > 1e-3
