"""The SPIN learner and classifier: eta sparsification, planted signal recovered, multiclass,
metric choice, early exit == full extraction, artifacts refused when tampered, bad input,
per-token explanations. (The CLI's tests are in test_cli.py.)

Synthetic features share one shape (L=4 blocks, D=12, F=20, 600/300/300 rows) so the probe
and integration programs compile once per class count. The text tests use one tiny random
BERT (vocab 30522 so that MiniLM's real tokenizer fits it) saved into a temporary folder.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil

import jax
import numpy as np
import pytest

import spin_jax
from spin_jax import probes
from spin_jax.classifier import WEIGHTS_FILE, ArtifactError, SpinClassifier
from spin_jax.columns import Columns, gather
from spin_jax.data import DataError
from spin_jax.extraction import DeviceFeatures, MemoryFeatures, extract
from spin_jax.learner import (
    SpinError,
    SpinOptions,
    candidates,
    choose_metric,
    fit_spin,
    kept_neurons,
)
from tests import hf_tiny

# A short automatic lam path and three etas: the mechanics, quickly (the default grid is
# the paper's five Cs and ten etas).
FAST = {"lam_grid": "auto", "n_lams": 3, "etas": (0.1, 0.5, 0.8)}
L, D, F = 4, 12, 20
SIGNAL = (3, "mean", (5, 11))  # block layer 3 = ffn[2] and hidden[3]; mean pooling


# ---- stage 2: kept_neurons ---------------------------------------------------------------


@pytest.mark.parametrize(
    "importance, eta, want",
    [
        ([4.0, 3.0, 2.0, 1.0], 0.4, [0]),  # 0.4 reached exactly by the first
        ([4.0, 3.0, 2.0, 1.0], 0.5, [0, 1]),  # 0.4 < 0.5 <= 0.7
        ([1.0, 4.0, 2.0, 3.0], 0.5, [1, 3]),  # by weight, returned sorted by index
        ([1.0, 4.0, 2.0, 3.0], 0.95, [0, 1, 2, 3]),
        ([0.0, 5.0, 0.0, 5.0], 1.0, [1, 3]),  # zero-weight neurons never needed
    ],
)
def test_kept_neurons_smallest_set_reaching_eta(importance, eta, want):
    np.testing.assert_array_equal(kept_neurons(np.array(importance), eta), want)


def test_kept_neurons_empty_for_zero_importance():
    assert len(kept_neurons(np.zeros(7), 0.5)) == 0


def test_kept_neurons_nested_as_eta_grows():
    imp = np.random.default_rng(0).exponential(size=50) ** 3
    etas = (0.001, 0.1, 0.3, 0.5, 0.8, 1.0)
    sets = [set(kept_neurons(imp, eta).tolist()) for eta in etas]
    sizes = [len(s) for s in sets]
    assert sizes[0] == 1 and sizes[-1] == 50 and sizes == sorted(sizes)
    for small, big in itertools.pairwise(sets):
        assert small <= big
    top = np.sort(imp)[::-1]
    for s, eta in zip(sets, etas, strict=True):  # reaches eta; one neuron fewer would not
        assert top[: len(s)].sum() >= eta * imp.sum() - 1e-9
        assert len(s) == 1 or top[: len(s) - 1].sum() < eta * imp.sum()


def test_candidates_rank_each_neuron_by_the_smallest_eta_keeping_it():
    class Table:  # candidates() only reads importance and each row's layer
        importance = np.array([[4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
        layers = np.array([1, 2])

    etas = (0.4, 0.7, 0.95)
    c = candidates({("ffn", 1): Table()}, ("ffn",), (1,), etas)
    np.testing.assert_array_equal(c.layer, [1, 1, 1, 1])  # the all-zero layer 2 adds nothing
    np.testing.assert_array_equal(c.neuron, [0, 1, 2, 3])
    np.testing.assert_array_equal(c.eta_rank, [0, 1, 2, 2])


# ---- synthetic features ------------------------------------------------------------------


def synthetic(n, seed, label_fn, names):
    """Gaussian hidden [n, L+1, 3, D] and ffn [n, L, 3, F]; labels from label_fn(ffn, hidden)."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, L + 1, 3, D)).astype(np.float32)
    ffn = rng.normal(size=(n, L, 3, F)).astype(np.float32)
    y = label_fn(ffn, hidden, rng).astype(np.int64)
    return MemoryFeatures({"hidden": hidden, "ffn": ffn}, y, names, {})


