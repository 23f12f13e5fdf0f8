"""JAX's persistent compilation cache, on by default for the CLI and SpinClassifier.

A user's first fit or evaluate pays XLA's compiles; a later process with the same shapes
reads them from disk instead. The folder is $SPIN_JAX_CACHE_DIR, else
$XDG_CACHE_HOME/spin_jax/xla, else ~/.cache/spin_jax/xla. SPIN_JAX_NO_COMPILATION_CACHE=1
(or `spin-jax --no-compilation-cache`, or SpinClassifier(compilation_cache=False)) turns it
off; a cache folder the user already gave JAX (jax_compilation_cache_dir) is kept.
JAX reads the setting at its first compile, so it takes effect for programs compiled after.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

log = logging.getLogger("spin_jax")
ENV_DIR = "SPIN_JAX_CACHE_DIR"
ENV_OFF = "SPIN_JAX_NO_COMPILATION_CACHE"


def default_cache_dir() -> Path:
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spin_jax" / "xla"


def enable_compilation_cache(path=None) -> Path | None:
    """Points JAX's persistent cache at `path` (default_cache_dir()); returns the folder in
    use, or None when turned off or the folder cannot be made (a warning says so)."""
    if os.environ.get(ENV_OFF, "").lower() in ("1", "true", "yes", "on"):
        return None
    given = jax.config.jax_compilation_cache_dir
    if given:
        return Path(given)
    path = Path(path) if path is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("compilation cache off: cannot create %s (%s).", path, e)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Every program: on CPU most compile in well under JAX's default threshold of 1 s.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
