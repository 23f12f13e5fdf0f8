"""Stage lines on stderr, so a long job says what it is doing from its first second (the
bars of extraction, probes and integration then give rate and ETA)."""

from __future__ import annotations

import sys


def stage(message: str, enabled: bool = True) -> None:
    if enabled:
        print(f"spin-jax: {message}", file=sys.stderr, flush=True)
