"""Layers shared by every model family.

Einsum legend, used by every model file:
  B batch, T query length, S key length, N heads, H head dim, D model width,
  F FFN width, L layers, P poolings, V vocabulary.

Dtype policy: parameters and matmuls run in the model's compute dtype (fp32 or bf16);
layer norms, softmax and pooling accumulate in fp32 and cast back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from spin_jax.errors import ConfigError, InputError, WeightsError  # noqa: F401
from spin_jax.models import pooling

Array = jax.Array
Params = dict[str, Any]

# Order of the P axis of pooled features. "token" is the first token ([CLS], <s>) for
# bidirectional layers and the last real token for causal ones (GPT-2, the T5 decoder).
POOLINGS = ("token", "mean", "max")


@flax.struct.dataclass
class Features:
    """Per-layer activations of one forward pass.

    Pooled:    hidden [L+1, B, P, D], ffn [L, B, P, F]   (P ordered as POOLINGS)
    Per token: hidden [L+1, B, T, D], ffn [L, B, T, F]
    hidden[0] is the embedding output, hidden[i] the output of block i (HF's
    output_hidden_states); ffn[i] is the output of block i's FFN activation function.
    """

    hidden: Array
    ffn: Array


def exact_gelu(x: Array) -> Array:
    """GELU with the exact erf (HF "gelu"), written with erf rather than jax.nn.gelu's erfc.

    Same function; but erfc expands to a much longer polynomial, which XLA split across
    ~17 fp32 fusions when the activation is also pooled: 6.5x slower BERT-base extraction
    on H100 (benchmarks/profile_pooling.py).
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1 / np.sqrt(2))).astype(x.dtype))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": exact_gelu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable[[Array], Array]:
    return ACTIVATIONS[name]


def check_activation(name: str, field: str) -> str:
    if name not in ACTIVATIONS:
        raise ConfigError(
            f"config.{field}={name!r} is not supported; supported: {sorted(ACTIVATIONS)}. "
            "Use a checkpoint with one of these activations."
        )
    return name


def layer_norm(x: Array, scale: Array, bias: Array | None, eps: float) -> Array:
    """LayerNorm in fp32, cast back to the input dtype."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
    """T5's RMS norm (no mean subtraction, no bias) in fp32."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


def dense(x: Array, p: Params) -> Array:
    """x @ kernel + bias with kernel stored (in, out).

    In fp32 at "highest" matmul precision (the parity tests', and a user's who wants HF's
    numbers to the last digits) the contraction is summed with compensation
    (`compensated_matmul`); otherwise it is one plain matmul.
    """
    kernel = p["kernel"].astype(x.dtype)
    if x.dtype == jnp.float32 and full_fp32():
        y = compensated_matmul(x, kernel)
    else:
        y = jnp.einsum("...D,DF->...F", x, kernel)
    if "bias" in p:
        y = y + p["bias"].astype(x.dtype)
    return y


_FULL_FP32 = frozenset({"highest", "float32"})


def full_fp32() -> bool:
    """Is the configured default matmul precision full fp32 ("highest" / "float32")?"""
    return str(jax.config.jax_default_matmul_precision).lower() in _FULL_FP32


