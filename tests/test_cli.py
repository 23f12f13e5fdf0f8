"""The fit / evaluate / predict / explain CLI on a tiny random BERT (the session's `folder`)
and short synthetic reviews: what each command writes and prints."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from spin_jax.classifier import WEIGHTS_FILE, SpinClassifier
from spin_jax.cli import main
from tests.test_learner import reviews, write_csv


@pytest.fixture(scope="module")
def data():
    return {"train": reviews(60, 0), "valid": reviews(20, 1), "test": reviews(40, 2)}


@pytest.fixture(scope="module")
def files(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("csv")
    out = {name: write_csv(d / f"{name}.csv", *data[name]) for name in data}
    out["new"] = write_csv(d / "new.csv", reviews(7, 3)[0])
    texts, labels = data["test"]
    out["unseen"] = write_csv(d / "unseen.csv", texts[:3], ["positive", "neutral", "negative"])
    return out


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, folder, files):
    run = tmp_path_factory.mktemp("cli") / "run"
    code = main(
        [
            "fit",
            "--model",
            str(folder),
            "--train",
            str(files["train"]),
            "--test",
            str(files["test"]),
            "--out",
            str(run),
            "--quiet",
            "--feature-dtype",
            "float32",
            "--etas",
            "0.1,0.5,0.8",
        ]
    )
    assert code == 0
    return run


def test_cli_fit_writes_a_loadable_classifier(cli_run, data):
    report = json.loads((cli_run / "report.json").read_text())
    assert report["n_test"] == len(data["test"][0])
    assert report["spin"]["test"] is not None
    assert (cli_run / "classifier.json").exists() and (cli_run / WEIGHTS_FILE).exists()


def test_cli_explain_json(cli_run, capsys):
    capsys.readouterr()
    assert main(["explain", str(cli_run), "a great film", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prediction"] == max(out["proba"], key=out["proba"].get)
    assert [r["token"] for r in out["tokens"]] == ["[CLS]", "a", "great", "film", "[SEP]"]
    z = {n: out["bias"][n] + sum(r[n] for r in out["tokens"]) for n in ("negative", "positive")}
    p_pos = 1 / (1 + np.exp(z["negative"] - z["positive"]))
    assert out["proba"]["positive"] == pytest.approx(p_pos, abs=1e-6)
    assert main(["explain", str(cli_run), "a great film"]) == 0
    assert capsys.readouterr().out.startswith(f"prediction: {out['prediction']}")


def test_cli_evaluate_json(cli_run, files, data, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(cli_run), "--data", str(files["test"]), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["n"] == len(data["test"][0])
    assert 0.7 <= result["accuracy"] <= 1 and 0 <= result["macro_f1"] <= 1
    assert 0 <= result["num_layers"] <= 3  # 0: a head of the embedding layer alone
    assert result["label_names"] == ["negative", "positive"]


def test_cli_predict_writes_one_row_per_text(cli_run, files, tmp_path):
    out = tmp_path / "preds.csv"
    assert main(["predict", str(cli_run), "--data", str(files["new"]), "--out", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == reviews(7, 3)[0]
    assert {r["prediction"] for r in rows} <= {"negative", "positive"}
    for r in rows:
        assert abs(float(r["p_negative"]) + float(r["p_positive"]) - 1) < 1e-5


def test_cli_evaluate_unseen_label_exits_2(cli_run, files, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(cli_run), "--data", str(files["unseen"])]) == 2
    err = capsys.readouterr().err
    assert "'neutral'" in err and "not seen at fit time" in err


def extract_store(folder, data_file, out):
    args = ["extract", "--model", str(folder), "--data", str(data_file), "--out", str(out)]
    return main([*args, "--dtype", "float32", "--quiet"])


def fit_args(folder, train, out, *extra):
    args = ["fit", "--model", str(folder), "--train", str(train), "--out", str(out), "--quiet"]
    return [*args, *extra]


def test_cli_fit_from_feature_stores(tmp_path, folder, files, data):
    stores = {name: tmp_path / f"store_{name}" for name in ("train", "valid")}
    for name, store in stores.items():
        assert extract_store(folder, files[name], store) == 0
    run = tmp_path / "run"
    extra = ("--valid", str(stores["valid"]), "--etas", "0.1,0.5,0.8")
    assert main(fit_args(folder, stores["train"], run, *extra)) == 0
    loaded = SpinClassifier.load(run)
    assert loaded.report["n_train"] == 60 and loaded.report["n_valid"] == 20
    texts, labels = data["test"]
    assert loaded.score(texts, labels) >= 0.7


def test_cli_fit_from_a_store_needs_valid(tmp_path, folder, files, capsys):
    store = tmp_path / "store"
    assert extract_store(folder, files["valid"], store) == 0
    capsys.readouterr()
    assert main(fit_args(folder, store, tmp_path / "run")) == 2
    assert "--valid" in capsys.readouterr().err



def test_demo_data_ships_with_the_package():
    """`spin-jax demo` reads the reviews shipped in spin_jax/data (a move of the CLI once
    pointed it elsewhere, and only CI's run of the demo noticed)."""
    from spin_jax.cli.learn import DEMO_DATA
    from spin_jax.data import load_texts

    assert DEMO_DATA.is_file() and len(load_texts(str(DEMO_DATA))) == 600


def test_a_second_process_reads_compiled_programs_from_the_cache(cli_run, tmp_path):
    """The CLI turns JAX's persistent compilation cache on (spin_jax/cache.py): the same
    command in a new process compiles nothing; --no-compilation-cache writes nothing."""
    code = (
        "import jax, sys\n"
        "events = []\n"
        "jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))\n"
        "from spin_jax.cli import main\n"
        f"args = ['explain', {str(cli_run)!r}, 'a great film', '--json']\n"
        "assert main([*sys.argv[1:], *args]) == 0\n"
        "print('misses', events.count('/jax/compilation_cache/cache_misses'))\n"
        "print('hits', events.count('/jax/compilation_cache/cache_hits'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SPIN_JAX_NO_COMPILATION_CACHE"}
    env.update(SPIN_JAX_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")

    def run(*flags):
        out = subprocess.run(
            [sys.executable, "-c", code, *flags], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-3000:]
        counts = dict(line.split() for line in out.stdout.splitlines() if line[:4] in "misshits")
        return int(counts["misses"]), int(counts["hits"])

    assert run("--no-compilation-cache") == (0, 0) and not (tmp_path / "cache").exists()
    first = run()
    assert first[0] > 0 and any((tmp_path / "cache").iterdir())
    assert run() == (0, first[0])  # every program the first run compiled, read back
