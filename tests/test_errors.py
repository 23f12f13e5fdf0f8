"""Nothing silently wrong: every bad input is one line naming the problem and the fix (exit 2
in the CLI), nothing half-written is left behind, and every artifact is hashed and checked.

One tiny random BERT (the session's `folder`) and one small fitted classifier serve all tests.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest

import spin_jax
from spin_jax.cli import main
from spin_jax.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    NotFittedError,
    SpinError,
    SpinJaxError,
    StoreError,
    WeightsError,
)
from tests import hf_tiny
from tests.test_learner import FAST, reviews, write_csv

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model(folder):
    return spin_jax.load_model(str(folder))


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    """A fitted classifier saved as a run folder (what `spin-jax fit --out` writes)."""
    clf = spin_jax.SpinClassifier(model, feature_dtype="float32", **FAST)
    clf.fit(*reviews(60, 0), valid=reviews(20, 1))
    return clf.save(tmp_path_factory.mktemp("errors") / "run")


@pytest.fixture
def csvs(tmp_path):
    texts, labels = reviews(20, 5)
    return {
        "good": write_csv(tmp_path / "good.csv", texts, labels),
        "empty_text": write_csv(tmp_path / "e.csv", [*texts[:4], "  ", ""], [*labels[:6]]),
        "nan_label": write_csv(tmp_path / "n.csv", texts[:5], [*labels[:3], "NaN", "null"]),
        "float_label": write_csv(tmp_path / "f.csv", texts[:5], ["0.5", "1.25", "3", "2", "1"]),
    }


def one_error_line(capsys, *words):
    """stderr is one `spin-jax: error:` line holding `words`, and no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("spin-jax: error: "), err
    for w in words:
        assert w in err[0], (w, err[0])


def test_every_library_error_derives_from_one_base():
    for cls in (ArtifactError, ConfigError, DataError, NotFittedError, SpinError, StoreError):
        assert issubclass(cls, SpinJaxError) and issubclass(cls, ValueError)
    assert spin_jax.SpinJaxError is SpinJaxError


# ---- the command line: bad arguments and files, before any work ------------------------------


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--etas", "abc", ["--etas", "'abc' is not a number"]),
        ("--etas", "0.1,2", ["--etas", "not in (0, 1]"]),
        ("--max-length", "0", ["max_length 0", "positive"]),
        ("--valid-fraction", "1.5", ["--valid-fraction", "between 0 and 1"]),
    ],
)
def test_bad_fit_arguments_are_one_line(folder, csvs, tmp_path, capsys, flag, value, words):
    out = tmp_path / "run"
    argv = ["fit", "--model", str(folder), "--train", str(csvs["good"]), "--out", str(out)]
    assert main([*argv, flag, value]) == 2
    one_error_line(capsys, *words)
    assert not out.exists()


def test_fit_out_naming_a_file_is_refused(folder, csvs, tmp_path, capsys):
    out = tmp_path / "taken.txt"
    out.write_text("keep me")
    argv = ["fit", "--model", str(folder), "--train", str(csvs["good"]), "--out", str(out)]
    assert main(argv) == 2
    one_error_line(capsys, "existing file")
    assert out.read_text() == "keep me"


def test_predict_out_in_a_missing_folder_is_refused_before_the_model_runs(
    run, csvs, tmp_path, capsys, monkeypatch
):
    ran = []
    monkeypatch.setattr(spin_jax.SpinClassifier, "load", lambda *a, **k: ran.append(1))
    out = tmp_path / "missing_dir" / "p.csv"
    assert main(["predict", str(run), "--data", str(csvs["good"]), "--out", str(out)]) == 2
    one_error_line(capsys, "does not exist", "missing_dir")
    assert not ran and not out.parent.exists()


def test_predict_writes_the_whole_file_or_nothing(run, csvs, tmp_path):
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), "--data", str(csvs["good"]), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 21 and not list(tmp_path.glob(".p.csv*"))


