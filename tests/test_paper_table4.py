"""benchmarks/paper_table4.py end to end on a tiny local model and data (no hub)."""

from __future__ import annotations

import json

from tests.benchmark_scripts import load_script
from tests.test_learner import reviews, write_csv


def test_table4_recipe_runs_end_to_end(folder, tmp_path, capsys):
    write_csv(tmp_path / "train.csv", *reviews(80, 0))
    write_csv(tmp_path / "test.csv", *reviews(40, 2))
    out = tmp_path / "rows.json"
    args = ["--smoke-model", str(folder), "--smoke-data", str(tmp_path), "--out", str(out)]
    assert load_script("paper_table4").main(args) == 0
    (row,) = json.loads(out.read_text())
    assert (row["model"], row["task"], row["metric"]) == ("gpt2", "imdb", "accuracy")
    assert (row["paper_base"], row["paper_spin"]) == (87.72, 91.94)  # the paper's GPT-2 IMDb
    assert row["n_train"] + row["n_valid"] == 80 and row["n_test"] == 40
    assert 0 <= row["ours_spin"] <= 100 and row["n_neurons"] > 0
    assert "| gpt2 | imdb | accuracy |" in capsys.readouterr().out
