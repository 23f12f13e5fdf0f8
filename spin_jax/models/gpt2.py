"""GPT-2 family (gpt2, gpt2-medium/large/xl, distilgpt2), HF `model_type == "gpt2"`.

Parameter names copy HF's (`ln_1`, `c_fc`, ...) except that HF's fused `c_attn` is stored
as separate `q`, `k`, `v` kernels (weights_convert/gpt2.py says why). Kernels are stored
(in, out), as in HF's Conv1D.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from spin_jax.models import core
from spin_jax.models import layers as L

# HF options we do not implement; each value is the only one we accept.
_REQUIRED = {
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    max_positions: int
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_size: int
    activation: str
    layer_norm_eps: float
    scale_attn_weights: bool = True
    model_type: str = "gpt2"
    causal: bool = True

    @classmethod
    def from_hf_config(cls, d: dict[str, Any]) -> GPT2Config:
        for key, want in _REQUIRED.items():
            if d.get(key, want) != want:
                raise L.ConfigError(
                    f"GPT-2 config option {key}={d[key]!r} is not supported (only {want!r}); "
                    "use a standard GPT-2 checkpoint."
                )
        width = d["n_embd"]
        if width % d["n_head"]:
            raise L.ConfigError(f"n_embd={width} is not divisible by n_head={d['n_head']}.")
        return cls(
            vocab_size=d["vocab_size"],
            max_positions=d["n_positions"],
            hidden_size=width,
            num_layers=d["n_layer"],
            num_heads=d["n_head"],
            ffn_size=d.get("n_inner") or 4 * width,
            activation=L.check_activation(
                d.get("activation_function", "gelu_new"), "activation_function"
            ),
            layer_norm_eps=d.get("layer_norm_epsilon", 1e-5),
            scale_attn_weights=d.get("scale_attn_weights", True),
        )


def param_shapes(c: GPT2Config, dtype=jnp.float32) -> L.Params:
    """The parameter pytree's shapes, for eval_shape and converter checks."""
    D, F, n = c.hidden_size, c.ffn_size, c.num_layers
    s, ln, lin = L.shape_builders(dtype, D, n)

    return {
        "wte": s(c.vocab_size, D),
        "wpe": s(c.max_positions, D),
        "layers": {
            "ln_1": ln(n),
            "attn": {"q": lin(D, D), "k": lin(D, D), "v": lin(D, D), "c_proj": lin(D, D)},
            "ln_2": ln(n),
            "mlp": {"c_fc": lin(D, F), "c_proj": lin(F, D)},
        },
        "ln_f": ln(),
    }


def _ln(x, p, c: GPT2Config):
    return L.layer_norm(x, p["scale"], p["bias"], c.layer_norm_eps)


def block(c: GPT2Config, x: jax.Array, mask: jax.Array, p: L.Params):
    """One pre-LN block. Returns (output [B,T,D], FFN activation [B,T,F])."""
    B, T, D = x.shape
    N = c.num_heads
    h = _ln(x, p["ln_1"], c)
    q, k, v = (L.dense(h, p["attn"][n]).reshape(B, T, N, D // N) for n in ("q", "k", "v"))
    scale = None if c.scale_attn_weights else 1.0
    att = L.attention(q, k, v, mask, causal=True, scale=scale)
    x = x + L.dense(att.reshape(B, T, D), p["attn"]["c_proj"])
    act = L.activation(c.activation)(L.dense(_ln(x, p["ln_2"], c), p["mlp"]["c_fc"]))
    return x + L.dense(act, p["mlp"]["c_proj"]), act


def embed(c: GPT2Config, params: L.Params, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    # Right padding: real tokens sit at positions 0..n-1, as in HF with its default position ids.
    T = input_ids.shape[1]
    return params["wte"][input_ids] + params["wpe"][:T][None]


def final_norm(c: GPT2Config, params: L.Params, x: jax.Array) -> jax.Array:
    return _ln(x, params["ln_f"], c)


def forward(c: GPT2Config, params, input_ids, attention_mask, *, k, pooled, use_scan):
    return core.stack_forward(
        functools.partial(block, c),
        functools.partial(embed, c),
        functools.partial(final_norm, c),
        params,
        input_ids,
        attention_mask,
        num_layers=c.num_layers,
        causal=True,
        k=k,
        pooled=pooled,
        use_scan=use_scan,
    )