def test_ctrl_c_is_one_line_saying_how_to_resume(folder, csvs, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(spin_jax.SpinClassifier, "fit", interrupted)
    out = tmp_path / "run"
    argv = ["fit", "--model", str(folder), "--train", str(csvs["good"]), "--out", str(out)]
    assert main([*argv, "--quiet"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "re-run the same command to resume" in err[0], err
    assert str(out) in err[0]


# ---- models ------------------------------------------------------------------------------------


def test_missing_model_folder_says_no_such_folder(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no such model folder"):
        spin_jax.load_model(str(tmp_path / "nope"))
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    one_error_line(capsys, "no such model folder")


def test_mis_shaped_layer_weight_is_named(folder, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    bad = shutil.copytree(folder, tmp_path / "bad")
    weights = load_file(str(bad / "model.safetensors"))
    key = next(k for k in weights if k.endswith("layer.1.output.dense.weight"))
    weights[key] = weights[key][:, :-1].copy()
    save_file(weights, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=key.replace(".", r"\.")):
        spin_jax.load_model(str(bad))
    assert main(["convert", str(bad), str(tmp_path / "out")]) == 2
    one_error_line(capsys, key, "shape")


def test_moved_model_folder_says_pass_model(folder, run, tmp_path, capsys):
    moved = shutil.copytree(run, tmp_path / "run")
    meta = json.loads((moved / "classifier.json").read_text())
    meta["model"]["source"] = str(tmp_path / "moved_away")
    write_meta(moved, meta)
    with pytest.raises(ConfigError, match="pass its new location"):
        spin_jax.SpinClassifier.load(moved)
    assert main(["explain", str(moved), "a fine film"]) == 2
    one_error_line(capsys, "moved_away", "--model")
    assert main(["explain", str(moved), "a fine film", "--model", str(folder)]) == 0


# ---- the artifact: every byte of it is hashed --------------------------------------------------


def write_meta(path, meta):
    """Writes classifier.json as a careful editor would: with its own hash made anew."""
    from spin_jax.classifier import meta_sha256

    meta = {**meta, "meta_sha256": meta_sha256(meta)}
    (path / "classifier.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(label_names=m["label_names"][::-1]),
        lambda m: m.update(num_layers=m["num_layers"] + 2),
        lambda m: m["tokenizer"].update(max_length=7),
    ],
)
def test_edited_classifier_json_is_refused(run, model, tmp_path, capsys, edit):
    copy = shutil.copytree(run, tmp_path / "run")
    meta = json.loads((copy / "classifier.json").read_text())
    edit(meta)
    (copy / "classifier.json").write_text(json.dumps(meta, indent=2))
    with pytest.raises(ArtifactError, match="does not match its own recorded sha256"):
        spin_jax.SpinClassifier.load(copy, model=model)
    assert main(["explain", str(copy), "a fine film"]) == 2
    one_error_line(capsys, "classifier.json", "sha256")


def test_rehashed_json_that_disagrees_with_the_weights_is_refused(run, model, tmp_path):
    copy = shutil.copytree(run, tmp_path / "run")
    meta = json.loads((copy / "classifier.json").read_text())
    meta["n_neurons"] += 1
    write_meta(copy, meta)
    with pytest.raises(ArtifactError, match="do not fit classifier.json"):
        spin_jax.SpinClassifier.load(copy, model=model)


def test_edited_report_is_refused(run, model, tmp_path):
    copy = shutil.copytree(run, tmp_path / "run")
    report = json.loads((copy / "report.json").read_text())
    report["spin"]["valid"] = 1.0
    (copy / "report.json").write_text(json.dumps(report))
    with pytest.raises(ArtifactError, match="report.json does not match"):
        spin_jax.SpinClassifier.load(copy, model=model)


def test_artifact_files_are_readable_like_the_json(run):
    mode = lambda f: stat.S_IMODE(os.stat(run / f).st_mode)  # noqa: E731
    assert mode("classifier.safetensors") == mode("classifier.json") == mode("report.json")


def test_unfinished_fit_says_rerun_to_resume(tmp_path, capsys, csvs):
    (tmp_path / "run" / "features").mkdir(parents=True)
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(csvs["good"])]) == 2
    one_error_line(capsys, "did not finish", "re-run the same fit command")


# ---- the Python API ----------------------------------------------------------------------------


def test_predict_before_fit_is_not_fitted_error(model):
    clf = spin_jax.SpinClassifier(model)
    for call in (clf.predict, clf.predict_proba, clf.decision_function, clf.features):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            call(["x"])
    with pytest.raises(NotFittedError):
        clf.score(["x"], ["a"])


def test_texts_may_be_any_iterable(run, model):
    clf = spin_jax.SpinClassifier.load(run, model=model)
    texts = ["a fine film", "dull"]
    want = clf.predict_proba(texts)
    np.testing.assert_array_equal(clf.predict_proba(t for t in texts), want)
    with pytest.raises(DataError, match="row 2 of"):
        clf.predict(t for t in ["fine", " "])
    feats = spin_jax.extract(model, (t for t in texts), progress=False, placement="host")
    assert feats.n_rows == 2


def test_a_single_string_is_a_type_error(run, model):
    clf = spin_jax.SpinClassifier.load(run, model=model)
    for call in (clf.predict, clf.predict_proba, clf.decision_function):
        with pytest.raises(TypeError, match=r"wrap it in a list: \[text\]"):
            call("one string")
    with pytest.raises(TypeError, match="single string"):
        spin_jax.SpinClassifier(model).fit("abc", [0, 1, 0])


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(selection="best"), "selection 'best'"),
        (dict(lam_grid="Paper"), "lam_grid 'Paper'"),
        (dict(etas=(0.0, 0.5)), r"etas \[0.0\]"),
        (dict(etas="0.1"), "pass a tuple"),
        (dict(metric="f1"), "metric 'f1'"),
        (dict(poolings=("mean", "avg")), r"poolings \['avg'\]"),
        (dict(n_lams=0), "n_lams=0"),
    ],
)
def test_bad_options_are_refused_before_any_work(options, words):
    with pytest.raises(SpinError, match=words):
        spin_jax.SpinOptions(**options)
    with pytest.raises(SpinError, match=words):  # before the model is even loaded
        spin_jax.SpinClassifier("/no/such/model", **options)


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(max_length=0), "max_length=0"),
        (dict(poolings=("mean", "avg")), "poolings"),
        (dict(dtype="int8"), "dtype 'int8'"),
        (dict(placement="gpu"), "placement='gpu'"),
        (dict(num_layers=-1), "num_layers=-1"),
    ],
)
def test_bad_extract_options_are_refused(options, words):
    from spin_jax.extraction import ExtractOptions

    with pytest.raises(SpinJaxError, match=words):
        ExtractOptions(**options)


