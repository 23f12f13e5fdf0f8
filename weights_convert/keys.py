"""Strict key accounting: every HF tensor is used or explicitly ignored."""

from __future__ import annotations

import re

import numpy as np

from spin_jax.models.layers import WeightsError


class KeyTracker:
    """Hands out tensors by name and remembers which ones were used."""

    def __init__(self, state_dict: dict[str, np.ndarray], prefixes: tuple[str, ...] = ()):
        self.sd = dict(state_dict)
        self.prefix = self._detect_prefix(prefixes)
        self.used: set[str] = set()

    def _detect_prefix(self, prefixes) -> str:
        for p in prefixes:
            if any(k.startswith(p) for k in self.sd):
                return p
        return ""

    def has(self, name: str) -> bool:
        return self.prefix + name in self.sd or name in self.sd

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        key = self.prefix + name if self.prefix + name in self.sd else name
        if key not in self.sd:
            raise WeightsError(
                f"missing weight {self.prefix + name!r} in the checkpoint; it does not match "
                "its config.json (wrong folder, or a truncated save)."
            )
        self.used.add(key)
        x = np.asarray(self.sd[key])
        if shape is not None and tuple(x.shape) != tuple(shape):
            raise WeightsError(
                f"weight {key!r} has shape {tuple(x.shape)}, the config implies {tuple(shape)}."
            )
        return x

    def stack(self, template: str, n: int, shape=None, transpose=False) -> np.ndarray:
        """Stacks `template.format(i)` over layers, optionally transposing (out,in)->(in,out).

        Each layer's tensor is checked on its own, so a mis-shaped one is named by its key."""
        want = None if shape is None else tuple(shape)
        ts = []
        for i in range(n):
            t = self.take(template.format(i))
            t = t.T if transpose else t
            want = tuple(t.shape) if want is None else want
            if tuple(t.shape) != want:
                stored = t.T.shape if transpose else t.shape
                raise WeightsError(
                    f"weight {self.prefix + template.format(i)!r} has shape {tuple(stored)}, "
                    f"the config implies {want[::-1] if transpose else want}: the checkpoint "
                    "does not match its config.json (or was damaged); re-save it."
                )
            ts.append(t)
        return np.stack(ts)

    def finish(self, ignore: tuple[str, ...] = ()) -> list[str]:
        """Raises on any tensor neither used nor matching an ignore regex; returns ignored."""
        ignored, extra = [], []
        for k in self.sd:
            if k in self.used:
                continue
            (ignored if any(re.fullmatch(p, k) for p in ignore) else extra).append(k)
        if extra:
            shown = ", ".join(sorted(extra)[:8])
            raise WeightsError(
                f"{len(extra)} unexpected weight(s) in the checkpoint: {shown}. The checkpoint "
                "has parts this converter does not know; check config.json matches the weights."
            )
        return ignored