def splits(label_fn, names):
    return [synthetic(n, s, label_fn, names) for n, s in ((600, 0), (300, 1), (300, 2))]


def planted(ffn, hidden, rng):
    """Needs both neurons: either alone is right about 3/4 of the time."""
    layer, pool, (a, b) = SIGNAL
    x = ffn[:, layer - 1, spin_jax.POOLINGS.index(pool)]
    return x[:, a] + x[:, b] + 0.3 * rng.normal(size=len(x)) > 0


# The solver reads float32 features on CPU ("auto") and bf16 on accelerators: both here.
@pytest.fixture(scope="module", params=["auto", "bfloat16"])
def planted_fit(request):
    train, valid, test = splits(planted, ("neg", "pos"))
    head, report = fit_spin(train, valid, test, SpinOptions(**FAST, solver_dtype=request.param))
    return head, report, test


def test_planted_neurons_are_found(planted_fit):
    head, report, _ = planted_fit
    layer, pool, neurons = SIGNAL
    used = set(
        zip(
            head.rep.tolist(),
            head.pool.tolist(),
            head.layer.tolist(),
            head.neuron.tolist(),
            strict=True,
        )
    )
    for n in neurons:
        assert (1, spin_jax.POOLINGS.index(pool), layer, n) in used
    assert report["chosen"]["num_layers"] >= layer and head.num_layers >= layer
    assert head.layer.max() <= head.num_layers
    assert report["metric"] == "accuracy"


def test_planted_signal_beats_the_last_layer_embedding(planted_fit):
    _, report, _ = planted_fit
    spin, emb = report["spin"], report["baselines"]["embedding"]
    assert spin["test"] > emb["test"] + 0.2, (spin, emb)
    assert spin["test"] > 0.85
    assert report["baselines"]["best_single_layer"]["layer"] == SIGNAL[0]


def test_head_probabilities_match_report(planted_fit):
    head, report, test = planted_fit
    p = head.proba(head.features(test))
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-6)
    acc = np.mean(np.argmax(p, -1) == test.labels)
    assert abs(acc - report["spin"]["test"]) < 1e-6


def three_classes(ffn, hidden, rng):
    x = hidden[:, 2, spin_jax.POOLINGS.index("max"), :3]  # block 2, max pooling, neurons 0-2
    return np.argmax(x + 0.2 * rng.normal(size=x.shape), axis=1)


def test_unknown_solver_dtype_is_refused_before_any_probe():
    train, valid, test = splits(planted, ("neg", "pos"))
    with pytest.raises(SpinError, match="solver_dtype 'int8'"):
        fit_spin(train, valid, test, SpinOptions(**FAST, solver_dtype="int8"))


def test_three_classes_end_to_end():
    train, valid, test = splits(three_classes, ("a", "b", "c"))
    head, report = fit_spin(train, valid, test, SpinOptions(**FAST))
    assert report["n_classes"] == 3 and report["metric"] == "accuracy"
    assert head.weights.shape == (len(head.rep), 3) and head.intercept.shape == (3,)
    p = head.proba(head.features(test))
    assert p.shape == (300, 3)
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-6)
    pred = np.argmax(p, -1)
    assert set(pred.tolist()) == {0, 1, 2}
    assert report["spin"]["test"] > 0.75, report["spin"]
    assert 2 in head.layer[head.rep == 0].tolist()


def imbalanced(ffn, hidden, rng):
    return planted(ffn, hidden, rng) & (ffn[:, 2, 1, 5] > 0.8)  # about 1 in 7 positive