def test_classifier_max_length_must_be_positive(model):
    with pytest.raises(SpinError, match="max_length 0"):
        spin_jax.SpinClassifier(model, max_length=0)


# ---- texts and labels ----------------------------------------------------------------------


def test_empty_texts_are_refused_everywhere(run, model, csvs, tmp_path, capsys):
    with pytest.raises(DataError, match="row 5, 6 of"):
        spin_jax.load_texts(csvs["empty_text"])
    clf = spin_jax.SpinClassifier.load(run, model=model)
    with pytest.raises(DataError, match="row 2 of the given texts"):
        clf.predict(["fine", " \n"])
    with pytest.raises(DataError, match="text is empty"):
        clf.explain("   ")
    capsys.readouterr()
    assert main(["predict", str(run), "--data", str(csvs["empty_text"])]) == 2
    one_error_line(capsys, "empty or whitespace-only", "--allow-empty")
    assert main(["explain", str(run), ""]) == 2
    one_error_line(capsys, "text is empty")
    assert main(["predict", str(run), "--data", str(csvs["empty_text"]), "--allow-empty"]) == 0
    assert len(spin_jax.SpinClassifier.load(run, model=model, allow_empty=True).predict([""]))


def test_fit_refuses_empty_texts_before_loading_the_model(csvs, tmp_path, capsys):
    out = tmp_path / "run"
    model = str(tmp_path / "no_model_yet")  # the data is read, and refused, first
    argv = ["fit", "--model", model, "--train", str(csvs["empty_text"]), "--out", str(out)]
    assert main(argv) == 2
    one_error_line(capsys, "empty or whitespace-only text in row 5, 6")
    assert not (out / "classifier.json").exists()


def test_missing_and_nan_labels_are_named(csvs, capsys, folder, tmp_path):
    with pytest.raises(DataError, match="label is missing in row 4, 5 of"):
        spin_jax.load_texts(csvs["nan_label"])
    argv = ["fit", "--model", str(folder), "--train", str(csvs["nan_label"])]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    one_error_line(capsys, "label is missing in row 4, 5")


def test_fractional_labels_look_like_regression(csvs):
    with pytest.raises(DataError, match="regression target"):
        spin_jax.load_texts(csvs["float_label"])
    with pytest.raises(DataError, match="regression target"):
        spin_jax.data.encode_labels([0.5, 1.0, 2.0])


def test_too_many_classes_look_like_regression(tmp_path):
    texts = [f"text {i}" for i in range(300)]
    labels = [str(i % 267) for i in range(300)]
    with pytest.raises(DataError, match="267 distinct labels in 300 rows"):
        spin_jax.load_texts(write_csv(tmp_path / "r.csv", texts, labels))
    many = [str(i % 30) for i in range(300)]  # 30 classes of 10 rows: classes
    assert len(spin_jax.load_texts(write_csv(tmp_path / "c.csv", texts, many)).label_names) == 30


def test_over_long_texts_get_one_warning_line(run, model, caplog, capsys):
    clf = spin_jax.SpinClassifier.load(run, model=model)
    long = " ".join(["word"] * 500)
    with caplog.at_level("WARNING", logger="spin_jax"):
        clf.predict([long, "short", long])
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert lines == [
        f"2 of 3 texts are longer than {clf.max_length} tokens: each is read up "
        f"to its first {clf.max_length}."
    ]
    assert "Token indices sequence length" not in capsys.readouterr().err


