"""The layer stack shared by every family: embed, scan blocks, pool inside the scan.

Per-token activations of all layers never leave the device unless `pooled=False`: each
scan step pools its block's output and FFN activation and emits only [B, P, *].
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from spin_jax.models import layers as L


def reducer(mask: jax.Array, token_index: jax.Array, pooled: bool) -> Callable:
    if pooled:
        return lambda x: L.pool(x, mask, token_index)
    return lambda x: x


def run_stack(
    block: Callable,
    x: jax.Array,
    mask: jax.Array,
    layers: L.Params,
    reduce: Callable,
    *,
    use_scan: bool = True,
):
    """Runs `block(x, mask, p) -> (x, act)` over stacked layers.

    Returns the last hidden state [B,T,D] (unreduced) and the reduced per-layer hidden
    states [k, ...] and FFN activations [k, ...].
    """

    def body(h, p):
        h, act = block(h, mask, p)
        return h, (reduce(h), reduce(act))

    return L.scan_layers(body, x, layers, use_scan)


def stack_forward(
    block: Callable,
    embed: Callable,
    final_norm: Callable | None,
    params: L.Params,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    num_layers: int,
    causal: bool,
    k: int,
    pooled: bool,
    use_scan: bool,
) -> L.Features:
    """Forward of a single stack (GPT-2, BERT family) through its first k blocks.

    `final_norm`, if any, applies to the last hidden state only when all blocks run,
    as HF's `output_hidden_states` does.
    """
    mask = attention_mask.astype(bool)
    reduce = reducer(mask, L.token_index(mask, causal), pooled)
    x = embed(params, input_ids, mask)
    layers = L.take_layers(params["layers"], k)
    h, (hidden, ffn) = run_stack(block, x, mask, layers, reduce, use_scan=use_scan)
    if final_norm is not None and k == num_layers and k > 0:
        hidden = hidden.at[-1].set(reduce(final_norm(params, h)))
    return L.Features(hidden=jnp.concatenate([reduce(x)[None], hidden]), ffn=ffn)
