"""Model core: layer-by-layer parity with HF torch, invariances, checkpoints, bad input."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest

import spin_jax
from spin_jax.models import config_from_hf, param_shapes
from spin_jax.models.layers import ConfigError, InputError, WeightsError
from tests import hf_tiny

FAMILIES = ["gpt2", "bert", "roberta", "distilbert"]
TOL = 1e-5


def tiny(kind, **kw):
    return hf_tiny.gpt2(**kw) if kind == "gpt2" else hf_tiny.bert(kind, **kw)


def batch(model, kind, lengths=hf_tiny.LENGTHS):
    pad = model.config.pad_token_id if kind == "roberta" else 0
    return hf_tiny.padded_batch(model.config.vocab_size, lengths, pad_id=pad)


def np_pool(x, mask, causal):
    """Reference pooling in numpy over [L, B, T, F]."""
    m = mask.astype(bool)
    idx = m.sum(1) - 1 if causal else np.zeros(len(m), int)
    token = x[:, np.arange(len(m)), idx]
    mean = np.where(m[None, :, :, None], x, 0).sum(2) / m.sum(1)[None, :, None]
    mx = np.where(m[None, :, :, None], x, -np.inf).max(2)
    return np.stack([token, mean, mx], axis=2)


@pytest.mark.torch
@pytest.mark.parametrize("kind", FAMILIES)
def test_parity_per_token_and_pooled(kind):
    hf = tiny(kind)
    model = spin_jax.from_transformers(hf)
    ids, mask = batch(hf, kind)
    want_h, want_f = hf_tiny.hf_features(hf, ids, mask)
    got = spin_jax.forward(model, ids, mask, pooled=False)
    real = mask.astype(bool)
    assert got.hidden.shape == want_h.shape and got.ffn.shape == want_f.shape
    for layer in range(want_h.shape[0]):
        err = np.abs(np.asarray(got.hidden[layer])[real] - want_h[layer][real]).max()
        assert err <= TOL, (kind, "hidden", layer, err)
    for layer in range(want_f.shape[0]):
        err = np.abs(np.asarray(got.ffn[layer])[real] - want_f[layer][real]).max()
        assert err <= TOL, (kind, "ffn", layer, err)
    pooled = spin_jax.forward(model, ids, mask)
    causal = kind == "gpt2"
    np.testing.assert_allclose(pooled.hidden, np_pool(want_h, mask, causal), atol=TOL, rtol=0)
    np.testing.assert_allclose(pooled.ffn, np_pool(want_f, mask, causal), atol=TOL, rtol=0)


@pytest.mark.torch
@pytest.mark.parametrize(
    "kind,kw",
    [
        ("gpt2", dict(activation_function="gelu", layer_norm_epsilon=3e-2)),
        ("gpt2", dict(scale_attn_weights=False)),
        ("bert", dict(hidden_act="gelu_new", layer_norm_eps=5e-3)),
        ("roberta", dict(pad_token_id=5, max_position_embeddings=47)),
        ("distilbert", dict(activation="relu")),
    ],
)
def test_parity_non_default_options(kind, kw):
    hf = tiny(kind, **kw)
    model = spin_jax.from_transformers(hf)
    ids, mask = batch(hf, kind)
    want_h, want_f = hf_tiny.hf_features(hf, ids, mask)
    got = spin_jax.forward(model, ids, mask, pooled=False)
    real = mask.astype(bool)
    assert np.abs(np.asarray(got.hidden)[:, real] - want_h[:, real]).max() <= TOL
    assert np.abs(np.asarray(got.ffn)[:, real] - want_f[:, real]).max() <= TOL


minilm_dir = hf_tiny.minilm_dir


SENTENCES = [
    "The movie was wonderful, I loved every minute.",
    "Terrible.",
    "",
    "A plot so thin that the actors seem to wander through it, wondering why.",
]


@pytest.mark.torch
def test_real_minilm_matches_hf():
    from transformers import AutoModel

    model = spin_jax.load_model(minilm_dir())
    ids, _ = spin_jax.encode(model.tokenizer, SENTENCES, 512)
    ids, mask = spin_jax.pad_batch(ids, max(len(i) for i in ids) + 3)
    hf = AutoModel.from_pretrained(minilm_dir()).eval()
    want_h, want_f = hf_tiny.hf_features(hf, ids, mask)
    got = spin_jax.forward(model, ids, mask, pooled=False)
    real = mask.astype(bool)
    assert np.abs(np.asarray(got.hidden)[:, real] - want_h[:, real]).max() <= TOL
    assert np.abs(np.asarray(got.ffn)[:, real] - want_f[:, real]).max() <= TOL
    pooled = spin_jax.forward(model, ids, mask)
    assert np.isfinite(np.asarray(pooled.hidden)).all()
    np.testing.assert_allclose(pooled.hidden, np_pool(want_h, mask, False), atol=TOL, rtol=0)


def seq_cls(kind, tmp_path):
    import torch
    import transformers as tf

    torch.manual_seed(1)
    base = tiny(kind).config
    base.num_labels = 3
    if kind == "gpt2":
        base.pad_token_id = 0
    cls = {
        "gpt2": tf.GPT2ForSequenceClassification,
        "bert": tf.BertForSequenceClassification,
        "roberta": tf.RobertaForSequenceClassification,
        "distilbert": tf.DistilBertForSequenceClassification,
    }[kind]
    hf = cls(base).eval()
    hf.save_pretrained(tmp_path / kind)
    return hf, tmp_path / kind


@pytest.mark.torch
@pytest.mark.parametrize("kind", FAMILIES)
def test_fine_tuned_checkpoint_keeps_its_head(kind, tmp_path):
    hf, folder = seq_cls(kind, tmp_path)
    model = spin_jax.load_model(str(folder))
    assert model.head is not None and model.tokenizer is None
    ids, mask = batch(hf, kind, lengths=(3, 9, 5))
    want = hf_tiny.logits(hf, ids, mask)
    feats = spin_jax.forward(model, ids, mask)
    got = spin_jax.head_logits(model, feats.hidden[-1, :, 0])
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


@pytest.mark.torch
def test_convert_save_load_roundtrip(tmp_path):
    hf, folder = seq_cls("bert", tmp_path)
    model = spin_jax.from_transformers(hf)
    out = spin_jax.save_model(model, tmp_path / "converted")
    back = spin_jax.load_model(str(out))
    ids, mask = batch(hf, "bert")
    a, b = spin_jax.forward(model, ids, mask), spin_jax.forward(back, ids, mask)
    np.testing.assert_array_equal(a.hidden, b.hidden)
    assert back.head is not None and back.fingerprint == model.fingerprint
    meta = json.loads((out / spin_jax.model.CHECKPOINT_META).read_text())
    meta["params_fingerprint"] = "0" * 16
    (out / spin_jax.model.CHECKPOINT_META).write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="fingerprint"):
        spin_jax.load_model(str(out))


@pytest.mark.torch
def test_gpt2_checkpoint_of_old_format_is_refused(tmp_path):
    """Format 1 stored GPT-2's fused c_attn; loading one must say to convert again."""
    hf, _ = seq_cls("gpt2", tmp_path)
    model = spin_jax.from_transformers(hf)
    assert set(model.params["layers"]["attn"]) == {"q", "k", "v", "c_proj"}
    out = spin_jax.save_model(model, tmp_path / "converted")
    meta = json.loads((out / spin_jax.model.CHECKPOINT_META).read_text())
    meta["format_version"] = 1
    (out / spin_jax.model.CHECKPOINT_META).write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="re-run `spin-jax convert`"):
        spin_jax.load_model(str(out))