def test_imbalanced_labels_choose_macro_f1():
    train, valid, test = splits(imbalanced, ("neg", "pos"))
    counts = np.bincount(train.labels)
    assert counts.max() > 3 * counts.min()
    _, report = fit_spin(train, valid, test, SpinOptions(**FAST))
    assert report["metric"] == "macro_f1"
    assert report["spin"]["test"] > 0.7


def test_fit_features_aligns_label_ids_across_sources(model):
    """A source numbering the same classes differently is re-numbered, not misread."""
    train, valid, _ = splits(planted, ("neg", "pos"))
    flipped = MemoryFeatures(valid.arrays, 1 - valid.labels, ("pos", "neg"), {})
    clf = SpinClassifier(model, **FAST).fit_features(train, flipped)
    assert clf.report["spin"]["valid"] > 0.85
    other = MemoryFeatures(valid.arrays, valid.labels, ("neg", "maybe"), {})
    with pytest.raises(SpinError, match=r"validation labels \['maybe'\] never occur"):
        SpinClassifier(model, **FAST).fit_features(train, other)


def on_device(src: MemoryFeatures) -> DeviceFeatures:
    arrays = {k: jax.numpy.asarray(v) for k, v in src.arrays.items()}
    return DeviceFeatures(arrays, src.labels, src.label_names, src.manifest)


def test_device_gather_equals_host_padded_to_a_width():
    """Candidate columns read on the device in one program, padded with zero columns to a
    width shared by groups: the host's standardised values, bit for bit."""
    host = splits(planted, ("neg", "pos"))[0]
    rng = np.random.default_rng(0)
    rep = rng.integers(0, 2, 40)
    layer = np.where(rep == 0, rng.integers(0, L + 1, 40), rng.integers(1, L + 1, 40))
    neuron = np.where(rep == 0, rng.integers(0, D, 40), rng.integers(0, F, 40))
    cols = Columns(rep, rng.integers(0, 3, 40), layer, neuron, np.zeros(40, np.int64))
    mean, std = rng.normal(size=40).astype(np.float32), rng.uniform(0.5, 2, 40).astype(np.float32)
    # An inf in a neuron no column reads (the padding's gather index) stays out.
    host.arrays["ffn"][:, 0, 0, 0] = np.inf
    cols.neuron[(cols.rep == 1) & (cols.layer == 1) & (cols.pool == 0) & (cols.neuron == 0)] = 1
    dev = on_device(host)
    for rows in (None, [5, 1, 7], []):
        want = gather(host, cols, mean, std, rows=rows)
        got = np.asarray(gather(dev, cols, mean, std, rows=rows, width=128))
        assert got.shape == (len(want), 128)
        np.testing.assert_array_equal(got[:, :40], want)
        assert not got[:, 40:].any()
    cols.neuron[np.argmax(cols.rep == 1)] = F  # out of range: refused as a host read is
    with pytest.raises(IndexError):
        gather(dev, cols, mean, std, width=128)


def test_fit_on_device_features_equals_host(model):
    """Probes, integration and scores read features kept on the device: the same classifier."""
    host = splits(planted, ("neg", "pos"))
    dev = [on_device(s) for s in host]
    opts = {**FAST, "poolings": ("mean", "all"), "representations": ("ffn", "both")}
    want = SpinClassifier(model, **opts).fit_features(*host)
    got = SpinClassifier(model, **opts).fit_features(*dev)
    for field in ("rep", "pool", "layer", "neuron"):
        np.testing.assert_array_equal(getattr(got.head, field), getattr(want.head, field))
    for field in ("mean", "std", "weights", "intercept"):
        np.testing.assert_allclose(
            getattr(got.head, field), getattr(want.head, field), atol=1e-6, rtol=0
        )
    assert got.head.num_layers == want.head.num_layers
    for key in ("chosen", "spin", "baselines", "per_layer_probes", "metric"):
        assert got.report[key] == want.report[key], key
    test_host, test_dev = host[2], dev[2]
    logits = got.decision_function(test_dev)
    np.testing.assert_allclose(logits, want.decision_function(test_host), atol=1e-6, rtol=0)
    np.testing.assert_allclose(got.features(test_dev), want.features(test_host), atol=1e-6)
    assert got.score(test_dev) == want.score(test_host)


