"""One `spin-jax fit` run on the session's tiny BERT and short synthetic reviews, shared by
the report, explanation-page and browser tests (fitted once per session)."""

from __future__ import annotations

import functools
from pathlib import Path

from spin_jax.cli import main
from tests.test_cli import fit_args
from tests.test_learner import reviews, write_csv

SPLITS = {"train": (60, 0), "test": (40, 2)}


@functools.cache
def fitted_run(base: Path, folder: Path) -> Path:
    """base/report-run/run: the fit's folder (classifier, report.html, figures, card);
    the CSVs it read lie beside it."""
    root = base / "report-run"
    root.mkdir(exist_ok=True)
    files = {name: write_csv(root / f"{name}.csv", *reviews(*nk)) for name, nk in SPLITS.items()}
    run = root / "run"
    extra = ("--test", str(files["test"]), "--feature-dtype", "float32", "--etas", "0.1,0.5,0.8")
    code = main(fit_args(folder, files["train"], run, *extra))
    assert code == 0
    return run
