"""T5 v1.0, T5 v1.1 and Flan-T5 (HF `model_type == "t5"`), as one stack of layers.

Layers follow the paper's reference implementation: the encoder's blocks, then the decoder's.
The decoder reads the input text shifted right (`decoder_start_token_id` first, then
`input_ids[:, :-1]`) and cross-attends to the final (normed) encoder output.

Features (L = encoder_layers + decoder_layers in "encoder_decoder" mode, encoder_layers in
"encoder" mode):
  hidden[0]              encoder embedding output (HF encoder_hidden_states[0])
  hidden[1 .. Le]        encoder block outputs; hidden[Le] has the encoder's final RMS norm
                         applied (HF encoder_hidden_states[Le], when the whole encoder runs)
  hidden[Le+1 .. L]      decoder block outputs; hidden[L] has the decoder's final norm
                         (HF decoder_hidden_states[1:])
  ffn[0 .. L-1]          FFN activation of each block, encoder then decoder
The decoder's embedding output (HF decoder_hidden_states[0]) is NOT a layer here, so the
shapes stay [L+1] and [L] as in the other families.

Pooling: "token" is the first token for encoder layers and the last real token of the
decoder mask for decoder layers (causal). The decoder mask is, by `decoder_mask` (default "same"):
  "shifted": [1, mask[:, :-1]], the padding mask shifted like the ids (the decoder sees the
             start token and every real token, except a row's last token when the row fills
             the whole padded length);
  "same":    the encoder's mask (the decoder sees the start token and all real tokens but the
             last; the last real position is where HF's T5ForSequenceClassification reads
             its <eos> representation). Unlike "shifted", unchanged by extra padding.

FFN activation, by `ffn_output`: "gate" is act(x wi_0) (the reference implementation's
choice), "product" is act(x wi_0) * (x wi_1); for a non-gated FFN both are act(x wi).

Attention kernels are stored [D, N, H] (q, k, v) and [N, H, D] (o), so the einsums read
`"BTD,DNH->BTNH"`. T5 does not scale attention scores; the relative position bias comes from
layer 0's table of each stack (HF shares it) and the bucket math runs on the host in fp32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax.models import core
from spin_jax.models import layers as L

MODES = ("encoder_decoder", "encoder")
FFN_OUTPUTS = ("gate", "product")
DECODER_MASKS = ("shifted", "same")
# Config fields that may also be passed per call as forward options.
_OPTIONS = ("ffn_output", "decoder_mask")


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int
    d_model: int
    d_kv: int
    num_heads: int
    d_ff: int
    encoder_layers: int
    decoder_layers: int
    relative_attention_num_buckets: int
    relative_attention_max_distance: int
    layer_norm_epsilon: float
    activation: str  # key of layers.ACTIVATIONS ("gated-gelu" means "gelu_new", as in HF)
    gated: bool  # wi_0 / wi_1 (v1.1, Flan-T5) or a single wi (v1.0)
    decoder_start_token_id: int = 0
    mode: str = "encoder_decoder"
    ffn_output: str = "gate"
    decoder_mask: str = "same"  # see the module docstring
    model_type: str = "t5"
    causal: bool = False

    def __post_init__(self):
        for field, allowed in (
            ("mode", MODES),
            ("ffn_output", FFN_OUTPUTS),
            ("decoder_mask", DECODER_MASKS),
        ):
            if getattr(self, field) not in allowed:
                raise L.ConfigError(f"T5 {field}={getattr(self, field)!r} is not one of {allowed}.")

    @property
    def num_layers(self) -> int:
        if self.mode == "encoder":
            return self.encoder_layers
        return self.encoder_layers + self.decoder_layers

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def ffn_size(self) -> int:
        return self.d_ff

    @property
    def max_positions(self) -> None:
        return None  # relative positions: no table limits the length

    @classmethod
    def from_hf_config(cls, d: dict[str, Any]) -> T5Config:
        if d.get("is_decoder", False):
            raise L.ConfigError(
                "T5 config option is_decoder=True (a decoder-only stack) is not supported; "
                "use an encoder-decoder or encoder-only T5 checkpoint."
            )
        activation, gated = _parse_ffn(d.get("feed_forward_proj", "relu"))
        pad = d.get("pad_token_id", 0)
        start = d.get("decoder_start_token_id")
        return cls(
            vocab_size=d["vocab_size"],
            d_model=d["d_model"],
            d_kv=d["d_kv"],
            num_heads=d["num_heads"],
            d_ff=d["d_ff"],
            encoder_layers=d["num_layers"],
            decoder_layers=d.get("num_decoder_layers") or d["num_layers"],
            relative_attention_num_buckets=d.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=d.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-6),
            activation=activation,
            gated=gated,
            # T5 starts decoding with the pad token; HF 5 configs may omit the field.
            decoder_start_token_id=(pad or 0) if start is None else start,
            # T5EncoderModel saves is_encoder_decoder=False: it has no decoder to run.
            mode="encoder_decoder" if d.get("is_encoder_decoder", True) else "encoder",
        )


def _parse_ffn(proj: str) -> tuple[str, bool]:
    """HF's T5Config rule: "ACT" or "gated-ACT", with "gated-gelu" meaning gelu_new."""
    parts = proj.split("-")
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or act not in L.ACTIVATIONS:
        raise L.ConfigError(
            f"T5 config option feed_forward_proj={proj!r} is not supported; use 'ACT' or "
            f"'gated-ACT' with ACT in {sorted(L.ACTIVATIONS)}."
        )
    return act, len(parts) == 2


