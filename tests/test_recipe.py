"""The paper's recipe (layer 0, the official grids, the best validation score), the depth
budget, and what report.json says of the recipe a fit used."""

from __future__ import annotations

import dataclasses
import json

import pytest

import spin_jax
from spin_jax import probes, solver
from spin_jax.errors import SpinError
from spin_jax.head import Choice
from spin_jax.learner import SpinOptions, fit_spin, select
from spin_jax.options import PAPER_ETAS
from tests.test_learner import FAST, L, planted, splits


def at_embeddings(ffn, hidden, rng):
    """The label lives in hidden layer 0 (the embedding output), mean pooling, neuron 4."""
    x = hidden[:, 0, spin_jax.POOLINGS.index("mean"), 4]
    return x + 0.3 * rng.normal(size=len(x)) > 0


def test_paper_recipe_is_the_official_codes():
    opts = SpinOptions.paper()
    assert opts.etas == PAPER_ETAS and opts.lam_grid == "paper" and opts.selection == "exact"
    assert opts.representations == ("hidden", "ffn")
    assert opts.poolings == ("token", "mean", "max") and opts.embedding_layer
    assert probes.PAPER_C_GRID == (0.1, 0.2, 1.0, 10.0, 100.0)
    assert opts.recipe() == "paper" and SpinOptions().recipe() == "default"
    assert SpinOptions.paper(max_iter=50).recipe() == "paper"  # how it is solved: same recipe
    assert SpinOptions(n_lams=3).recipe() == "custom"


@dataclasses.dataclass
class Cand:
    """What the selection rules read of a candidate."""

    valid: float
    rep: str = "hidden"
    pooling: str = "mean"
    layers_used: int = 3
    n_neurons: int = 10

    key = Choice.key


def test_paper_first_keeps_the_paper_combinations_unless_the_wider_search_wins_by_an_se():
    paper = [Cand(0.80, "ffn", "max"), Cand(0.795, "hidden", "token", 1, 2)]
    # n_valid = 100: the paper candidate's standard error is sqrt(0.8 * 0.2 / 100) = 0.04.
    close, far = Cand(0.83, "both", "mean"), Cand(0.85, "hidden", "all")
    assert select([*paper, close], "paper-first", 100) is paper[0]
    assert select([*paper, far], "paper-first", 100) is far
    assert select([close, far], "paper-first", 100) is far  # no paper combination: the best
    assert select([*paper, close], "exact", 100) is close
    assert select([*paper, close], "1se", 100) is paper[1]  # fewest layers within 0.0376


def test_paper_recipe_finds_a_signal_planted_in_layer_0():
    train, valid, test = splits(at_embeddings, ("neg", "pos"))
    head, report = fit_spin(train, valid, test, SpinOptions.paper())
    assert 0 in head.layer[head.rep == 0].tolist()
    assert report["spin"]["test"] > 0.85
    assert report["per_layer_probes"]["hidden/mean"]["layers"] == list(range(L + 1))
    assert report["per_layer_probes"]["ffn/mean"]["layers"] == list(range(1, L + 1))
    assert report["integration_k"] == list(range(L + 1))
    from spin_jax import figures

    svg = figures.layers(report)  # Figure 2 from layer 0, the chosen k marked on its own x
    assert "<svg" in svg and f"chosen k = {report['chosen']['k']}" in svg
    # Without layer 0 (as the default once was) the signal cannot be found.
    head_d, report_d = fit_spin(train, valid, test, SpinOptions(**FAST, embedding_layer=False))
    assert 0 not in head_d.layer.tolist()
    assert report["spin"]["test"] > report_d["spin"]["test"] + 0.1


@pytest.fixture(scope="module")
def budget_fit():
    train, valid, test = splits(planted, ("neg", "pos"))  # planted at block layer 3 of 4
    return fit_spin(train, valid, test, SpinOptions(**FAST, layer_budget=0.5))


def test_layer_budget_uses_no_block_beyond_it(budget_fit):
    head, report = budget_fit
    assert head.num_layers <= 2 and head.layer.max() <= 2
    assert report["integration_k"] == [0, 1, 2]
    assert all(row["k"] <= 2 for row in report["grid"])
    assert report["recipe"]["layer_budget"] == 0.5


