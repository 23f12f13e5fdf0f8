"""Runs Python in a fresh process on simulated CPU devices (XLA's host device count), from
the repository root: the multi-device tests compare what it saves with this process's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(args, devices: int = 8, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python *args` on `devices` CPU devices; asserts it exits 0 (its stderr shown)."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), XLA_FLAGS=flags.strip())
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
