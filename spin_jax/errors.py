"""Every error spin_jax raises for a user's mistake derives from SpinJaxError.

Each message names the problem and the fix in one line. The CLI catches SpinJaxError (never
class names) and prints `spin-jax: error: <message>` with exit code 2; a bug is any other
exception and keeps its traceback. `cli_hint` is what the command line adds to the message
(a flag to pass), so library messages need not know the CLI's flags.
"""

from __future__ import annotations


class SpinJaxError(ValueError):
    """A user's mistake (bad input, data, options, files); the message says how to fix it."""

    def __init__(self, message: str, *, cli_hint: str | None = None):
        super().__init__(message)
        self.cli_hint = cli_hint


class ConfigError(SpinJaxError):
    """An HF config we do not support, or a model that cannot be found or read."""


class WeightsError(SpinJaxError):
    """Checkpoint weights that are missing, unexpected, mis-shaped or modified."""


class InputError(SpinJaxError):
    """Token ids, masks or options passed to the forward that it cannot run."""


class DataError(SpinJaxError):
    """A problem with the user's data (files, columns, texts, labels)."""


class StoreError(SpinJaxError):
    """A feature store that is missing, damaged, incomplete or used wrongly."""


class StoreMismatchError(StoreError):
    """A folder holding a store made with a different model, config or data."""


class SpinError(SpinJaxError):
    """A fit or an inference that cannot run as asked (options, labels, sources)."""


class NotFittedError(SpinError):
    """A SpinClassifier used before fit() or load()."""


class ArtifactError(SpinJaxError):
    """A saved classifier that is damaged, tampered with, or for another model/version."""