def test_report_names_the_recipe_and_keeps_the_grid(budget_fit):
    head, report = budget_fit
    recipe = report["recipe"]
    assert recipe["name"] == "custom" and recipe["selection"] == "paper-first"
    assert recipe["solver"] == "fista"
    assert recipe["lam"] > 0 and recipe["sklearn_C"] == pytest.approx(1 / (recipe["lam"] * 600))
    argmax = recipe["paper_argmax"]
    assert argmax["valid"] >= report["chosen"]["valid"]  # the wider search's best, or above
    assert argmax["valid"] == max(row["valid"] for row in report["grid"])
    # Every (combination, eta, k, lam) is a row; the chosen candidate is one of them.
    n_combos = len(SpinOptions().representations) * len(SpinOptions().poolings)
    n_k = len(report["integration_k"])  # k = 0, 1, 2: layer 0 and the budget's 2 blocks
    assert n_k == 3 and len(report["grid"]) == n_combos * len(FAST["etas"]) * n_k * FAST["n_lams"]
    chosen = report["chosen"]
    assert any(
        (r["representation"], r["pooling"], r["eta"], r["k"], r["valid"], r["n_neurons"])
        == (chosen["representation"], chosen["pooling"], chosen["eta"], chosen["k"],
            chosen["valid"], chosen["n_neurons"])
        for r in report["grid"]
    )  # fmt: skip


def test_early_exit_rows_respect_their_budgets():
    train, valid, test = splits(planted, ("neg", "pos"))
    _, report = fit_spin(train, valid, test, SpinOptions(**FAST))
    rows = report["early_exit"]
    assert [r["fraction"] for r in rows] == [0.2, 0.4, 0.6, 0.8, 1.0]
    for r in rows:
        assert r["num_layers"] <= r["budget_layers"] and r["test"] is not None
    # The signal sits in block 3 of 4: budgets of 3 or more blocks find it, 1-2 cannot.
    assert rows[-1]["test"] > 0.85 and rows[2]["test"] > 0.85
    assert rows[0]["test"] < rows[-1]["test"] - 0.05


def test_adam_smooth_part_fits_end_to_end():
    train, valid, test = splits(planted, ("neg", "pos"))
    opts = SpinOptions(**FAST, smooth=solver.smooth("adam", 1e-2), max_iter=300)
    _, report = fit_spin(train, valid, test, opts)
    assert report["spin"]["test"] > 0.85
    assert report["recipe"]["solver"] == {"name": "adam", "learning_rate": 0.01}


@pytest.mark.parametrize(
    "options, words",
    [
        ({"layer_budget": 0.0}, "layer_budget=0.0"),
        ({"layer_budget": 1.5}, "in \\(0, 1\\]"),
        ({"embedding_layer": "yes"}, "embedding_layer='yes'"),
        ({"smooth": "adam"}, "solver.smooth"),
    ],
)
def test_bad_recipe_options_are_refused(options, words):
    with pytest.raises(SpinError, match=words):
        SpinOptions(**options)


