"""HF GPT-2 -> spin_jax parameters. HF's Conv1D weights are already (in, out).

HF's fused `c_attn` (in, 3 * out) is split into q, k and v kernels: three matmuls write
q, k and v where cuDNN's attention reads them, where one fused matmul's output had to be
copied apart (GPT2-XL on an H100: -2.4% per batch, benchmarks/RESULTS.md).
"""

from __future__ import annotations

from spin_jax.models.gpt2 import GPT2Config
from weights_convert.keys import KeyTracker

PREFIXES = ("transformer.",)
IGNORE = (r"lm_head\.weight", r".*attn\.bias", r".*attn\.masked_bias")


def convert(c: GPT2Config, t: KeyTracker):
    D, F, n = c.hidden_size, c.ffn_size, c.num_layers

    def ln(name, layered=True):
        if layered:
            return {
                "scale": t.stack(f"h.{{}}.{name}.weight", n, (D,)),
                "bias": t.stack(f"h.{{}}.{name}.bias", n, (D,)),
            }
        return {"scale": t.take(f"{name}.weight", (D,)), "bias": t.take(f"{name}.bias", (D,))}

    def lin(name, i, o):
        return {
            "kernel": t.stack(f"h.{{}}.{name}.weight", n, (i, o)),
            "bias": t.stack(f"h.{{}}.{name}.bias", n, (o,)),
        }

    def qkv():
        fused = lin("attn.c_attn", D, 3 * D)
        return {
            name: {
                "kernel": fused["kernel"][..., i * D : (i + 1) * D],
                "bias": fused["bias"][..., i * D : (i + 1) * D],
            }
            for i, name in enumerate(("q", "k", "v"))
        }

    params = {
        "wte": t.take("wte.weight", (c.vocab_size, D)),
        "wpe": t.take("wpe.weight", (c.max_positions, D)),
        "layers": {
            "ln_1": ln("ln_1"),
            "attn": {**qkv(), "c_proj": lin("attn.c_proj", D, D)},
            "ln_2": ln("ln_2"),
            "mlp": {"c_fc": lin("mlp.c_fc", D, F), "c_proj": lin("mlp.c_proj", F, D)},
        },
        "ln_f": ln("ln_f", layered=False),
    }
    head = None
    if "score.weight" in t.sd:
        # GPT2ForSequenceClassification: a bias-free linear layer on the last real token.
        head = ("linear", {"out": {"kernel": t.take("score.weight").T}})
    return params, head
