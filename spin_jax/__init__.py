"""spin_jax: SPIN (Sparsify-then-Classify) text classifiers from frozen transformers."""

__version__ = "0.1.0"

from spin_jax.model import (  # noqa: E402
    Model,
    forward,
    from_transformers,
    head_logits,
    load_model,
    save_model,
)
from spin_jax.models import POOLINGS, Features  # noqa: E402
from spin_jax.models.layers import ConfigError, InputError, WeightsError  # noqa: E402
from spin_jax.text import encode, pad_batch  # noqa: E402

__all__ = [
    "POOLINGS", "ConfigError", "Features", "InputError", "Model", "WeightsError", "encode",
    "forward", "from_transformers", "head_logits", "load_model", "pad_batch", "save_model",
]