def test_cli_fit_with_the_paper_recipe_and_a_budget(tmp_path, folder, capsys):
    from spin_jax.cli import main
    from tests.test_learner import reviews, write_csv

    train = write_csv(tmp_path / "train.csv", *reviews(60, 0))
    run = tmp_path / "run"
    args = ["fit", "--model", str(folder), "--train", str(train), "--out", str(run)]
    assert main([*args, "--quiet", "--recipe", "paper", "--layer-budget", "0.5"]) == 0
    report = json.loads((run / "report.json").read_text())
    L = len(report["per_layer_probes"]["ffn/mean"]["valid"])
    assert report["recipe"]["name"] == "paper" and report["recipe"]["layer_budget"] == 0.5
    assert report["recipe"]["embedding_layer"] and report["recipe"]["selection"] == "exact"
    assert report["recipe"]["c_grid"] == list(probes.PAPER_C_GRID)
    assert report["integration_k"] == list(range(0, -(-L // 2) + 1))
    assert report["chosen"]["num_layers"] <= -(-L // 2)
    assert "Recipe paper: layers 0..k, C in [0.1, 0.2, 1.0, 10.0, 100.0]" in capsys.readouterr().out
    assert main([*args[:-1], str(tmp_path / "r2"), "--layer-budget", "1.5"]) == 2
    assert "layer_budget=1.5" in capsys.readouterr().err
    flags = ["--quiet", "--embedding-layer", "--solver", "adam", "--slp-probes"]
    assert main([*args[:-1], str(tmp_path / "r3"), *flags]) == 0
    r3 = json.loads((tmp_path / "r3" / "report.json").read_text())
    assert r3["recipe"]["embedding_layer"] and r3["integration_k"][0] == 0
    assert r3["recipe"]["solver"] == {"name": "adam", "learning_rate": 0.01}
    assert r3["per_layer_slp"]["hidden/mean"]["layers"][0] == 0


def test_slp_probes_sit_beside_the_linear_ones():
    """A label that is the XOR of two neurons' signs: no linear probe reads it, a
    single-hidden-layer probe of that layer does."""

    def xor(ffn, hidden, rng):
        x = hidden[:, 2, spin_jax.POOLINGS.index("max")]
        return (x[:, 1] > 0) ^ (x[:, 6] > 0)

    train, valid, test = splits(xor, ("a", "b"))
    opts = SpinOptions(**FAST, representations=("hidden",), poolings=("max",), slp_probes=True)
    _, report = fit_spin(train, valid, test, opts)
    slp, linear = report["per_layer_slp"]["hidden/max"], report["per_layer_probes"]["hidden/max"]
    assert slp["layers"] == linear["layers"] == list(range(L + 1))  # layer 0 included
    assert slp["test"][2] > 0.8 > max(linear["test"]) + 0.1, (slp, linear)
    _, plain = fit_spin(train, valid, test, SpinOptions(**FAST))
    assert plain["per_layer_slp"] is None


def test_report_records_the_iterations_the_solves_took(budget_fit):
    _, report = budget_fit
    solves = report["solves"]
    assert set(solves["probe_iterations"]) == set(report["per_layer_probes"])
    assert all(n > 0 for n in solves["probe_iterations"].values())
    per_combo = {(c["representation"], c["pooling"]): c for c in solves["integration_iterations"]}
    for (rep, pool), c in per_combo.items():
        rows = [r for r in report["grid"] if (r["representation"], r["pooling"]) == (rep, pool)]
        assert c["iterations"] == sum(r["n_iter"] for r in rows) > 0
    from spin_jax.run_record import training_flops

    flops = training_flops(report, {"parameters": 1000}, {"train": 10, "valid": 5})
    assert flops["measured_iterations"] and flops["spin"]["probes"] > 0


def test_progress_names_every_stage_in_order(capsys):
    train, valid, test = splits(planted, ("neg", "pos"))
    fit_spin(train, valid, test, SpinOptions(**FAST), progress=True)
    err = capsys.readouterr().err
    marks = ["spin-jax: probes: custom recipe", "spin-jax: integration:", "spin-jax: selection"]
    at = [err.find(m) for m in marks]
    assert all(i >= 0 for i in at) and at == sorted(at), err[:2000]
    fit_spin(train, valid, test, SpinOptions(**FAST))  # progress=False: silent
    assert "spin-jax:" not in capsys.readouterr().err


def test_loading_a_model_says_so_after_its_checks(folder, capsys, tmp_path):
    from spin_jax.model import load_model
    from spin_jax.models.layers import ConfigError

    load_model(str(folder), progress=True)
    err = capsys.readouterr().err
    assert err.startswith("spin-jax: loading and converting the bert weights in "), err
    load_model(str(folder))
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError):  # a bad folder: the error alone, no stage line first
        load_model(str(tmp_path / "missing"), progress=True)
    assert capsys.readouterr().err == ""


def test_a_head_of_the_embedding_layer_alone_runs_no_block(folder):
    """A head that reads only hidden layer 0 runs no block, and predicts as its features say."""
    import numpy as np

    from spin_jax.classifier import SpinClassifier
    from spin_jax.head import SpinHead
    from tests.test_learner import reviews

    texts, labels = reviews(40, 0)
    clf = SpinClassifier(str(folder), recipe="paper").fit(texts, labels)
    clf.head = SpinHead(
        rep=np.array([0]), pool=np.array([1]), layer=np.array([0]), neuron=np.array([3]),
        mean=np.zeros(1, np.float32), std=np.ones(1, np.float32),
        weights=np.ones((1, 1), np.float32), intercept=np.zeros(1, np.float32), num_layers=0,
    )  # fmt: skip
    feats = spin_jax.extract(clf.model, texts[:5], placement="host")
    x = feats.read("hidden", layers=[0], poolings=[1], neurons=[3])[:, 0, 0, 0]
    z = clf.decision_function(texts[:5])
    np.testing.assert_allclose(np.ravel(z), x, rtol=1e-4, atol=1e-4)


def test_explain_splits_a_layer_0_head_exactly(folder):
    """The paper recipe may keep embedding-layer neurons: their shares still add up."""
    import numpy as np

    from spin_jax.classifier import SpinClassifier
    from spin_jax.head import SpinHead
    from tests.test_learner import reviews

    texts, labels = reviews(40, 0)
    clf = SpinClassifier(str(folder), recipe="paper").fit(texts, labels)
    clf.head = SpinHead(
        rep=np.array([0, 1]), pool=np.array([1, 2]), layer=np.array([0, 1]),
        neuron=np.array([3, 5]), mean=np.zeros(2, np.float32), std=np.ones(2, np.float32),
        weights=np.array([[1.0], [-0.5]], np.float32), intercept=np.zeros(1, np.float32),
        num_layers=1,
    )  # fmt: skip
    ex = clf.explain(texts[0])
    np.testing.assert_allclose(ex.proba, clf.predict_proba([texts[0]])[0], atol=1e-5)
