"""Several classifiers of one model on one forward (issue #9): predict_many equals each
classifier alone, the forward runs once per batch to the deepest layer any head needs,
classifiers of different models are refused; `spin-jax predict` with several runs; and
inference sharded over 8 simulated devices equals one device.

The heads are random (tests.test_explain.random_head) over the session's tiny BERT: one
reads block 1 only, one every block, so sharing the forward changes how deep it runs.
"""

from __future__ import annotations

import csv
import functools

import jax
import numpy as np
import pytest

pytest.importorskip("torch")

import spin_jax  # noqa: E402
from spin_jax import inference  # noqa: E402
from spin_jax.classifier import (  # noqa: E402
    SpinClassifier,
    decision_function_many,
    predict_many,
    predict_proba_many,
)
from spin_jax.cli import main  # noqa: E402
from spin_jax.errors import SpinJaxError  # noqa: E402
from spin_jax.runner import BatchRunner  # noqa: E402
from tests import hf_tiny  # noqa: E402
from tests.fake_devices import run_python  # noqa: E402
from tests.test_explain import random_head  # noqa: E402
from tests.test_learner import reviews, write_csv  # noqa: E402

pytestmark = pytest.mark.torch
TASKS = {"task-a": (1, ("negative", "positive")), "task-b": (None, ("x", "y", "z"))}


def classifier(model, k, label_names, seed):
    """A classifier with a random head on blocks 1..k (k None: every block)."""
    c = model.config
    n_out = 1 if len(label_names) == 2 else len(label_names)
    clf = SpinClassifier(model)
    k = c.num_layers if k is None else k
    clf.head = random_head(c.num_layers, (c.hidden_size, c.ffn_size), k, n_out, seed)
    clf.label_names = label_names
    return clf


@pytest.fixture(scope="module")
def model(folder):
    return spin_jax.load_model(str(folder))


@pytest.fixture(scope="module")
def clfs(model):
    return [classifier(model, k, names, seed) for seed, (k, names) in enumerate(TASKS.values())]


@pytest.fixture(scope="module")
def texts():
    return reviews(13, 5)[0]


def test_many_heads_equal_each_head_alone(clfs, texts, model):
    assert [c.head.num_layers for c in clfs] == [1, model.config.num_layers]
    # Block 1 run alone and inside a deeper forward: equal up to fp32 rounding.
    for clf, z in zip(clfs, decision_function_many(clfs, texts), strict=True):
        np.testing.assert_allclose(z, clf.decision_function(texts), rtol=1e-5, atol=1e-5)
    for clf, p in zip(clfs, predict_proba_many(clfs, texts), strict=True):
        np.testing.assert_allclose(p, clf.predict_proba(texts), rtol=1e-5, atol=1e-6)
    assert predict_many(clfs, texts) == [clf.predict(texts) for clf in clfs]
    assert spin_jax.predict_many(clfs[:1], texts) == [clfs[0].predict(texts)]
    feats = spin_jax.extract(model, texts, dtype="float32", progress=False)
    for clf, p in zip(clfs, predict_proba_many(clfs, feats), strict=True):
        np.testing.assert_array_equal(p, clf.predict_proba(feats))


def test_the_forward_runs_once_per_batch(clfs, texts, model, monkeypatch):
    dispatched = []
    real = BatchRunner._dispatch

    def counting(self, ids, mask):
        dispatched.append(ids.shape)
        return real(self, ids, mask)

    monkeypatch.setattr(BatchRunner, "_dispatch", counting)
    predict_many(clfs, texts)
    assert len(dispatched) == 1  # 13 short texts: one batch, one program for both heads
    clfs[0].predict(texts)
    assert len(dispatched) == 2
    # The program dispatched holds one forward, as deep as the deeper head.
    L, B, T = model.config.num_layers, *dispatched[0]
    program = functools.partial(inference._heads_logits, config=model.config, k=L)
    sels = tuple(inference.selection(c.head) for c in clfs)
    ids = jax.ShapeDtypeStruct((B, T), np.int32)
    jaxpr = jax.make_jaxpr(program)(model.params, ids, ids, sels).jaxpr
    forwards = [e for e in jaxpr.eqns if e.params.get("name") == "_forward"]
    assert len(forwards) == 1
    assert forwards[0].outvars[0].aval.shape[0] == L + 1  # hidden [L+1, B, P, D]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """The same architecture with other weights (seed 1): another model."""
    return spin_jax.load_model(str(hf_tiny.save_tiny_bert(tmp_path_factory.mktemp("other"), 1)))


