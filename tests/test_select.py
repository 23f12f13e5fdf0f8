"""Selective extraction: a neuron selection == those columns of a full extraction (in memory,
on disk in chunks, resumed after a crash), refused selections, and a classifier applied to
a store of its kept neurons == the classifier on texts (Python and CLI).

One tiny random BERT (3 blocks, D=40, F=56, MiniLM's tokenizer) and a hand-made SpinHead:
no probe is fitted here, so the module costs a few compilations.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import spin_jax
from spin_jax.classifier import SpinClassifier
from spin_jax.cli import main
from spin_jax.data import TextDataset
from spin_jax.extraction import DeviceFeatures, MemoryFeatures, extract
from spin_jax.learner import SpinError, SpinHead, fit_spin
from spin_jax.models import InputError
from spin_jax.selection import NeuronSelection, neurons_of, parse_neurons
from spin_jax.store import FeatureStore, StoreMismatchError
from tests.test_extract import MAX_LENGTH, chunk_digests, make_texts
from tests.test_learner import reviews, write_csv

pytest.importorskip("torch")
# Unsorted, repeated, a JSON-style string layer key; deepest layer 2 of 3: an early exit.
SPEC = {"hidden": {0: [7, 3], 2: [11, 1, 1]}, "ffn": {"2": [55, 10], 1: [0]}}
SORTED = {"hidden": [[0, 3], [0, 7], [2, 1], [2, 11]], "ffn": [[1, 0], [2, 10], [2, 55]]}


@pytest.fixture(scope="module")
def model(folder):
    return spin_jax.load_model(str(folder))


@pytest.fixture(scope="module")
def texts():
    return make_texts(23, seed=4, max_words=40)  # shuffled lengths, some truncated, one empty


def run(model, texts, out=None, **kw):
    return extract(
        model,
        texts,
        out,
        max_length=MAX_LENGTH,
        dtype="float32",
        progress=False,
        allow_empty=True,
        **kw,
    )


@pytest.fixture(scope="module")
def full(model, texts):
    return run(model, texts)


def columns_of(full, neurons, poolings=(0, 1, 2)):
    """[N, P, M] of a full source: the hidden pairs, then the ffn pairs."""
    hidden, ffn = full.read("hidden"), full.read("ffn")
    cols = [hidden[:, j, :, n] for j, n in neurons["hidden"]]
    cols += [ffn[:, j - 1, :, n] for j, n in neurons["ffn"]]
    return np.stack(cols, axis=-1)[:, list(poolings)]


# ---- extraction --------------------------------------------------------------------------


def test_selection_equals_columns_of_full_extraction(model, texts, full):
    sel = run(model, texts, neurons=SPEC)
    # In host memory on CPU; on an accelerator "auto" placement keeps them on the device.
    assert isinstance(sel, (MemoryFeatures, DeviceFeatures)) and set(sel.arrays) == {"columns"}
    assert sel.manifest["neurons"] == SORTED and sel.manifest["num_layers"] == 2
    assert sel.shape("columns") == (len(texts), 3, 7)
    np.testing.assert_allclose(sel.read("columns"), columns_of(full, SORTED), atol=1e-6, rtol=0)


def test_store_in_chunks_equals_memory(tmp_path, model, texts, full):
    store = run(model, texts, tmp_path / "s", neurons=SPEC, chunk_rows=5, poolings=("max", "token"))
    store = FeatureStore.open(tmp_path / "s", verify=True)
    assert store.n_chunks == 5 and store.manifest["poolings"] == ["max", "token"]
    assert store.manifest["neurons"] == SORTED and store.arrays == {"columns": ((2, 7), "float32")}
    want = columns_of(full, SORTED, poolings=(2, 0))
    np.testing.assert_allclose(store.read("columns"), want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(store.read("columns", rows=[9, 2]), want[[9, 2]], atol=1e-6)


def test_num_layers_and_embeddings_only(model, texts, full):
    deeper = run(model, texts[:4], neurons=SPEC, num_layers=3)
    assert deeper.manifest["num_layers"] == 3
    emb = run(model, texts[:4], neurons={"hidden": {0: [5]}})  # no block runs at all
    assert emb.manifest["num_layers"] == 0
    want = full.read("hidden", rows=range(4), layers=[0], neurons=[5])[:, 0, :, 0]
    np.testing.assert_allclose(emb.read("columns")[:, :, 0], want, atol=1e-6, rtol=0)


class Crash(Exception):
    pass


def test_resume_after_crash_gives_identical_files(tmp_path, model, texts, monkeypatch):
    run(model, texts, tmp_path / "whole", neurons=SPEC, chunk_rows=4)
    whole = chunk_digests(tmp_path / "whole")
    assert len(whole) == 6  # 23 rows in chunks of 4, one array
    real_write, writes = FeatureStore.write_chunk, []

    def crashing_write(self, i, arrays, **kw):
        if len(writes) == 2:
            raise Crash("power cut")
        writes.append(i)
        real_write(self, i, arrays, **kw)

    monkeypatch.setattr(FeatureStore, "write_chunk", crashing_write)
    with pytest.raises(Crash):
        run(model, texts, tmp_path / "crashed", neurons=SPEC, chunk_rows=4)
    monkeypatch.setattr(FeatureStore, "write_chunk", real_write)
    assert len(chunk_digests(tmp_path / "crashed")) == 2
    run(model, texts, tmp_path / "crashed", neurons=SPEC, chunk_rows=4)
    assert chunk_digests(tmp_path / "crashed") == whole
    summary = json.loads((tmp_path / "crashed" / "summary.json").read_text())
    assert (summary["chunks_done"], summary["chunks_skipped"]) == (4, 2)


def test_resume_with_another_selection_or_a_full_one_is_refused(tmp_path, model, texts):
    out = tmp_path / "s"
    run(model, texts, out, neurons=SPEC, chunk_rows=8)
    before = chunk_digests(out)
    other = {"hidden": {0: [3, 7], 2: [1, 11]}, "ffn": {1: [0], 2: [10, 54]}}  # same shape
    with pytest.raises(StoreMismatchError, match="neurons: stored") as e:
        run(model, texts, out, neurons=other, chunk_rows=8)
    assert "arrays" not in str(e.value)
    with pytest.raises(StoreMismatchError, match="neurons"):
        run(model, texts, out, chunk_rows=8)
    assert chunk_digests(out) == before


# ---- refused selections ------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"attention": {1: [0]}}, ["unknown representation", "'attention'", "hidden", "ffn"]),
        ({"ffn": {1: [-1]}}, ["ffn layer 1 neuron -1 is out of range", "0 to 55"]),
        ({"hidden": {1: [40]}}, ["hidden layer 1 neuron 40 is out of range", "0 to 39"]),
        ({"hidden": {4: [0]}}, ["hidden layer 4 is out of range", "0 to 3"]),
        ({"ffn": {0: [0]}}, ["ffn layer 0 is out of range", "1 to 3"]),
        ({"ffn": {"-1": [0]}}, ["ffn layer -1 is out of range"]),
        ({}, ["selection is empty"]),
        ({"ffn": {}}, ["selection is empty"]),
        ({"ffn": {2: []}}, ["ffn layer 2 lists no neurons"]),
        ({"ffn": {2: [1.5]}}, ["ffn layer 2 neuron 1.5 is not an integer"]),
        ({"ffn": {2: ["3"]}}, ["neuron '3' is not an integer"]),
        ({"ffn": {2: [True]}}, ["neuron True is not an integer"]),
        ({"ffn": {1.0: [3]}}, ["ffn layer 1.0 is not an integer"]),
        ({"ffn": {"two": [3]}}, ["ffn layer 'two' is not an integer"]),
        ({"ffn": {2: 3}}, ["ffn layer 2: give a list of neuron indices"]),
        ({"ffn": [[2, 3, 4]]}, ["[[layer, neuron], ...]"]),
        ([[1, 2]], ["neurons must map a representation"]),
    ],
)
def test_bad_selections_are_refused(model, spec, words):
    with pytest.raises(InputError) as e:
        parse_neurons(spec, model.config)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_selection_deeper_than_num_layers_is_refused_before_a_store(tmp_path, model, texts):
    with pytest.raises(InputError, match="layer 2, deeper than num_layers=1"):
        run(model, texts, tmp_path / "s", neurons=SPEC, num_layers=1)
    assert not (tmp_path / "s").exists()


def test_other_selection_forms_parse_alike(model):
    want = parse_neurons(SPEC, model.config)
    assert want == NeuronSelection(**{r: tuple(map(tuple, p)) for r, p in SORTED.items()})
    assert parse_neurons(SORTED, model.config) == want  # the manifest's form
    assert parse_neurons(want, model.config) == want
    assert parse_neurons({"ffn": {np.int64(2): [np.int32(3)]}}, model.config).ffn == ((2, 3),)


# ---- a classifier on its kept neurons ----------------------------------------------------


@pytest.fixture(scope="module")
def clf(model):
    """A hand-made head over both representations and poolings token and max, 2 of 3 blocks."""
    rng = np.random.default_rng(0)
    rep, pool = np.array([1, 0, 1, 0, 1]), np.array([2, 0, 0, 2, 2])
    layer, neuron = np.array([2, 1, 1, 2, 2]), np.array([17, 39, 0, 5, 3])
    head = SpinHead(
        rep.astype(np.int32),
        pool.astype(np.int32),
        layer.astype(np.int32),
        neuron.astype(np.int32),
        rng.normal(size=5).astype(np.float32) * 0.1,
        rng.uniform(0.5, 2, size=5).astype(np.float32),
        rng.normal(size=(5, 1)).astype(np.float32),
        np.array([0.1], np.float32),
        2,
    )
    c = SpinClassifier(model, max_length=MAX_LENGTH, allow_empty=True)  # texts hold ""
    c.head, c.label_names = head, ("negative", "positive")
    return c


def test_kept_store_gives_the_logits_of_texts(tmp_path, clf, texts, full):
    want = clf.decision_function(texts)
    kept = clf.extract_kept(texts)
    assert kept.manifest["neurons"] == neurons_of(clf.head).to_json()
    assert kept.manifest["poolings"] == ["token", "max"] and kept.manifest["num_layers"] == 2
    assert kept.shape("columns") == (len(texts), 2, 5)
    store = clf.extract_kept(texts, tmp_path / "kept", chunk_rows=6)
    for src in (kept, store, FeatureStore.open(tmp_path / "kept"), full):
        np.testing.assert_allclose(clf.decision_function(src), want, atol=1e-5, rtol=0)
        np.testing.assert_allclose(clf.features(src), clf.features(texts), atol=1e-5, rtol=0)
        np.testing.assert_allclose(clf.predict_proba(src), clf.predict_proba(texts), atol=1e-5)
    assert clf.predict(kept) == clf.predict(texts)


def test_score_reads_the_labels_of_a_store(clf, model):
    texts, labels = reviews(16, 5)
    names = ("negative", "positive")
    y = np.array([names.index(label) for label in labels])
    ds = TextDataset(texts=texts, labels=y, label_names=names, source="<memory>")
    kept = clf.extract_kept(ds)
    assert clf.score(kept) == clf.score(texts, labels) == clf.score(kept, labels)
    with pytest.raises(SpinError, match="hold no labels"):
        clf.score(clf.extract_kept(texts))


def test_sources_that_cannot_serve_the_classifier_are_refused(clf, model, texts, full):
    few = texts[:3]
    some = {"ffn": {2: [17, 3]}, "hidden": {1: [39]}}  # lacks ffn layer 1 and hidden layer 2
    cases = [
        (run(model, few, neurons=some, poolings=("token", "max")), "lack 2 of the classifier"),
        (run(model, few, num_layers=1), "early exit at 1 layers; this classifier reads layer 2"),
        (run(model, few, neurons=neurons_of(clf.head), poolings=("max",)), r"also reads \['token"),
    ]
    other = MemoryFeatures(full.arrays, None, None, {**full.manifest, "params_fingerprint": "x"})
    cases.append((other, "another model"))
    for src, words in cases:
        with pytest.raises(SpinError, match=words):
            clf.decision_function(src)


def test_fitting_on_a_selective_store_is_refused(clf, texts):
    kept = clf.extract_kept(texts[:4])
    with pytest.raises(SpinError, match="only selected neurons"):
        SpinClassifier(clf.model).fit_features(kept, kept)
    with pytest.raises(SpinError, match="the train features hold only selected neurons"):
        fit_spin(kept, kept)
    with pytest.raises(SpinError, match=r"extract_kept takes \['num_layers'\]"):
        clf.extract_kept(texts, num_layers=3)


# ---- the CLI -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, clf):
    d = tmp_path_factory.mktemp("cli")
    texts, labels = reviews(19, 6)
    return {
        "run": clf.save(d / "run"),
        "csv": write_csv(d / "test.csv", texts, labels),
        "store": d / "kept",
        "texts": texts,
    }


def cli_extract(folder, files, *extra):
    args = ["extract", "--allow-empty", "--model", str(folder), "--data", str(files["csv"])]
    args.append("--quiet")
    return main([*args, *extra])


def test_cli_extract_classifier_then_evaluate_and_predict(folder, cli_files, capsys, tmp_path):
    f = cli_files
    assert cli_extract(folder, f, "--classifier", str(f["run"]), "--out", str(f["store"])) == 0
    store = FeatureStore.open(f["store"])
    assert store.manifest["dtype"] == "float32" and store.manifest["max_length"] == MAX_LENGTH
    results = []
    for data in (f["csv"], f["store"]):
        capsys.readouterr()
        assert main(["evaluate", str(f["run"]), "--data", str(data), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1] and results[0]["n"] == 19
    preds = []
    for data in (f["csv"], f["store"]):
        out = tmp_path / "pred.csv"
        assert main(["predict", str(f["run"]), "--data", str(data), "--out", str(out)]) == 0
        with open(out, newline="", encoding="utf-8") as fh:
            preds.append(list(csv.DictReader(fh)))
    assert [r["text"] for r in preds[0]] == f["texts"]
    assert [r["row"] for r in preds[1]] == [str(i) for i in range(19)]
    for a, b in zip(*preds, strict=True):
        assert a["prediction"] == b["prediction"]
        assert float(a["p_positive"]) == pytest.approx(float(b["p_positive"]), abs=1e-5)


def test_cli_extract_neurons_file(folder, cli_files, tmp_path, model):
    spec = tmp_path / "neurons.json"
    spec.write_text(json.dumps(SPEC))
    out = tmp_path / "s"
    assert cli_extract(folder, cli_files, "--neurons", str(spec), "--out", str(out)) == 0
    store = FeatureStore.open(out)
    assert store.manifest["neurons"] == SORTED and store.manifest["dtype"] == "float16"
    full = run(model, cli_files["texts"])
    np.testing.assert_allclose(
        store.read("columns"), columns_of(full, SORTED), atol=2e-3, rtol=1e-3
    )


@pytest.mark.parametrize(
    "setup, words",
    [
        ("bad json", ["not valid JSON"]),
        ("missing file", ["neurons file not found"]),
        ("bad neuron", ["ffn layer 2 neuron 56 is out of range"]),
        ("with num-layers", ["--classifier chooses", "--num_layers"]),
    ],
)
def test_cli_extract_bad_selection_exits_2(setup, words, folder, cli_files, tmp_path, capsys):
    spec, out = tmp_path / "neurons.json", tmp_path / "s"
    extra = ["--neurons", str(spec)]
    if setup == "bad json":
        spec.write_text('{"ffn": {2: [1]}}')
    elif setup == "bad neuron":
        spec.write_text('{"ffn": {"2": [56]}}')
    elif setup == "with num-layers":
        extra = ["--classifier", str(cli_files["run"]), "--num-layers", "3"]
    capsys.readouterr()
    assert cli_extract(folder, cli_files, *extra, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("spin-jax: error:")
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()
