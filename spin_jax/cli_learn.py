"""`spin-jax fit / evaluate / predict / demo`."""

from __future__ import annotations


def add_commands(sub) -> None:
    """Registers the learner's subcommands (filled in with the learner)."""