def param_shapes(c: T5Config, dtype=jnp.float32) -> L.Params:
    """The parameter pytree's shapes, for eval_shape and converter checks."""
    D, N, H, F = c.d_model, c.num_heads, c.d_kv, c.d_ff

    def s(*shape):
        return jax.ShapeDtypeStruct(shape, dtype)

    def attn(n):
        return {
            "q": {"kernel": s(n, D, N, H)},
            "k": {"kernel": s(n, D, N, H)},
            "v": {"kernel": s(n, D, N, H)},
            "o": {"kernel": s(n, N, H, D)},
        }

    def stack(n, cross):
        wi = (
            {"wi_0": {"kernel": s(n, D, F)}, "wi_1": {"kernel": s(n, D, F)}}
            if c.gated
            else {"wi": {"kernel": s(n, D, F)}}
        )
        layers = {
            "self_attn_ln": {"scale": s(n, D)},
            "self_attn": attn(n),
            "ffn_ln": {"scale": s(n, D)},
            "ffn": {**wi, "wo": {"kernel": s(n, F, D)}},
        }
        if cross:
            layers.update(cross_attn_ln={"scale": s(n, D)}, cross_attn=attn(n))
        return {
            "relative_attention_bias": s(c.relative_attention_num_buckets, N),
            "layers": layers,
            "final_layer_norm": {"scale": s(D)},
        }

    params = {"shared": s(c.vocab_size, D), "encoder": stack(c.encoder_layers, False)}
    if c.mode == "encoder_decoder":
        params["decoder"] = stack(c.decoder_layers, True)
    return params


def relative_position_bucket(
    relative_position: np.ndarray, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """HF / Mesh TensorFlow's bucketing of (key - query) distances, in fp32 like HF."""
    rel = np.asarray(relative_position, np.int64)
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    ratio = np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact)
    scale = np.float32(math.log(max_distance / max_exact))
    large = max_exact + (np.log(ratio) / scale * np.float32(num_buckets - max_exact)).astype(
        np.int64
    )
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(rel < max_exact, rel, large)


def relative_bias(c: T5Config, table: jax.Array, T: int, S: int, bidirectional: bool):
    """Bias [1, N, T, S] in fp32 from a stack's bucket table [buckets, N]."""
    rel = np.arange(S)[None, :] - np.arange(T)[:, None]
    buckets = relative_position_bucket(
        rel, bidirectional, c.relative_attention_num_buckets, c.relative_attention_max_distance
    )
    return jnp.einsum("TSN->NTS", table.astype(jnp.float32)[buckets])[None]


def _rms(c: T5Config, x, p):
    return L.rms_norm(x, p["scale"], c.layer_norm_epsilon)


def _attend(p, x, kv, bias, key_mask):
    """T5 attention: no score scaling, additive bias [1, N, T, S], key_mask [B, S]."""
    q = jnp.einsum("BTD,DNH->BTNH", x, p["q"]["kernel"].astype(x.dtype))
    k = jnp.einsum("BSD,DNH->BSNH", kv, p["k"]["kernel"].astype(x.dtype))
    v = jnp.einsum("BSD,DNH->BSNH", kv, p["v"]["kernel"].astype(x.dtype))
    out = L.biased_attention(q, k, v, bias, key_mask)
    return jnp.einsum("BTNH,NHD->BTD", out, p["o"]["kernel"].astype(x.dtype))


def _ffn(c: T5Config, x, p):
    """Returns (FFN output [B,T,D], FFN activation [B,T,F])."""
    act = L.activation(c.activation)
    if c.gated:
        gate = act(jnp.einsum("BTD,DF->BTF", x, p["wi_0"]["kernel"].astype(x.dtype)))
        h = gate * jnp.einsum("BTD,DF->BTF", x, p["wi_1"]["kernel"].astype(x.dtype))
        feature = gate if c.ffn_output == "gate" else h
    else:
        h = feature = act(jnp.einsum("BTD,DF->BTF", x, p["wi"]["kernel"].astype(x.dtype)))
    return jnp.einsum("BTF,FD->BTD", h, p["wo"]["kernel"].astype(x.dtype)), feature


