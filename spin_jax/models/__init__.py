"""Model families, their configs and the jitted forward shared by all of them."""

from __future__ import annotations

import contextlib
import functools
import importlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax.models.layers import (
    POOLINGS,
    ConfigError,
    Features,
    InputError,
    WeightsError,
    check_inputs,
    check_shapes,
    token_index,
)

# HF model_type -> module implementing it (config class, param_shapes, forward).
_FAMILIES = {
    "gpt2": "spin_jax.models.gpt2",
    "bert": "spin_jax.models.bert",
    "roberta": "spin_jax.models.bert",
    "distilbert": "spin_jax.models.bert",
    "t5": "spin_jax.models.t5",
}
_CONFIG_CLASS = {
    "gpt2": "GPT2Config",
    "bert": "BertConfig",
    "roberta": "BertConfig",
    "distilbert": "BertConfig",
    "t5": "T5Config",
}


def family_of(model_type: str):
    if model_type not in _FAMILIES:
        raise ConfigError(
            f"model_type {model_type!r} is not supported; supported: {sorted(_FAMILIES)}."
        )
    return importlib.import_module(_FAMILIES[model_type])


def config_from_hf(d: dict[str, Any]):
    """Frozen, hashable config from an HF config.json dict."""
    model_type = d.get("model_type")
    if model_type is None:
        raise ConfigError("config.json has no 'model_type'; is this an HF model folder?")
    module = family_of(model_type)
    try:
        return getattr(module, _CONFIG_CLASS[model_type]).from_hf_config(d)
    except KeyError as e:
        raise ConfigError(f"config.json for {model_type} lacks the field {e}.") from None


def param_shapes(config, dtype=jnp.float32):
    return family_of(config.model_type).param_shapes(config, dtype)


@functools.partial(jax.jit, static_argnames=("config", "k", "pooled", "use_scan", "options"))
def _forward(params, input_ids, attention_mask, *, config, k, pooled, use_scan, options):
    """The family's forward, jitted: config, k, pooled, use_scan and options (sorted
    (name, value) pairs, hashable) are static. Callers go through `forward_program` or
    `forward_params`, which check its inputs."""
    module = family_of(config.model_type)
    kwargs = dict(options)
    return module.forward(
        config, params, input_ids, attention_mask, k=k, pooled=pooled, use_scan=use_scan, **kwargs
    )


def single_token_index(config, mask):
    """[B] the position the "token" pooling reads in the model's first stack."""
    return token_index(mask, config.causal)


def decoder_of(config):
    """(first decoder block layer, mask -> the decoder layers' mask) for an encoder-decoder
    family whose config runs decoder blocks, else None."""
    readout = getattr(family_of(config.model_type), "decoder_of", None)
    return None if readout is None else readout(config)


def _check_k(config, num_layers):
    if num_layers is None:
        return config.num_layers
    k = int(num_layers)
    if not 0 <= k <= config.num_layers:
        raise InputError(f"num_layers={k} is outside [0, {config.num_layers}] for this model.")
    return k


def forward_program(
    config,
    params,
    input_ids,
    attention_mask,
    *,
    pooled=True,
    num_layers=None,
    use_scan=True,
    **options,
) -> Features:
    """The forward as a step of a program being traced (jit, shard_map): extraction's and
    the classifier's device programs call it.

    Checks what tracing knows: the shapes (check_shapes), num_layers, and (in the family's
    forward) the options. The token values are not known yet: the tokenizer writes them
    (forward_params checks them on the host). `attention_mask` is bool or 0/1.
    """
    check_shapes(input_ids.shape, attention_mask.shape, config.max_positions)
    k = _check_k(config, num_layers)
    return _forward(
        params,
        input_ids,
        attention_mask,
        config=config,
        k=k,
        pooled=pooled,
        use_scan=use_scan,
        options=tuple(sorted(options.items())),
    )


def forward_params(config, params, input_ids, attention_mask, *, jit=True, **options) -> Features:
    """Forward with explicit config and params (the functional core of `forward`): the
    inputs checked on the host (check_inputs), then forward_program with `options` (pooled,
    num_layers, use_scan and the family's options), jitted or eager."""
    check_inputs(input_ids, attention_mask, config.vocab_size, config.max_positions)
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.asarray(np.asarray(attention_mask) != 0)
    with contextlib.nullcontext() if jit else jax.disable_jit():
        return forward_program(config, params, ids, mask, **options)


__all__ = [
    "POOLINGS",
    "ConfigError",
    "Features",
    "InputError",
    "WeightsError",
    "config_from_hf",
    "decoder_of",
    "family_of",
    "forward_params",
    "forward_program",
    "param_shapes",
    "single_token_index",
]
