"""Token-level explanations: each token's additive share of a SPIN head's logits.

The head is linear in its pooled features, so its logits split exactly over the tokens.
For a kept column j with training mean mu_j:
  mean-pooled:   each of the n real tokens t gets (x_tj - mu_j) / n;
  max-pooled:    the token where the maximum is reached gets x_tj - mu_j;
  single token:  that token (the first, or GPT-2's last real one) gets x_tj - mu_j;
each divided by the column's std and times its weights. Summed over the tokens and added to
the intercept, the shares are the text's logits (to float rounding). For a mean-pooled head
a token's share is the head applied to that token, over n: the paper's per-token reading.
Max and single-token columns are credited to the one token their value comes from; applying
their weights to every token's value instead puts each token many standard deviations from
the pooled statistics the head was trained on, and saturates every token's probability.

T5 decoder layers: decoder position p reads input token p - 1 (the start token at p = 0);
its share is credited to the token it reads, and the start token's to the first token.
"""

from __future__ import annotations

import jax.numpy as jnp

from spin_jax.columns import store_layer
from spin_jax.models import POOLINGS, decoder_of, single_token_index
from spin_jax.models.layers import last_token_index

TOKEN, MEAN, MAX = (POOLINGS.index(p) for p in ("token", "mean", "max"))


def split_logits(config, k, sel, x, mask):
    """[B, T, K]: each input position's share of the head's logits (0 at padding).

    x [B, T, M] are the kept neurons per token, standardised (inference._kept);
    `sel` is inference.selection(head): the kept columns, hidden first, then FFN.
    """
    return jnp.einsum("btm,mk->btk", column_shares(config, k, sel, x, mask), sel["weights"])


def split_logits_by_layer(config, k, sel, x, mask):
    """[B, T, max(k, 1), K]: split_logits further split by the block layer (1..k) of each column,
    so that summing layers 1..j gives the share of the columns read from the first j blocks
    (a hidden layer-0 column, the embeddings, counts with layer 1)."""
    block = jnp.concatenate(  # sel holds store indices: back to block layers
        [sel["h_layer"] - store_layer("hidden", 0), sel["f_layer"] - store_layer("ffn", 0)]
    )
    # A head of the embeddings alone (k = 0) still gets one depth: layer 1's, holding them.
    depth = jnp.arange(1, max(k, 1) + 1)
    onehot = (jnp.maximum(block, 1)[:, None] == depth).astype(jnp.float32)
    share = column_shares(config, k, sel, x, mask)
    return jnp.einsum("btm,mk,mj->btjk", share, sel["weights"], onehot)


def column_shares(config, k, sel, x, mask):
    """[B, T, M]: each input position's share of each kept column's value (its standardised
    value, credited as the module docstring says); 0 at padding."""
    pool = jnp.concatenate([sel["h_pool"], sel["f_pool"]])
    m = mask.astype(bool)
    share = _shares(x, pool, m, single_token_index(config, m))
    decoder = decoder_of(config)
    if decoder is not None and k >= decoder[0]:
        first, decoder_mask = decoder
        dm = decoder_mask(m)
        on_decoder = _read_positions(_shares(x, pool, dm, last_token_index(dm)))
        from_decoder = jnp.concatenate(  # sel holds store indices (columns.store_layer)
            [
                sel["h_layer"] >= store_layer("hidden", first),
                sel["f_layer"] >= store_layer("ffn", first),
            ]
        )
        share = jnp.where(from_decoder, on_decoder, share)
    return share


def _shares(centred, pool, mask, token_index):
    """[B, T, M] shares of the standardised values over the positions `mask` marks real."""
    real = mask[..., None]
    count = jnp.maximum(mask.sum(-1), 1)[:, None, None].astype(jnp.float32)
    mean = jnp.where(real, centred, 0.0) / count
    pos = jnp.arange(mask.shape[1])[None, :, None]
    top = jnp.argmax(jnp.where(real, centred, -jnp.inf), axis=1)[:, None]  # first maximum
    at_max = jnp.where(pos == top, centred, 0.0)
    at_token = jnp.where(pos == token_index[:, None, None], centred, 0.0)
    return jnp.where(pool == TOKEN, at_token, jnp.where(pool == MEAN, mean, at_max))


def _read_positions(share):
    """Decoder position p's share moved to input token p - 1; position 0's to token 0."""
    moved = jnp.concatenate([share[:, 1:], jnp.zeros_like(share[:, :1])], axis=1)
    return moved.at[:, 0].add(share[:, 0])