def compensated_matmul(x: Array, kernel: Array, block: int = 8) -> Array:
    """fp32 x @ kernel whose sum over D is accurate to about an ulp of the result.

    A plain fp32 dot accumulates its D products in one running sum (XLA's CPU dot does so
    sequentially; cuBLAS per thread): at D=384 and values near 20 that costs 5-12 ulps, more
    than HF torch's own fp32 error against float64 on the same layers. Here blocks of
    `block` products are summed by small matmuls and the block sums are added with
    Neumaier's compensation. Measured on the real all-MiniLM-L6-v2 against HF in float64:
    FFN max error 9.2e-6 (plain, CPU) and 1.2e-5 (plain, H200) -> 3.6e-6 (torch fp32:
    1.0e-5 CPU, 2.1e-5 H200).
    """
    D, F = x.shape[-1], kernel.shape[-1]
    if D % block or D < 2 * block:
        return jnp.einsum("...D,DF->...F", x, kernel)
    ks = kernel.reshape(D // block, block, F)  # [n, block, F]
    rows = x.reshape(-1, D)
    if jax.default_backend() == "cpu":
        chunk = max(1, CHUNK_PARTIALS // (D // block * F))
        y = map_rows(lambda xr: _compensated_rows(xr, ks), (rows,), chunk)
    else:
        y = _compensated_scan(rows, ks)
    return y.reshape(*x.shape[:-1], F)


# Block sums [n, rows, F] per chunk of rows of the CPU compensated matmul: 2 MB, so that the
# sums and the compensation stay in cache. On 2 CPU cores (benchmarks/cpu_block.py, the
# MiniLM's 32768 x 384 @ 384 x 1536) the unchunked scan took 5.5-6.4 s against 0.55-0.7 s
# for the plain dot (its two [M, F] accumulators went through memory once per block of 8);
# chunks of 4 rows with the compensation unrolled take 1.0-1.4 s, bit for bit the same.
CHUNK_PARTIALS = 1 << 19


def _neumaier(carry, v):
    s, c = carry
    t = s + v
    c = c + jnp.where(jnp.abs(s) >= jnp.abs(v), (s - t) + v, (v - t) + s)
    return (t, c), None


def _compensated_rows(x: Array, ks: Array) -> Array:
    """x [M, D] @ ks [n, block, F], all n block sums at once, then added with compensation
    in one unrolled pass (a scan step per block cost ~5 us of loop overhead each on CPU)."""
    parts = jnp.einsum("Mnd,ndF->nMF", x.reshape(x.shape[0], *ks.shape[:2]), ks)
    init = (parts[0], jnp.zeros_like(parts[0]))
    (s, c), _ = jax.lax.scan(_neumaier, init, parts[1:], unroll=True)
    return s + c


def _compensated_scan(x: Array, ks: Array) -> Array:
    """The same sum, one block a scan step (two [M, F] accumulators of memory, not n)."""
    xs = jnp.moveaxis(x.reshape(x.shape[0], *ks.shape[:2]), 1, 0)  # [n, M, block]

    def add(carry, blk):
        return _neumaier(carry, jnp.einsum("Md,dF->MF", *blk))

    first = jnp.einsum("Md,dF->MF", xs[0], ks[0])
    (s, c), _ = jax.lax.scan(add, (first, jnp.zeros_like(first)), (xs[1:], ks[1:]))
    return s + c


def map_rows(f: Callable, rows: tuple, chunk: int) -> Array:
    """f(*rows) computed `chunk` rows (leading axis) at a time by lax.map, the remainder as
    one more call, for an f whose rows are independent: what f holds per chunk then fits in
    a CPU's caches between its steps. A divisor of the rows down to half of `chunk` is taken
    instead where there is one (extraction's batches mostly have one), so that no remainder
    compiles a second copy of f."""
    B = rows[0].shape[0]
    if B <= chunk:
        return f(*rows)
    even = max(d for d in range(1, chunk + 1) if B % d == 0)
    chunk = even if 2 * even >= chunk else chunk
    n = B // chunk
    out = jax.lax.map(
        lambda r: f(*r), tuple(a[: n * chunk].reshape(n, chunk, *a.shape[1:]) for a in rows)
    )
    out = out.reshape(n * chunk, *out.shape[2:])
    if n * chunk == B:
        return out
    return jnp.concatenate([out, f(*(a[n * chunk :] for a in rows))])


def attention(
    q: Array, k: Array, v: Array, key_mask: Array, *, causal: bool, scale: float | None = None
) -> Array:
    """Multi-head attention, q [B,T,N,H], k/v [B,S,N,H], key_mask [B,S] bool (right-padded).

    On GPU in bf16/fp16 this is cuDNN's fused flash attention, told the real lengths; on
    CPU `chunked_attention`; elsewhere (and in fp32 on GPU, for exact parity) XLA's
    attention with an fp32 softmax.
    """
    if jax.default_backend() == "cpu":
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return chunked_attention(q, k, v, key_mask, causal=causal, scale=scale)
    if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        lengths = key_mask.sum(-1, dtype=jnp.int32)
        try:
            return jax.nn.dot_product_attention(
                q,
                k,
                v,
                is_causal=causal,
                scale=scale,
                query_seq_lengths=lengths,
                key_value_seq_lengths=lengths,
                implementation="cudnn",
            )
        except (NotImplementedError, ValueError, RuntimeError):
            pass  # a shape or dtype cuDNN does not take: fall through to XLA
    mask = key_mask[:, None, None, :]
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal, scale=scale, implementation="xla"
    )


def biased_attention(q: Array, k: Array, v: Array, bias: Array, key_mask: Array) -> Array:
    """Attention with an additive bias [1, N, T, S] and no score scaling (T5)."""
    if jax.default_backend() == "cpu":
        return chunked_attention(q, k, v, key_mask, causal=False, scale=1.0, bias=bias)
    logits = jnp.einsum("BTNH,BSNH->BNTS", q, k, preferred_element_type=jnp.float32)
    logits = logits + bias.astype(jnp.float32)
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("BNTS,BSNH->BTNH", weights, v)


# fp32 scores per chunk of rows in chunked_attention: 4 MB, about what a core's caches hold.
# On 2 CPU cores (benchmarks/cpu_block.py) the MiniLM's attention at 256 x 128 tokens took
# 0.46-0.53 s a layer over the whole batch (its [B,N,T,S] scores and softmax go through
# memory several times) and 0.17-0.25 s in chunks of 4 rows; at 64 x 512, 1.8 -> 0.7 s.
CHUNK_SCORES = 1 << 20


def chunked_attention(q, k, v, key_mask, *, causal: bool, scale: float, bias=None) -> Array:
    """`_attend` over chunks of rows (map_rows), so that a chunk's scores [c,N,T,S] stay in
    cache between the score matmul, the softmax and the value matmul. bias, if any, is
    [1, N, T, S] (shared by every row)."""
    B, T, N, _ = q.shape
    chunk = max(1, CHUNK_SCORES // (N * T * k.shape[1]))
    attend = functools.partial(_attend, bias=bias, causal=causal, scale=scale)
    return map_rows(attend, (q, k, v, key_mask), chunk)


def _attend(q, k, v, key_mask, *, bias, causal: bool, scale: float) -> Array:
    """Attention in [B,N,T,*] layout (XLA's CPU batched dots run ~1.5-2x faster on it than on
    [B,T,N,H]): fp32 scores and softmax, whose normalisation divides the [B,N,T,H] output
    rather than the [B,N,T,S] weights."""
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))  # [B,N,T,H]
    s = jnp.einsum("BNTH,BNSH->BNTS", q, k, preferred_element_type=jnp.float32)
    if scale != 1.0:
        s = s * np.float32(scale)
    if bias is not None:
        s = s + bias.astype(jnp.float32)
    keep = key_mask[:, None, None, :]
    if causal:
        keep = keep & jnp.tril(jnp.ones((q.shape[2], k.shape[2]), bool))
    s = jnp.where(keep, s, jnp.finfo(jnp.float32).min)
    e = jnp.exp(s - s.max(-1, keepdims=True))
    o = jnp.einsum("BNTS,BNSH->BNTH", e.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return jnp.swapaxes(o / e.sum(-1)[..., None], 1, 2).astype(v.dtype)


def pool(x: Array, mask: Array, token_index: Array) -> Array:
    """Pools x [B,T,D] over real tokens into [B,P,D] (fp32), P ordered as POOLINGS.

    mask [B,T] bool marks real tokens (right-padded); token_index [B] picks the single token.
    Rows with no real token get zeros, never NaN or -inf. On GPU, mean and max are one
    kernel that reads x in place (models/pooling.py).
    """
    if pooling.kernel_applies(x):
        mean, mx = pooling.mean_max(x, mask.sum(-1, dtype=jnp.int32))
        return jnp.stack([_token(x, token_index), mean, mx], axis=1)
    return pool_jnp(x, mask, token_index)


def pool_jnp(x: Array, mask: Array, token_index: Array) -> Array:
    """`pool` as jnp reductions (any backend, any shape)."""
    x32 = x.astype(jnp.float32)
    m = mask[..., None]
    count = jnp.maximum(mask.sum(-1, dtype=jnp.float32), 1.0)[:, None]
    mean = jnp.where(m, x32, 0.0).sum(1) / count
    mx = jnp.where(m, x32, -jnp.inf).max(1)
    mx = jnp.where(mask.any(-1, keepdims=True), mx, 0.0)
    return jnp.stack([_token(x, token_index), mean, mx], axis=1)


def _token(x: Array, token_index: Array) -> Array:
    """x [B,T,D] at one token per row, token_index [B], as fp32 [B,D]."""
    return jnp.take_along_axis(x, token_index[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def last_token_index(mask: Array) -> Array:
    """Index of the last real token of each right-padded row."""
    return jnp.maximum(mask.sum(-1) - 1, 0).astype(jnp.int32)


def token_index(mask: Array, causal: bool) -> Array:
    """The "token" pooling's position per row: the last real token of a causal stack (it
    has read the whole text), the first ([CLS], <s>) of a bidirectional one."""
    if causal:
        return last_token_index(mask)
    return jnp.zeros(mask.shape[0], jnp.int32)


def scan_layers(body, carry, layers: Params, use_scan: bool = True):
    """lax.scan over stacked layer params, or an equivalent Python loop (for tests)."""
    if use_scan:
        return jax.lax.scan(body, carry, layers)
    n = jax.tree.leaves(layers)[0].shape[0]
    outs = []
    for i in range(n):
        carry, out = body(carry, jax.tree.map(lambda p, i=i: p[i], layers))
        outs.append(out)
    return carry, jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def take_layers(layers: Params, k: int) -> Params:
    return jax.tree.map(lambda p: p[:k], layers)


def num_stacked(layers: Params) -> int:
    return int(jax.tree.leaves(layers)[0].shape[0])


def shape_builders(dtype, width: int, n_layers: int):
    """Helpers for param_shapes: s(*shape), ln(*lead) (scale+bias), lin(i, o) (stacked)."""

    def s(*shape):
        return jax.ShapeDtypeStruct(shape, dtype)

    def ln(*lead):
        return {"scale": s(*lead, width), "bias": s(*lead, width)}

    def lin(i, o):
        return {"kernel": s(n_layers, i, o), "bias": s(n_layers, o)}

    return s, ln, lin


def cast_params(params: Params, dtype) -> Params:
    """Casts floating-point leaves to dtype (ints, e.g. position ids, are kept)."""

    def cast(p):
        p = jnp.asarray(p)
        return p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p

    return jax.tree.map(cast, params)


def check_shapes(ids_shape, mask_shape, max_positions: int | None) -> None:
    """What can be checked of the inputs while a program is traced: [batch, tokens] ids
    and mask of one shape, no longer than the model's position table."""
    if len(ids_shape) != 2 or tuple(mask_shape) != tuple(ids_shape):
        raise InputError(
            f"input_ids {tuple(ids_shape)} and attention_mask {tuple(mask_shape)} must both "
            "be [batch, tokens]."
        )
    if max_positions is not None and ids_shape[1] > max_positions:
        raise InputError(
            f"sequence length {ids_shape[1]} exceeds the model's position table "
            f"({max_positions}); truncate with max_length={max_positions}."
        )


def check_inputs(input_ids, attention_mask, vocab_size: int, max_positions: int | None):
    """Host-side validation with messages that name the problem and the fix: the shapes
    (check_shapes), then the values."""
    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask)
    check_shapes(ids.shape, mask.shape, max_positions)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise InputError(
            f"token ids must lie in [0, {vocab_size}); got min {ids.min()}, max {ids.max()}. "
            "Use the model's own tokenizer."
        )
    if mask.size and np.any(np.diff((mask != 0).astype(np.int8), axis=1) > 0):
        raise InputError(
            "attention_mask must be right-padded (real tokens first, then padding); found "
            "padding before a real token. Tokenize with padding_side='right'."
        )