# ---- invariances -------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["gpt2", "bert"])
def small(request):
    hf = tiny(request.param)
    return request.param, spin_jax.from_transformers(hf), batch(hf, request.param)


@pytest.mark.torch
def test_scan_equals_python_loop_and_jit_equals_eager(small):
    _, model, (ids, mask) = small
    ref = spin_jax.forward(model, ids, mask)
    loop = spin_jax.forward(model, ids, mask, use_scan=False)
    eager = spin_jax.forward(model, ids, mask, jit=False)
    np.testing.assert_allclose(loop.hidden, ref.hidden, atol=1e-6, rtol=0)
    np.testing.assert_allclose(loop.ffn, ref.ffn, atol=1e-6, rtol=0)
    np.testing.assert_allclose(eager.hidden, ref.hidden, atol=1e-6, rtol=0)


@pytest.mark.torch
def test_extra_padding_and_one_by_one(small):
    _, model, (ids, mask) = small
    ref = spin_jax.forward(model, ids, mask)
    wide = spin_jax.pad_batch(
        [i[m.astype(bool)] for i, m in zip(ids, mask, strict=True)], ids.shape[1] + 7
    )
    padded = spin_jax.forward(model, *wide)
    np.testing.assert_allclose(padded.hidden, ref.hidden, atol=1e-5, rtol=0)
    np.testing.assert_allclose(padded.ffn, ref.ffn, atol=1e-5, rtol=0)
    for b in range(len(ids)):
        n = int(mask[b].sum())
        one = spin_jax.forward(model, ids[b : b + 1, :n], mask[b : b + 1, :n])
        np.testing.assert_allclose(one.hidden[:, 0], ref.hidden[:, b], atol=1e-5, rtol=0)


