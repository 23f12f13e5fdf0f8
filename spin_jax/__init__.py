"""spin_jax: SPIN (Sparsify-then-Classify) text classifiers from frozen transformers."""

from spin_jax._version import __version__  # noqa: F401
from spin_jax.classifier import (  # noqa: E402
    ArtifactError,
    SpinClassifier,
    predict_many,
    predict_proba_many,
)
from spin_jax.data import DataError, TextDataset, load_texts  # noqa: E402
from spin_jax.errors import NotFittedError, SpinJaxError  # noqa: E402
from spin_jax.extraction import DeviceFeatures, MemoryFeatures, extract  # noqa: E402
from spin_jax.learner import SpinError, SpinOptions, fit_spin  # noqa: E402
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
from spin_jax.selection import NeuronSelection, neurons_of  # noqa: E402
from spin_jax.store import FeatureStore, StoreError, StoreMismatchError  # noqa: E402
from spin_jax.text import encode, pad_batch  # noqa: E402

__all__ = [
    "POOLINGS",
    "ArtifactError",
    "ConfigError",
    "DataError",
    "DeviceFeatures",
    "FeatureStore",
    "Features",
    "InputError",
    "MemoryFeatures",
    "NotFittedError",
    "Model",
    "NeuronSelection",
    "SpinClassifier",
    "SpinError",
    "SpinJaxError",
    "SpinOptions",
    "StoreError",
    "StoreMismatchError",
    "TextDataset",
    "WeightsError",
    "encode",
    "extract",
    "fit_spin",
    "forward",
    "from_transformers",
    "head_logits",
    "load_model",
    "load_texts",
    "neurons_of",
    "pad_batch",
    "predict_many",
    "predict_proba_many",
    "save_model",
]
