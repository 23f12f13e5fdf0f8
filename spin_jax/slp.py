"""Single-hidden-layer probes (the paper's appendix A.2): a ReLU layer then a linear layer
per problem, trained full-batch with optax's adamw and vmapped over problems like the L1
probes. They are a diagnostic beside the linear probes (how much a non-linear read-out of a
layer adds); SPIN's sparsification and integration stay linear.

Shapes: X [G, N, F] standardised features of G problems, y [N] class ids.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from spin_jax.devices import solver_jit

Array = jax.Array


def _init(key, n_features: int, hidden: int, n_classes: int) -> dict:
    k1, k2 = jax.random.split(key)
    scale1, scale2 = jnp.sqrt(2.0 / n_features), jnp.sqrt(1.0 / hidden)  # He, then LeCun
    return {
        "w1": jax.random.normal(k1, (n_features, hidden), jnp.float32) * scale1,
        "b1": jnp.zeros(hidden, jnp.float32),
        "w2": jax.random.normal(k2, (hidden, n_classes), jnp.float32) * scale2,
        "b2": jnp.zeros(n_classes, jnp.float32),
    }


def logits(params: dict, X: Array) -> Array:
    """[N, C] for one problem's X [N, F] (any float dtype; fp32 accumulation)."""
    h = jnp.dot(X, params["w1"].astype(X.dtype), preferred_element_type=jnp.float32)
    h = jax.nn.relu(h + params["b1"])
    return h @ params["w2"] + params["b2"]


def _loss(params, X, y, n_classes):
    z = logits(params, X)
    return optax.softmax_cross_entropy(z, jax.nn.one_hot(y, n_classes)).mean()


@partial(solver_jit, static_argnames=("n_classes", "hidden", "steps"))
def fit(
    X: Array,
    y: Array,
    *,
    n_classes: int,
    hidden: int = 256,
    steps: int = 300,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> dict:
    """Params of G single-hidden-layer probes, one per problem of X [G, N, F]."""
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)
    keys = jax.random.split(jax.random.key(seed), X.shape[0])

    def one(key, X):
        params = _init(key, X.shape[-1], hidden, n_classes)

        def step(carry, _):
            params, state = carry
            grads = jax.grad(_loss)(params, X, y, n_classes)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
        return params

    return jax.vmap(one)(keys, X)


@solver_jit
def predict(params: dict, X: Array) -> Array:
    """Class ids [G, N] of the G probes on X [G, N, F]."""
    return jnp.argmax(jax.vmap(logits)(params, X), axis=-1).astype(jnp.int32)