def test_choose_metric():
    y = np.array([0, 0, 0, 1, 1, 2])
    assert choose_metric("auto", y, 3) == "macro_f1"
    assert choose_metric("auto", np.array([0, 0, 0, 1, 1]), 2) == "accuracy"
    assert choose_metric("accuracy", y, 3) == "accuracy"
    with pytest.raises(SpinError, match="metric 'f1'"):
        choose_metric("f1", y, 3)


def test_one_class_and_unseen_validation_labels_are_refused():
    one = synthetic(20, 0, lambda f, h, r: np.zeros(len(f)), ("a", "b"))
    two = synthetic(20, 1, lambda f, h, r: np.arange(len(f)) % 2, ("a", "b"))
    with pytest.raises(SpinError, match="only one class"):
        fit_spin(one, two)
    three = synthetic(20, 2, lambda f, h, r: np.arange(len(f)) % 3, ("a", "b", "c"))
    with pytest.raises(SpinError, match=r"validation labels \[2\] never occur in training"):
        fit_spin(two, three)


# ---- the classifier on a tiny random BERT --------------------------------------------------

POS = "good great love wonderful superb".split()
NEG = "bad awful hate terrible boring".split()
NEUTRAL = "the movie was a film plot and actor".split()


def reviews(n, seed):
    """Short texts whose label shows in one or two sentiment words among neutral ones."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = ("negative", "positive")[i % 2]
        words = list(rng.choice(NEUTRAL, rng.integers(1, 6)))
        words += list(rng.choice(POS if i % 2 else NEG, rng.integers(1, 3)))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def model(folder):
    return spin_jax.load_model(str(folder))


@pytest.fixture(scope="module")
def data():
    return {"train": reviews(60, 0), "valid": reviews(20, 1), "test": reviews(40, 2)}


@pytest.fixture(scope="module")
def clf(model, data):
    return SpinClassifier(model, feature_dtype="float32", **FAST).fit(*data["train"])


@pytest.fixture(scope="module")
def saved(clf, tmp_path_factory):
    return clf.save(tmp_path_factory.mktemp("run") / "clf")


def test_classifier_predicts_label_strings(clf, data):
    texts, labels = data["test"]
    pred = clf.predict(texts)
    assert len(pred) == len(texts) and set(pred) <= {"negative", "positive"}
    assert clf.label_names == ("negative", "positive")
    assert clf.score(texts, labels) >= 0.7  # chance is 0.5
    # 0 blocks: a head of the embedding layer alone (the default probes layer 0).
    assert 0 <= clf.head.num_layers <= 3


def test_save_load_gives_identical_probabilities(clf, saved, data):
    texts = data["test"][0]
    loaded = SpinClassifier.load(saved)  # the model from the recorded folder
    np.testing.assert_array_equal(loaded.predict_proba(texts), clf.predict_proba(texts))
    assert loaded.label_names == clf.label_names
    assert loaded.report["chosen"] == clf.report["chosen"]


def test_early_exit_equals_full_extraction(clf, model, data, monkeypatch):
    texts = data["test"][0] + ["", "good " * 40]  # an empty and an over-long text too
    monkeypatch.setattr(clf, "allow_empty", True)
    kw = dict(dtype="float32", max_length=clf.max_length, progress=False, allow_empty=True)
    full = extract(model, texts, **kw)
    assert full.shape("ffn")[1] == model.config.num_layers  # every block ran
    head = clf.head
    assert head.num_layers < model.config.num_layers  # so the exit is early
    X = head.features(full)
    want_logits = np.asarray(probes.decision(X, head.weights, head.intercept))
    np.testing.assert_allclose(clf.decision_function(texts), want_logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(clf.predict_proba(texts), head.proba(X), atol=1e-5, rtol=0)
    # Selective extraction: only the kept neurons, in the head's column order.
    np.testing.assert_allclose(clf.features(texts), X, atol=1e-5, rtol=0)


def test_device_features_score_like_texts(clf, model, data):
    """decision_function on features kept on the device (full and the classifier's columns)
    equals decision_function on the texts."""
    texts = data["test"][0]
    want = clf.decision_function(texts)
    full = extract(
        model, texts, dtype="float32", max_length=clf.max_length, progress=False, placement="device"
    )
    kept = clf.extract_kept(texts, placement="device")
    for src in (full, kept):
        assert isinstance(src, DeviceFeatures)
        np.testing.assert_allclose(clf.decision_function(src), want, atol=1e-5, rtol=0)


def test_explain_shares_add_up_to_the_prediction(clf, model):
    text = "the plot was great but the actor was awful"
    ex = clf.explain(text)
    tokens = model.tokenizer.convert_ids_to_tokens(model.tokenizer(text)["input_ids"])
    assert ex.tokens == tokens and ex.shares.shape == (len(tokens), 2)
    np.testing.assert_allclose(ex.shares.sum(1), 0, atol=1e-6)  # centred over the classes
    np.testing.assert_allclose(ex.proba, clf.predict_proba([text])[0], atol=1e-5)
    z = ex.bias + ex.shares.sum(0)
    np.testing.assert_allclose(np.exp(z) / np.exp(z).sum(), ex.proba, atol=1e-12)
    with pytest.raises(SpinError, match="not fitted"):
        SpinClassifier(model).explain(text)


# ---- tampered artifacts --------------------------------------------------------------------


@pytest.fixture
def copy(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "clf")


def test_changed_weights_byte_is_refused(copy, model):
    f = copy / WEIGHTS_FILE
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="sha256"):
        SpinClassifier.load(copy, model=model)


def test_other_version_is_refused(copy, model):
    meta = json.loads((copy / "classifier.json").read_text())
    meta["spin_jax_version"] = "9.9.0"
    (copy / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"9\.9\.0") as e:
        SpinClassifier.load(copy, model=model)
    assert spin_jax.__version__ in str(e.value)


def test_other_model_is_refused(saved, folder, tmp_path):
    other = spin_jax.load_model(str(hf_tiny.save_tiny_bert(tmp_path / "other_bert", seed=1)))
    with pytest.raises(ArtifactError, match="params_fingerprint") as e:
        SpinClassifier.load(saved, model=other)
    assert str(folder) in str(e.value)


def drop_model_key(meta):
    return json.dumps({k: v for k, v in meta.items() if k != "model"})


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda meta: '{"format": "spin_jax.classifier", ', "corrupted"),  # truncated
        (lambda meta: "[1, 2]", "not a spin_jax classifier"),
        (drop_model_key, r"lacks \['model'\]"),
    ],
)
def test_corrupted_json_is_refused(copy, model, edit, words):
    meta = json.loads((copy / "classifier.json").read_text())
    (copy / "classifier.json").write_text(edit(meta))
    with pytest.raises(ArtifactError, match=words):
        SpinClassifier.load(copy, model=model)


# ---- bad input -----------------------------------------------------------------------------


def test_one_class_is_refused(model):
    with pytest.raises(DataError, match="only one class 'yes'"):
        SpinClassifier(model, **FAST).fit(["a b", "c d", "e f"], ["yes"] * 3)


def test_mismatched_counts_are_refused(model):
    with pytest.raises(SpinError, match="3 texts but 2 labels"):
        SpinClassifier(model, **FAST).fit(["a b", "c d", "e f"], ["x", "y"])


# ---- helpers shared with the CLI and error tests ------------------------------------------


def write_csv(path, texts, labels=None):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if labels is None:
            w.writerows([["text"], *([t] for t in texts)])
        else:
            w.writerows([["text", "label"], *zip(texts, labels, strict=True)])
    return path
