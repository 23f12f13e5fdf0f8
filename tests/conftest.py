"""Shared test setup: fp32 at highest matmul precision, tiny random HF models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tests write no compiled programs into the user cache (test_cli turns it on in a subprocess).
os.environ.setdefault("SPIN_JAX_NO_COMPILATION_CACHE", "1")

import importlib.util  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """A tiny random BERT (seed 0) with MiniLM's tokenizer, as an HF model folder, built
    once for every module that reads it (none writes into it)."""
    pytest.importorskip("torch")
    from tests import hf_tiny

    return hf_tiny.save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), seed=0)


def pytest_collection_modifyitems(config, items):
    """Tests marked `torch` skip, one by one, where PyTorch is not installed; the rest of
    their module (eval_shape of full-size presets, config checks) still runs."""
    if importlib.util.find_spec("torch") is not None:
        return
    skip = pytest.mark.skip(reason="needs PyTorch: pip install -e '.[torch]'")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)
