"""Shared test setup: fp32 at highest matmul precision, tiny random HF models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

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
