"""HF BERT / RoBERTa / DistilBERT -> spin_jax parameters. nn.Linear weights are (out, in)."""

from __future__ import annotations

from spin_jax.models.bert import BertConfig
from weights_convert.keys import KeyTracker

PREFIXES = {"bert": ("bert.",), "roberta": ("roberta.",), "distilbert": ("distilbert.",)}
IGNORE = (
    r".*position_ids",
    r".*token_type_ids",
    r"(cls|lm_head|vocab_transform|vocab_layer_norm|"
    r"vocab_projector|qa_outputs|dropout)\..*",
    r"(bert\.|roberta\.)?pooler\..*",
)

# HF names of each of our layer leaves: (bert/roberta name, distilbert name).
_LAYER_NAMES = {
    "q": ("attention.self.query", "attention.q_lin"),
    "k": ("attention.self.key", "attention.k_lin"),
    "v": ("attention.self.value", "attention.v_lin"),
    "o": ("attention.output.dense", "attention.out_lin"),
    "attn_ln": ("attention.output.LayerNorm", "sa_layer_norm"),
    "ffn_in": ("intermediate.dense", "ffn.lin1"),
    "ffn_out": ("output.dense", "ffn.lin2"),
    "ffn_ln": ("output.LayerNorm", "output_layer_norm"),
}


def _layers(c: BertConfig, t: KeyTracker):
    D, F, n = c.hidden_size, c.ffn_size, c.num_layers
    distil = c.model_type == "distilbert"
    root = "transformer.layer.{}." if distil else "encoder.layer.{}."
    shapes = {
        "q": (D, D),
        "k": (D, D),
        "v": (D, D),
        "o": (D, D),
        "ffn_in": (D, F),
        "ffn_out": (F, D),
    }
    out = {}
    for ours, names in _LAYER_NAMES.items():
        base = root + names[distil]
        if ours.endswith("_ln"):
            out[ours] = {
                "scale": t.stack(base + ".weight", n, (D,)),
                "bias": t.stack(base + ".bias", n, (D,)),
            }
        else:
            i, o = shapes[ours]
            out[ours] = {
                "kernel": t.stack(base + ".weight", n, (i, o), transpose=True),
                "bias": t.stack(base + ".bias", n, (o,)),
            }
    out["attn"] = {k: out.pop(k) for k in ("q", "k", "v", "o")}
    return out


def _embeddings(c: BertConfig, t: KeyTracker):
    D = c.hidden_size
    emb = {
        "word": t.take("embeddings.word_embeddings.weight", (c.vocab_size, D)),
        "position": t.take("embeddings.position_embeddings.weight", (c.max_position_embeddings, D)),
        "ln": {
            "scale": t.take("embeddings.LayerNorm.weight", (D,)),
            "bias": t.take("embeddings.LayerNorm.bias", (D,)),
        },
    }
    if c.type_vocab_size:
        emb["token_type"] = t.take(
            "embeddings.token_type_embeddings.weight", (c.type_vocab_size, D)
        )
    return emb


def _linear(t: KeyTracker, name: str):
    p = {"kernel": t.take(name + ".weight").T}
    if name + ".bias" in t.sd:
        p["bias"] = t.take(name + ".bias")
    return p


def _head(c: BertConfig, t: KeyTracker):
    """The classification head of a *ForSequenceClassification checkpoint, if present."""
    sd = t.sd
    if c.model_type == "roberta" and "classifier.out_proj.weight" in sd:
        return "roberta", {
            "dense": _linear(t, "classifier.dense"),
            "out": _linear(t, "classifier.out_proj"),
        }
    if c.model_type == "distilbert" and "classifier.weight" in sd:
        return "distilbert", {
            "dense": _linear(t, "pre_classifier"),
            "out": _linear(t, "classifier"),
        }
    if c.model_type == "bert" and "classifier.weight" in sd:
        return "bert", {
            "dense": _linear(t, t.prefix + "pooler.dense"),
            "out": _linear(t, "classifier"),
        }
    return None


def convert(c: BertConfig, t: KeyTracker):
    params = {"embeddings": _embeddings(c, t), "layers": _layers(c, t)}
    return params, _head(c, t)