def test_classifiers_of_different_models_are_refused(clfs, other_model):
    stranger = classifier(other_model, 1, ("negative", "positive"), seed=7)
    with pytest.raises(SpinJaxError) as e:
        predict_many([clfs[0], stranger], ["a text"])
    message = str(e.value)
    assert "classifier 2 was fitted on model" in message and "params_fingerprint" in message
    assert "one forward cannot serve both" in message and "\n" not in message
    shorter = classifier(clfs[0].model, 1, ("negative", "positive"), seed=8)
    shorter.max_length = 16
    with pytest.raises(SpinJaxError, match="classifier 2 reads texts to max_length 16"):
        predict_many([clfs[0], shorter], ["a text"])


@pytest.fixture(scope="module")
def runs(clfs, tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return [clf.save(d / name) for clf, name in zip(clfs, TASKS, strict=True)]


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_cli_predict_several_runs(runs, texts, tmp_path):
    data = write_csv(tmp_path / "new.csv", texts)
    out = tmp_path / "preds.csv"
    assert main(["predict", *map(str, runs), "--data", str(data), "--out", str(out)]) == 0
    rows = read_csv(out)
    names = {name: names for name, (_, names) in TASKS.items()}
    header = ["text"]
    for task, labels in names.items():
        header += [task, *(f"{task}:p_{n}" for n in labels)]
    assert list(rows[0]) == header and [r["text"] for r in rows] == texts
    for run, (task, labels) in zip(runs, names.items(), strict=True):
        alone = tmp_path / f"{task}.csv"
        assert main(["predict", str(run), "--data", str(data), "--out", str(alone)]) == 0
        single = read_csv(alone)
        assert list(single[0]) == ["text", "prediction", *(f"p_{n}" for n in labels)]
        assert [r[task] for r in rows] == [r["prediction"] for r in single]
        for r, s in zip(rows, single, strict=True):
            got = [float(r[f"{task}:p_{n}"]) for n in labels]
            np.testing.assert_allclose(got, [float(s[f"p_{n}"]) for n in labels], atol=2e-6)


def test_cli_predict_refuses_runs_of_different_models(runs, other_model, tmp_path, capsys):
    stranger = classifier(other_model, 1, ("negative", "positive"), seed=7)
    run = stranger.save(tmp_path / "task-c")
    data = write_csv(tmp_path / "new.csv", ["a text"])
    capsys.readouterr()
    assert main(["predict", str(runs[0]), str(run), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spin-jax: error: task-c was fitted on model") and "\n" not in err
    assert "task-a" in err and "params_fingerprint" in err


SHARDED = """
import sys
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import numpy as np
from spin_jax.classifier import load_many, decision_function_many

assert jax.device_count() == 8, jax.devices()
texts = [line.rstrip("\\n") for line in open(sys.argv[1], encoding="utf-8")]
for i, z in enumerate(decision_function_many(load_many(sys.argv[3:]), texts)):
    np.save(f"{sys.argv[2]}/logits-{i}.npy", z)
"""


def test_eight_devices_equal_one(clfs, runs, texts, tmp_path):
    """Inference batches through the runner's mesh: rows split over 8 simulated devices."""
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    run_python(["-c", SHARDED, tmp_path / "texts.txt", tmp_path, *runs])
    for i, z in enumerate(decision_function_many(clfs, texts)):
        np.testing.assert_allclose(np.load(tmp_path / f"logits-{i}.npy"), z, atol=1e-5)
