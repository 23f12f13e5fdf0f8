"""Inference on texts: device programs that run a classifier's first k blocks, read only
its kept neurons and apply its head, batched by the runner that extraction uses (runner.py:
length buckets, a token budget, rows split over the local devices).

Several heads fitted on one model share one forward (`heads_logits`): it runs to the
deepest layer any of them needs, and each head reads its own kept neurons from it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax.columns import reciprocal, take
from spin_jax.explain import split_logits
from spin_jax.extraction import warn_truncated
from spin_jax.head import SpinHead
from spin_jax.models import forward_program
from spin_jax.programs import compiler_options, data_parallel
from spin_jax.runner import BatchRunner
from spin_jax.text import encode

STATIC = ("config", "k")  # the programs' static arguments


@functools.cache
def program(fn, mesh=None):
    """`fn(params, ids, mask, aux, *, config, k)` jitted with the extraction program's XLA
    options (the forward is the same; programs.compiler_options says why), data-parallel
    over `mesh` when one is given."""
    body = fn if mesh is None else data_parallel(fn, mesh)
    return jax.jit(body, static_argnames=STATIC, compiler_options=compiler_options())


def _kept(f, sel, *, pooled: bool):
    """A head's kept neurons of the forward's features `f`, standardised: [B, M] (pooled,
    each column at its own pooling) or [B, T, M] (per token)."""
    # Per token, every pooling of a neuron is the token's value: [B, T, M]; pooled [B, M].
    x = take(f.hidden, f.ffn, sel, by_pool=pooled).astype(jnp.float32)
    return (x - sel["mean"]) * sel["inv_std"]  # as columns.standardize_columns


def _head_apply(x, sel):
    return jnp.einsum("...M,MK->...K", x, sel["weights"]) + sel["intercept"]


head_apply = jax.jit(_head_apply)


def _heads_logits(params, ids, mask, sels, *, config, k):
    """Runs k blocks once; each head of `sels` reads its kept neurons: (logits [B, K],
    ...), one per head."""
    f = forward_program(config, params, ids, mask, num_layers=k, pooled=True)
    return tuple(_head_apply(_kept(f, sel, pooled=True), sel) for sel in sels)


def _head_logits(params, ids, mask, sel, *, config, k):
    """One head's logits [B, K]: runs k blocks, reads only the kept neurons."""
    return _heads_logits(params, ids, mask, (sel,), config=config, k=k)[0]


def _kept_pooled(params, ids, mask, sel, *, config, k):
    """(kept neurons [B, M], standardised,)."""
    f = forward_program(config, params, ids, mask, num_layers=k, pooled=True)
    return (_kept(f, sel, pooled=True),)


def _token_shares(params, ids, mask, sel, *, config, k):
    """[B, T, K] each token's share of the head's logits (spin_jax/explain.py)."""
    f = forward_program(config, params, ids, mask, num_layers=k, pooled=False)
    return split_logits(config, k, sel, _kept(f, sel, pooled=False), mask)


def selection_order(head: SpinHead) -> np.ndarray:
    """Head columns in device order: hidden neurons first, then FFN neurons."""
    return head.columns().device_order()


def selection(head: SpinHead) -> dict[str, jax.Array]:
    """Device arrays that index the kept neurons (Columns.device_index), and the head's
    statistics and weights in that column order."""
    order = selection_order(head)
    return {
        **head.columns().device_index(),
        "mean": jnp.asarray(head.mean[order]),
        "inv_std": jnp.asarray(reciprocal(head.std[order])),
        "weights": jnp.asarray(head.weights[order], jnp.float32),
        "intercept": jnp.asarray(head.intercept, jnp.float32),
    }


def run_texts(model, fn, aux, texts, *, k, widths, max_length, token_budget):
    """[fn's outputs [N, width] for each of `widths`] over the texts (a checked list),
    through the batch runner: fn(params, ids, mask, aux, config=, k=) per batch."""
    if not texts:
        return [np.empty((0, w), np.float32) for w in widths]
    ids, truncated = encode(model.tokenizer, texts, max_length)
    warn_truncated(truncated, len(texts), max_length)
    return run_ids(model, fn, aux, ids, k=k, widths=widths, max_length=max_length,
                   token_budget=token_budget)  # fmt: skip


def run_ids(model, fn, aux, ids, *, k, widths, max_length, token_budget):
    """`run_texts` on token ids already encoded (a list of int arrays, at most max_length
    each): what a benchmark without a tokenizer evaluates with."""
    if not len(ids):
        return [np.empty((0, w), np.float32) for w in widths]
    static = dict(config=model.config, k=k)

    def build(mesh):
        return functools.partial(program(fn, mesh), **static)

    runner = BatchRunner(model, build, aux, max_length=max_length, token_budget=token_budget)
    specs = {f"out{i}": ((w,), "float32") for i, w in enumerate(widths)}
    return list(runner.run_rows(ids, np.arange(len(ids)), specs).values())


def _heads_call(heads) -> dict:
    """`run_texts` / `run_ids` arguments for the heads' logits: the first max(num_layers)
    blocks run once per batch, and each head reads its own kept neurons from it."""
    return dict(
        fn=_heads_logits,
        aux=tuple(selection(h) for h in heads),
        k=max(h.num_layers for h in heads),
        widths=[h.weights.shape[1] for h in heads],
    )


def heads_logits(model, heads, texts, *, max_length, token_budget) -> list[np.ndarray]:
    """Each head's logits [N, K] of the texts, from one forward (`_heads_call`)."""
    batching = dict(max_length=max_length, token_budget=token_budget)
    return run_texts(model, texts=texts, **_heads_call(heads), **batching)


def heads_logits_of_ids(model, heads, ids, *, max_length, token_budget) -> list[np.ndarray]:
    """`heads_logits` on token ids already encoded."""
    batching = dict(max_length=max_length, token_budget=token_budget)
    return run_ids(model, ids=ids, **_heads_call(heads), **batching)


def kept_features(model, head, texts, *, max_length, token_budget) -> np.ndarray:
    """The head's kept neurons [N, M], standardised, in device order (selection_order)."""
    (x,) = run_texts(
        model,
        _kept_pooled,
        selection(head),
        texts,
        k=head.num_layers,
        widths=[len(head.rep)],
        max_length=max_length,
        token_budget=token_budget,
    )
    return x


def token_shares(model, head, ids, mask) -> np.ndarray:
    """[B, T, K] each token's share of the head's logits, for padded ids and mask."""
    run = program(_token_shares)
    shares = run(model.params, ids, mask, selection(head), config=model.config, k=head.num_layers)
    return np.asarray(shares)
