"""HF T5 (T5Model, T5ForConditionalGeneration, T5EncoderModel, T5ForSequenceClassification,
T5ForQuestionAnswering, T5ForTokenClassification) -> spin_jax parameters.

nn.Linear weights are (out, in): transposed to (in, out), then attention kernels are split
into heads, [D, N, H] for q/k/v and [N, H, D] for o (HF's head-major `view(..., N, H)`).
In "encoder" mode the decoder's tensors (and the classification head, which HF applies to
the decoder's output) are accounted for and dropped.
"""

from __future__ import annotations

import re

from spin_jax.models.layers import WeightsError
from spin_jax.models.t5 import T5Config
from weights_convert.keys import KeyTracker

PREFIXES = ("transformer.",)  # T5ForSequenceClassification / T5ForTokenClassification
IGNORE = (
    r"lm_head\.weight",
    # Tied to `shared` in every HF T5 class.
    r"(transformer\.)?(encoder|decoder)\.embed_tokens\.weight",
    # Unused table some old checkpoints carry (HF's _keys_to_ignore_on_load_unexpected).
    r"(transformer\.)?decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",
    r"qa_outputs\..*",  # T5ForQuestionAnswering: a per-token span head
    r"classifier\..*",  # T5ForTokenClassification: a per-token head
)


def _linear(t: KeyTracker, name: str):
    p = {"kernel": t.take(name + ".weight").T}
    if name + ".bias" in t.sd:
        p["bias"] = t.take(name + ".bias")
    return p


def _stack(c: T5Config, t: KeyTracker, which: str, n: int):
    D, N, H, F = c.d_model, c.num_heads, c.d_kv, c.d_ff
    block = which + ".block.{}.layer."

    def attn(base):
        out = {
            name: {
                "kernel": t.stack(f"{base}.{name}.weight", n, (D, N * H), transpose=True).reshape(
                    n, D, N, H
                )
            }
            for name in ("q", "k", "v")
        }
        out["o"] = {
            "kernel": t.stack(f"{base}.o.weight", n, (N * H, D), transpose=True).reshape(n, N, H, D)
        }
        return out

    def ln(i):
        return {"scale": t.stack(f"{block}{i}.layer_norm.weight", n, (D,))}

    ff = 2 if which == "decoder" else 1  # index of the FFN sub-layer (after cross-attention)
    names = ("wi_0", "wi_1") if c.gated else ("wi",)
    ffn = {
        w: {"kernel": t.stack(f"{block}{ff}.DenseReluDense.{w}.weight", n, (D, F), transpose=True)}
        for w in names
    }
    ffn["wo"] = {
        "kernel": t.stack(f"{block}{ff}.DenseReluDense.wo.weight", n, (F, D), transpose=True)
    }
    layers = {
        "self_attn_ln": ln(0),
        "self_attn": attn(block + "0.SelfAttention"),
        "ffn_ln": ln(ff),
        "ffn": ffn,
    }
    if which == "decoder":
        layers.update(cross_attn_ln=ln(1), cross_attn=attn(block + "1.EncDecAttention"))
    table = f"{which}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    return {
        "relative_attention_bias": t.take(table, (c.relative_attention_num_buckets, N)),
        "layers": layers,
        "final_layer_norm": {"scale": t.take(f"{which}.final_layer_norm.weight", (D,))},
    }


def _drop(t: KeyTracker, pattern: str) -> None:
    """Accounts for tensors this mode does not use (KeyTracker has no public skip)."""
    for key in t.sd:
        if re.fullmatch(pattern, key):
            t.used.add(key)


def convert(c: T5Config, t: KeyTracker):
    if t.has("shared.weight"):
        shared = t.take("shared.weight", (c.vocab_size, c.d_model))
    else:  # some T5EncoderModel saves keep only the (tied) encoder copy
        shared = t.take("encoder.embed_tokens.weight", (c.vocab_size, c.d_model))
    params = {"shared": shared, "encoder": _stack(c, t, "encoder", c.encoder_layers)}
    if c.mode == "encoder":
        _drop(t, r"(transformer\.)?decoder\..*|classification_head\..*")
        return params, None
    if not t.has("decoder.final_layer_norm.weight"):
        raise WeightsError(
            "the checkpoint has no T5 decoder weights (a T5EncoderModel?) but the config asks "
            "for the encoder-decoder stack; load it in encoder mode (T5Config mode='encoder', "
            "e.g. dataclasses.replace(config, mode='encoder'))."
        )
    params["decoder"] = _stack(c, t, "decoder", c.decoder_layers)
    head = None
    if "classification_head.out_proj.weight" in t.sd:
        # T5ForSequenceClassification: dense, tanh, out_proj on the decoder's <eos> output.
        head = (
            "t5",
            {
                "dense": _linear(t, "classification_head.dense"),
                "out": _linear(t, "classification_head.out_proj"),
            },
        )
    return params, head
