"""HF checkpoints -> spin_jax parameter pytrees, with strict key accounting."""

from __future__ import annotations

import jax
import numpy as np

from spin_jax.models import param_shapes
from spin_jax.models.layers import WeightsError
from weights_convert import bert, gpt2
from weights_convert.keys import KeyTracker
from weights_convert.reader import read_state_dict

_CONVERTERS = {"gpt2": gpt2, "bert": bert, "roberta": bert, "distilbert": bert}


def _converter(model_type: str):
    if model_type == "t5":
        from weights_convert import t5

        return t5
    return _CONVERTERS[model_type]


def _prefixes(module, model_type):
    p = module.PREFIXES
    return p[model_type] if isinstance(p, dict) else p


def convert_state_dict(config, state_dict: dict[str, np.ndarray]):
    """Returns (params, head) where head is None or (kind, head_params)."""
    module = _converter(config.model_type)
    t = KeyTracker(state_dict, _prefixes(module, config.model_type))
    params, head = module.convert(config, t)
    t.finish(module.IGNORE)
    check_shapes(config, params)
    return params, head


def check_shapes(config, params) -> None:
    want = param_shapes(config)
    got = jax.tree.map(lambda x: x.shape, params)
    want_shapes = jax.tree.map(lambda x: x.shape, want)
    if jax.tree.structure(got) != jax.tree.structure(want_shapes) or got != want_shapes:
        raise WeightsError(
            "converted parameters do not match the model's layout for this config: "
            f"got {got}, want {want_shapes}."
        )


def convert(config, source):
    """Converts an HF folder or live transformers model for `config`."""
    return convert_state_dict(config, read_state_dict(source))


__all__ = ["convert", "convert_state_dict", "read_state_dict", "check_shapes"]