def encoder_block(c: T5Config, bias, x, mask, p):
    """Pre-norm self-attention and FFN. Returns (output [B,T,D], FFN activation [B,T,F])."""
    h = _rms(c, x, p["self_attn_ln"])
    x = x + _attend(p["self_attn"], h, h, bias, mask)
    out, act = _ffn(c, _rms(c, x, p["ffn_ln"]), p["ffn"])
    return x + out, act


def decoder_block(c: T5Config, bias, enc, enc_mask, x, mask, p):
    """Causal self-attention (bias includes the causal mask), cross-attention, FFN."""
    h = _rms(c, x, p["self_attn_ln"])
    x = x + _attend(p["self_attn"], h, h, bias, mask)
    h = _rms(c, x, p["cross_attn_ln"])
    x = x + _attend(p["cross_attn"], h, enc, jnp.zeros((1, 1, 1, 1), jnp.float32), enc_mask)
    out, act = _ffn(c, _rms(c, x, p["ffn_ln"]), p["ffn"])
    return x + out, act


def _run(c: T5Config, block, x, mask, stack, *, n, reduce, use_scan, final: bool):
    """First n blocks of a stack; its final norm on the last output when `final`."""
    if n == 0:  # an empty Python loop has nothing to stack
        B, T, _ = x.shape
        hid = jax.eval_shape(reduce, x)
        act = jax.eval_shape(reduce, jax.ShapeDtypeStruct((B, T, c.d_ff), x.dtype))
        return x, jnp.zeros((0, *hid.shape), hid.dtype), jnp.zeros((0, *act.shape), act.dtype)
    layers = L.take_layers(stack["layers"], n)
    h, (hidden, ffn) = core.run_stack(block, x, mask, layers, reduce, use_scan=use_scan)
    if final:
        h = _rms(c, h, stack["final_layer_norm"])
        hidden = hidden.at[-1].set(reduce(h))
    return h, hidden, ffn


def decoder_mask(c: T5Config, mask: jax.Array) -> jax.Array:
    """The decoder layers' mask [B, T] bool, by `c.decoder_mask` (module docstring)."""
    if c.decoder_mask == "shifted":
        return jnp.concatenate([jnp.ones_like(mask[:, :1]), mask[:, :-1]], axis=1)
    return mask


def decoder_of(c: T5Config):
    """(first decoder block layer, the decoder layers' mask from the input mask), or None
    in encoder mode: how a decoder layer's positions relate to the input's (explain)."""
    if c.num_layers <= c.encoder_layers:
        return None
    return c.encoder_layers + 1, functools.partial(decoder_mask, c)


def forward(c: T5Config, params, input_ids, attention_mask, *, k, pooled, use_scan, **options):
    """Features of the first k layers (encoder blocks, then decoder blocks).

    k <= encoder_layers runs only the encoder (its final norm only when k == encoder_layers);
    a larger k runs the whole encoder (normed, for cross-attention) and k - encoder_layers
    decoder blocks (the decoder's final norm only when all run).
    `options` may override `ffn_output` and `decoder_mask` for this call.
    """
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise L.ConfigError(f"unknown T5 forward options {sorted(unknown)}; known: {_OPTIONS}.")
    c = dataclasses.replace(c, **options)
    B, T = input_ids.shape
    Le = c.encoder_layers
    mask = attention_mask.astype(bool)
    reduce = core.reducer(mask, jnp.zeros(B, jnp.int32), pooled)
    x = params["shared"][input_ids]
    enc = params["encoder"]
    bias = relative_bias(c, enc["relative_attention_bias"], T, T, bidirectional=True)
    ke = min(k, Le)
    block = functools.partial(encoder_block, c, bias)
    h, hidden, ffn = _run(
        c, block, x, mask, enc, n=ke, reduce=reduce, use_scan=use_scan, final=ke == Le
    )
    hidden = [reduce(x)[None], hidden]
    ffn = [ffn]
    if k > Le:
        dec = params["decoder"]
        start = jnp.full((B, 1), c.decoder_start_token_id, input_ids.dtype)
        dec_ids = jnp.concatenate([start, input_ids[:, :-1]], axis=1)
        dec_mask = decoder_mask(c, mask)
        dec_reduce = core.reducer(dec_mask, L.last_token_index(dec_mask), pooled)
        dbias = relative_bias(c, dec["relative_attention_bias"], T, T, bidirectional=False)
        causal = jnp.tril(jnp.ones((T, T), bool))
        dbias = jnp.where(causal, dbias, jnp.finfo(jnp.float32).min)
        block = functools.partial(decoder_block, c, dbias, h, mask)
        kd = k - Le
        _, dhidden, dffn = _run(
            c,
            block,
            params["shared"][dec_ids],
            dec_mask,
            dec,
            n=kd,
            reduce=dec_reduce,
            use_scan=use_scan,
            final=kd == c.decoder_layers,
        )
        hidden.append(dhidden)
        ffn.append(dffn)
    return L.Features(hidden=jnp.concatenate(hidden), ffn=jnp.concatenate(ffn))
