"""The classifier a fit produces (SpinHead) and the candidates it is chosen from (Choice)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import probes
from spin_jax.columns import Columns, gather, padded_width
from spin_jax.devices import solver_jit

# One program per shape (eagerly, each op of predict_proba compiled its own).
_predict_proba = solver_jit(probes.predict_proba)


@dataclasses.dataclass
class SpinHead:
    """Kept neurons, their training statistics and the aggregated linear classifier."""

    rep: np.ndarray  # [M] 0 hidden, 1 ffn
    pool: np.ndarray  # [M] index into POOLINGS
    layer: np.ndarray  # [M] block layer 1..k
    neuron: np.ndarray  # [M]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray  # [M, K]
    intercept: np.ndarray  # [K]
    num_layers: int

    def columns(self) -> Columns:
        return Columns(
            self.rep, self.pool, self.layer, self.neuron, np.zeros(len(self.rep), np.int64)
        )

    candidates = columns  # the name this had before Columns

    def features(self, src, rows=None):
        """[N, M] standardised kept columns of `src` (numpy, or jax from a device source)."""
        return gather(src, self.columns(), self.mean, self.std, rows)

    def padded_features(self, src):
        """features(src) with zero columns after the M, to `padded_width(M)`."""
        M, width = len(self.rep), padded_width(len(self.rep))
        X = gather(src, self.columns(), self.mean, self.std, width=width)
        if X.shape[1] == width:
            return X
        return np.pad(np.asarray(X), ((0, 0), (0, width - M)))  # a host read

    def padded_proba(self, X) -> np.ndarray:
        """proba of padded_features X, with zero weights on the padding (the same logits),
        so that heads of other sizes share one program: a report scores many heads."""
        W = np.pad(np.asarray(self.weights, np.float32), ((0, X.shape[1] - len(self.rep)), (0, 0)))
        X = X if isinstance(X, jax.Array) else jax.device_put(X)
        b = jax.device_put(np.asarray(self.intercept, np.float32))
        return np.asarray(_predict_proba(X, jax.device_put(W), b))

    def proba(self, Xs) -> np.ndarray:
        return np.asarray(
            probes.predict_proba(
                jnp.asarray(Xs), jnp.asarray(self.weights), jnp.asarray(self.intercept)
            )
        )


@dataclasses.dataclass
class Choice:
    """One candidate final classifier, comparable by validation score then simplicity."""

    valid: float
    k: int
    n_neurons: int
    rep: str
    pooling: str
    eta: float
    lam: float
    weights: np.ndarray  # [M, K] on standardised candidate columns
    intercept: np.ndarray
    cand: Columns
    mean: np.ndarray  # [M] training statistics of the candidate columns
    std: np.ndarray
    per_k_valid: list[float]

    @property
    def used(self) -> np.ndarray:
        """[M] bool: the candidate columns with a non-zero weight."""
        return np.any(self.weights != 0, axis=1)

    @property
    def layers_used(self) -> int:
        """Blocks inference must run: the deepest layer with a non-zero weight (<= k)."""
        used = self.used
        return int(self.cand.layer[used].max()) if used.any() else 0

    def head(self) -> SpinHead:
        """The final classifier: only the columns with a non-zero weight."""
        used, c = self.used, self.cand
        return SpinHead(
            rep=c.rep[used],
            pool=c.pool[used],
            layer=c.layer[used],
            neuron=c.neuron[used],
            mean=self.mean[used],
            std=self.std[used],
            weights=self.weights[used],
            intercept=self.intercept,
            num_layers=self.layers_used,
        )

    def key(self):
        return (-round(self.valid, 9), self.layers_used, self.n_neurons)
