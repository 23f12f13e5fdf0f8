"""BERT-family encoders: BERT (and MiniLM-style small BERTs), RoBERTa, DistilBERT.

All three share one post-LN block; they differ only in embeddings (token types, RoBERTa's
padding-offset positions) and config field names. Kernels are stored (in, out).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from spin_jax.models import core
from spin_jax.models import layers as L

# HF options we do not implement, with the only value we accept.
_REQUIRED = {
    "bert": {
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
    },
    "roberta": {
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
    },
    "distilbert": {},
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    model_type: str  # "bert", "roberta" or "distilbert"
    vocab_size: int
    max_position_embeddings: int
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_size: int
    activation: str
    layer_norm_eps: float
    type_vocab_size: int  # 0: no token-type embeddings (DistilBERT)
    pad_token_id: int  # RoBERTa's padding_idx for position ids
    causal: bool = False

    @property
    def max_positions(self) -> int:
        """Longest sequence the position table allows."""
        if self.model_type == "roberta":
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    @classmethod
    def from_hf_config(cls, d: dict[str, Any]) -> BertConfig:
        kind = d["model_type"]
        for key, want in _REQUIRED[kind].items():
            if d.get(key, want) != want:
                raise L.ConfigError(
                    f"{kind} config option {key}={d[key]!r} is not supported (only {want!r}); "
                    "use a standard encoder checkpoint."
                )
        if kind == "distilbert":
            fields = dict(
                hidden_size=d["dim"],
                num_layers=d["n_layers"],
                num_heads=d["n_heads"],
                ffn_size=d["hidden_dim"],
                activation=L.check_activation(d.get("activation", "gelu"), "activation"),
                layer_norm_eps=1e-12,  # hard-coded in HF's DistilBERT
                type_vocab_size=0,
                pad_token_id=d.get("pad_token_id", 0),
            )
        else:
            fields = dict(
                hidden_size=d["hidden_size"],
                num_layers=d["num_hidden_layers"],
                num_heads=d["num_attention_heads"],
                ffn_size=d["intermediate_size"],
                activation=L.check_activation(d.get("hidden_act", "gelu"), "hidden_act"),
                layer_norm_eps=d.get("layer_norm_eps", 1e-12),
                type_vocab_size=d.get("type_vocab_size", 2),
                pad_token_id=d.get("pad_token_id", 1 if kind == "roberta" else 0),
            )
        if fields["hidden_size"] % fields["num_heads"]:
            raise L.ConfigError(
                f"hidden size {fields['hidden_size']} is not divisible by "
                f"{fields['num_heads']} heads."
            )
        return cls(
            model_type=kind,
            vocab_size=d["vocab_size"],
            max_position_embeddings=d["max_position_embeddings"],
            **fields,
        )


def param_shapes(c: BertConfig, dtype=jnp.float32) -> L.Params:
    D, F, n = c.hidden_size, c.ffn_size, c.num_layers
    s, ln, lin = L.shape_builders(dtype, D, n)

    emb = {"word": s(c.vocab_size, D), "position": s(c.max_position_embeddings, D), "ln": ln()}
    if c.type_vocab_size:
        emb["token_type"] = s(c.type_vocab_size, D)
    attn = {name: lin(D, D) for name in ("q", "k", "v", "o")}
    return {
        "embeddings": emb,
        "layers": {
            "attn": attn,
            "attn_ln": ln(n),
            "ffn_in": lin(D, F),
            "ffn_out": lin(F, D),
            "ffn_ln": ln(n),
        },
    }


def _ln(x, p, c: BertConfig):
    return L.layer_norm(x, p["scale"], p["bias"], c.layer_norm_eps)


def block(c: BertConfig, x: jax.Array, mask: jax.Array, p: L.Params):
    """One post-LN encoder block. Returns (output [B,T,D], FFN activation [B,T,F])."""
    B, T, D = x.shape
    N = c.num_heads
    a = p["attn"]
    q, k, v = (L.dense(x, a[n]).reshape(B, T, N, D // N) for n in ("q", "k", "v"))
    att = L.attention(q, k, v, mask, causal=False).reshape(B, T, D)
    x = _ln(x + L.dense(att, a["o"]), p["attn_ln"], c)
    act = L.activation(c.activation)(L.dense(x, p["ffn_in"]))
    return _ln(x + L.dense(act, p["ffn_out"]), p["ffn_ln"], c), act


def position_ids(c: BertConfig, input_ids: jax.Array) -> jax.Array:
    if c.model_type == "roberta":
        # HF: positions count real (non-pad) tokens, offset past padding_idx.
        real = (input_ids != c.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(real, axis=1) * real + c.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)


def embed(c: BertConfig, params: L.Params, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    e = params["embeddings"]
    x = e["word"][input_ids] + e["position"][position_ids(c, input_ids)]
    if c.type_vocab_size:
        x = x + e["token_type"][0]  # single-segment inputs: token type 0 everywhere
    return _ln(x, e["ln"], c)


def forward(c: BertConfig, params, input_ids, attention_mask, *, k, pooled, use_scan):
    return core.stack_forward(
        functools.partial(block, c),
        functools.partial(embed, c),
        None,
        params,
        input_ids,
        attention_mask,
        num_layers=c.num_layers,
        causal=False,
        k=k,
        pooled=pooled,
        use_scan=use_scan,
    )