@pytest.mark.torch
def test_early_exit_equals_prefix(small):
    _, model, (ids, mask) = small
    full = spin_jax.forward(model, ids, mask)
    L = model.config.num_layers
    for k in range(0, L):  # the last entry of the full run carries GPT-2's final norm
        early = spin_jax.forward(model, ids, mask, num_layers=k)
        assert early.hidden.shape[0] == k + 1 and early.ffn.shape[0] == k
        # Different programs compile to different fusions: equal up to fp32 rounding.
        np.testing.assert_allclose(early.ffn, full.ffn[:k], atol=1e-6, rtol=0)
        np.testing.assert_allclose(early.hidden, full.hidden[: k + 1], atol=1e-6, rtol=0)


@pytest.mark.torch
def test_forward_traces_once_per_shape(small):
    _, model, (ids, mask) = small
    from spin_jax import models

    models._forward.clear_cache()
    for _ in range(3):
        spin_jax.forward(model, ids, mask)
    assert models._forward._cache_size() == 1
    spin_jax.forward(model, ids[:, :5], mask[:, :5])
    assert models._forward._cache_size() == 2


# ---- full-size presets, shapes only ------------------------------------------------------

PRESETS = {
    "gpt2-xl": dict(
        model_type="gpt2",
        vocab_size=50257,
        n_positions=1024,
        n_embd=1600,
        n_layer=48,
        n_head=25,
        activation_function="gelu_new",
    ),
    "roberta-large": dict(
        model_type="roberta",
        vocab_size=50265,
        max_position_embeddings=514,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        type_vocab_size=1,
        pad_token_id=1,
    ),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_full_size_shapes(name):
    config = config_from_hf(PRESETS[name])
    shapes = param_shapes(config)
    ids = jax.ShapeDtypeStruct((2, 512), np.int32)
    out = jax.eval_shape(
        functools.partial(spin_jax.models.forward_program, config), shapes, ids, ids
    )
    L, D, F = config.num_layers, config.hidden_size, config.ffn_size
    assert out.hidden.shape == (L + 1, 2, 3, D) and out.ffn.shape == (L, 2, 3, F)


# ---- bad input ---------------------------------------------------------------------------


def test_unknown_model_type_and_missing_fields():
    with pytest.raises(ConfigError, match="llama"):
        config_from_hf({"model_type": "llama"})
    with pytest.raises(ConfigError, match="model_type"):
        config_from_hf({"hidden_size": 3})
    with pytest.raises(ConfigError, match="n_layer"):
        config_from_hf(
            {"model_type": "gpt2", "n_embd": 8, "n_head": 2, "vocab_size": 5, "n_positions": 4}
        )


@pytest.mark.parametrize(
    "d,name",
    [
        ({**PRESETS["gpt2-xl"], "add_cross_attention": True}, "add_cross_attention"),
        ({**PRESETS["gpt2-xl"], "activation_function": "mish"}, "activation_function"),
        (
            {**PRESETS["roberta-large"], "position_embedding_type": "relative_key"},
            "position_embedding_type",
        ),
    ],
)
def test_unsupported_option_is_named(d, name):
    with pytest.raises(ConfigError, match=name):
        config_from_hf(d)


@pytest.mark.torch
def test_bad_weights_are_named():
    from weights_convert import convert_state_dict, read_state_dict

    hf = tiny("bert")
    config = config_from_hf(hf.config.to_dict())
    sd = read_state_dict(hf)
    missing = {k: v for k, v in sd.items() if k != "encoder.layer.1.output.dense.weight"}
    with pytest.raises(WeightsError, match="encoder.layer.1.output.dense.weight"):
        convert_state_dict(config, missing)
    with pytest.raises(WeightsError, match="surprise"):
        convert_state_dict(config, {**sd, "surprise.weight": np.zeros(3)})
    bad = {**sd, "embeddings.word_embeddings.weight": np.zeros((96, 40), np.float32)}
    with pytest.raises(WeightsError, match="word_embeddings"):
        convert_state_dict(config, bad)


@pytest.mark.torch
def test_bad_token_ids_and_lengths(small):
    _, model, (ids, mask) = small
    with pytest.raises(InputError, match="token ids"):
        spin_jax.forward(model, ids + model.config.vocab_size, mask)
    long = np.zeros((1, model.config.max_positions + 1), np.int32)
    with pytest.raises(InputError, match="position table"):
        spin_jax.forward(model, long, np.ones_like(long))
    with pytest.raises(InputError, match="num_layers"):
        spin_jax.forward(model, ids, mask, num_layers=99)