# ---- feature stores ----------------------------------------------------------------------------


def test_flipped_chunk_byte_is_refused_on_read(model, tmp_path, run, capsys):
    texts, labels = reviews(12, 7)
    store = spin_jax.extract(
        model, texts, tmp_path / "store", dtype="float32", chunk_rows=5, progress=False
    )
    for name in ("hidden", "ffn"):  # whichever the classifier reads
        f = store.path / f"{name}-00001.npy"
        raw = bytearray(f.read_bytes())
        raw[-3] ^= 0x10
        f.write_bytes(bytes(raw))
    opened = spin_jax.FeatureStore.open(store.path)
    opened.read("ffn", rows=[0, 1])  # chunk 0 is whole
    with pytest.raises(StoreError, match=r"ffn-00001.npy \(chunk 1\) does not match"):
        opened.read("ffn", rows=[6])
    assert main(["predict", str(run), "--data", str(store.path)]) == 2
    one_error_line(capsys, "-00001.npy (chunk 1)", "sha256")


def test_resumed_extract_summary_counts_every_row(model, tmp_path, monkeypatch):
    texts = reviews(12, 8)[0]
    out = tmp_path / "store"
    real = spin_jax.FeatureStore.write_chunk

    def crash_after_one(self, i, arrays, **kw):
        real(self, i, arrays, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(spin_jax.FeatureStore, "write_chunk", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        spin_jax.extract(model, texts, out, dtype="float32", chunk_rows=5, progress=False)
    monkeypatch.setattr(spin_jax.FeatureStore, "write_chunk", real)
    spin_jax.extract(model, texts, out, dtype="float32", chunk_rows=5, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 12 and (summary["chunks_done"], summary["chunks_skipped"]) == (2, 1)
    ids, _ = spin_jax.encode(model.tokenizer, texts, 67)
    assert summary["tokens"] == sum(map(len, ids))


def test_float16_overflow_is_refused(tmp_path):
    hf = hf_tiny.bert(vocab_size=30522, max_position_embeddings=67)
    with torch.no_grad():
        hf.encoder.layer[0].intermediate.dense.weight.mul_(1e6)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_tiny.minilm_dir())
    big = spin_jax.from_transformers(hf, tok)
    texts = reviews(4, 9)[0]
    with pytest.raises(StoreError, match="overflows float16"):
        spin_jax.extract(big, texts, tmp_path / "s16", dtype="float16", progress=False)
    with pytest.raises(StoreError, match="overflows float16"):
        spin_jax.extract(big, texts, dtype="float16", progress=False, placement="host")
    wide = spin_jax.extract(big, texts, dtype="bfloat16", progress=False, placement="host")
    assert np.isfinite(np.asarray(wide.read("ffn"), np.float32)).all()


# ---- fine-tuned heads: the checkpoint's labels matched to the data's ----------------------------


def test_fine_tuned_head_labels_are_matched_by_name(folder, tmp_path):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from spin_jax.classifier import head_label_order

    ft = tmp_path / "ft"
    hf_tiny.save_tiny_bert(ft, seed=3, cls=BertForSequenceClassification)
    config = json.loads((ft / "config.json").read_text())
    model = spin_jax.load_model(str(ft))
    order, how = head_label_order(model, ("negative", "positive"))
    assert how.startswith("by position") and order.tolist() == [0, 1]
    config["id2label"] = {"0": "Positive", "1": "negative"}  # the reverse of sorted names
    config["label2id"] = {"Positive": 0, "negative": 1}
    (ft / "config.json").write_text(json.dumps(config))
    model = spin_jax.load_model(str(ft))
    order, how = head_label_order(model, ("negative", "positive"))
    assert how == "by name (id2label)" and order.tolist() == [1, 0]
    with pytest.raises(ArtifactError, match=r"do not name the data's classes \['neutral'\]"):
        head_label_order(model, ("negative", "neutral"))
    clf = spin_jax.SpinClassifier(model, feature_dtype="float32", **FAST)
    clf.fit(*reviews(40, 0), valid=reviews(20, 1))
    base = clf.report["baselines"]["fine_tuned_head"]
    assert base["label_match"] == "by name (id2label)"
    hf = BertForSequenceClassification.from_pretrained(ft).eval()
    texts, labels = reviews(20, 1)
    enc = AutoTokenizer.from_pretrained(ft)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = hf(**enc).logits.argmax(-1).numpy()  # 0 means Positive here
    want = np.mean(pred == (np.array(labels) == "negative"))
    assert base["valid"] == pytest.approx(want, abs=1e-6)
