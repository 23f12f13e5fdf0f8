"""The learner over 8 simulated CPU devices gives the same classifier as one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from spin_jax.extraction import MemoryFeatures
from spin_jax.learner import SpinOptions, fit_spin

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = dict(n_lams=3, etas=(0.1, 0.5, 0.8), poolings=("mean", "all"))


def planted(n, seed, L=3, D=10, F=14):
    """Labels carried by ffn layer 2 (ffn[1]), mean pooling, neurons 4 and 9."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    hidden = rng.normal(size=(n, L + 1, 3, D)).astype(np.float32)
    ffn = rng.normal(size=(n, L, 3, F)).astype(np.float32)
    ffn[:, 1, 1, 4] += 1.5 * (y - 0.5)
    ffn[:, 1, 1, 9] -= 1.5 * (y - 0.5)
    return MemoryFeatures({"hidden": hidden, "ffn": ffn}, y, ("a", "b"), {})


def fit_and_dump(path: str) -> None:
    head, report = fit_spin(planted(300, 0), planted(150, 1), None, SpinOptions(**OPTIONS))
    np.savez(
        path,
        rep=head.rep,
        pool=head.pool,
        layer=head.layer,
        neuron=head.neuron,
        weights=head.weights,
        intercept=head.intercept,
    )
    Path(path + ".json").write_text(json.dumps(report["chosen"]))


def fit_on_cpu(path: str, devices: int) -> None:
    """fit_and_dump in a fresh process on `devices` simulated CPU devices. Both sides run on
    CPU so that only the device count differs (on a GPU the solver reads bf16 features)."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    code = (
        f"import jax; assert jax.device_count() == {devices}, jax.devices()\n"
        "jax.config.update('jax_default_matmul_precision', 'highest')\n"
        f"from tests.test_multidevice import fit_and_dump; fit_and_dump({path!r})"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)


def test_eight_devices_give_the_same_classifier(tmp_path):
    out, single = str(tmp_path / "multi.npz"), str(tmp_path / "single.npz")
    fit_on_cpu(out, 8)
    fit_on_cpu(single, 1)
    a, b = np.load(out), np.load(single)
    for key in ("rep", "pool", "layer", "neuron"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_allclose(a["weights"], b["weights"], atol=1e-5)
    np.testing.assert_allclose(a["intercept"], b["intercept"], atol=1e-5)
    assert json.loads(Path(out + ".json").read_text()) == json.loads(
        Path(single + ".json").read_text()
    )
    assert {(1, 1, 2, 4), (1, 1, 2, 9)} <= set(
        zip(b["rep"], b["pool"], b["layer"], b["neuron"], strict=True)
    )
