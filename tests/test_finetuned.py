"""Fine-tuned checkpoints: their own head is a baseline in every run; .bin weights load."""

from __future__ import annotations

import numpy as np
import pytest

import spin_jax
from tests import hf_tiny

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

POS = ["good", "great fun", "loved it", "wonderful", "a fine film", "superb acting"]
NEG = ["bad", "awful mess", "hated it", "terrible", "a dull film", "poor acting"]


def texts(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    words = [(POS if y else NEG)[rng.integers(0, 6)] + f" {i}" for i, y in enumerate(labels)]
    return words, ["pos" if y else "neg" for y in labels]


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    from transformers import BertForSequenceClassification

    folder = tmp_path_factory.mktemp("ft")
    hf_tiny.save_tiny_bert(folder, seed=3, cls=BertForSequenceClassification)
    hf = BertForSequenceClassification.from_pretrained(folder).eval()
    return hf, folder


def hf_accuracy(hf, folder, words, labels):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(words, padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = hf(**enc).logits.argmax(-1).numpy()
    return float(np.mean(pred == (np.array(labels) == "pos")))


def test_fine_tuned_head_is_reported_as_a_baseline(fine_tuned):
    hf, folder = fine_tuned
    train, valid, test = texts(60, 0), texts(30, 1), texts(30, 2)
    clf = spin_jax.SpinClassifier(str(folder), n_lams=3, etas=(0.1, 0.8), metric="accuracy")
    clf.fit(*train, valid=valid, test=test)
    base = clf.report["baselines"]["fine_tuned_head"]
    assert base["valid"] == pytest.approx(hf_accuracy(hf, folder, *valid), abs=1e-6)
    assert base["test"] == pytest.approx(hf_accuracy(hf, folder, *test), abs=1e-6)


def test_pytorch_bin_checkpoint_loads(fine_tuned, tmp_path):
    hf, folder = fine_tuned
    # An older-style folder: config.json and a torch pickle of the state dict.
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    from_bin = spin_jax.load_model(str(tmp_path))
    from_st = spin_jax.load_model(str(folder))
    assert from_bin.fingerprint == from_st.fingerprint
    assert from_bin.head is not None


def test_t5_sequence_classification_head_matches_hf():
    from tests.test_t5 import hf_t5

    hf = hf_t5("T5ForSequenceClassification", num_labels=3, eos_token_id=1, pad_token_id=0)
    ids, mask = hf_tiny.padded_batch(97, (3, 9, 5), pad_id=0)
    ids[np.arange(3), mask.sum(1) - 1] = 1  # every text ends in </s>, as T5's tokenizer does
    want = hf_tiny.logits(hf, ids, mask)
    model = spin_jax.from_transformers(hf)
    feats = spin_jax.forward(model, ids, mask)
    got = spin_jax.head_logits(model, feats.hidden[-1, :, 0])  # last real decoder position
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
