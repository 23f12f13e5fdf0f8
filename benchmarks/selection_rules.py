"""Which selection rule scores best on test? Several rules applied to the same fits.

One default-recipe fit per seed (`SpinOptions()`); its candidates are then chosen by each
rule and each chosen head scored on the test split: "exact" (the best validation score, the
paper's rule), "1se" (the default: the fewest layers, then neurons, within one standard
error of the best), "half-se" (the same within half a standard error) and
"1se-layers-best" (the fewest layers within one standard error, then the best score);
"paper-first" (the best of the paper's six combinations unless the wider search's best
beats it by more than a standard error) and "paper-first-1se" (1se within that family).
Problems and splits as `recipes.py` (reviews: MiniLM on the 600 shipped reviews; planted:
"one layer", "two layers", "embedding"). One JSON line per seed.

    PYTHONPATH=. python benchmarks/selection_rules.py reviews 10 5 --features-cache f.npz
    PYTHONPATH=. python benchmarks/selection_rules.py "one layer" 0 10
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import recipes  # noqa: E402

from spin_jax import learner  # noqa: E402
from spin_jax.head import Choice  # noqa: E402
from spin_jax.learner import SpinOptions, fit_spin  # noqa: E402


def se_of(best, n):
    p = min(max(best.valid, 0.0), 1.0)
    return np.sqrt(p * (1 - p) / max(n, 1))


def rules(choices, n_valid):
    best = min(choices, key=Choice.key)
    se = se_of(best, n_valid)
    out = {"exact": best}
    for name, band in (("1se", se), ("half-se", se / 2)):
        close = [c for c in choices if c.valid >= best.valid - band]
        out[name] = min(close, key=lambda c: (c.layers_used, c.n_neurons, -c.valid))
    close = [c for c in choices if c.valid >= best.valid - se]
    fewest = min(c.layers_used for c in close)
    out["1se-layers-best"] = min([c for c in close if c.layers_used == fewest], key=Choice.key)
    # The paper's six combinations first: the wider search's candidates only when its best
    # beats theirs on validation by more than a standard error.
    paper = [c for c in choices if c.rep != "both" and c.pooling != "all"]
    if paper:
        narrow = min(paper, key=Choice.key)
        wide = best.valid > narrow.valid + se_of(narrow, n_valid)
        out["paper-first"] = best if wide else narrow
        family = choices if wide else paper
        top = min(family, key=Choice.key)
        close = [c for c in family if c.valid >= top.valid - se_of(top, n_valid)]
        out["paper-first-1se"] = min(close, key=lambda c: (c.layers_used, c.n_neurons, -c.valid))
    return out


picked, captured = {}, {}
real_select, real_fit_data = learner.select, learner.fit_data


def select(choices, rule, n_valid):
    picked.update(rules(choices, n_valid))
    return real_select(choices, rule, n_valid)


def fit_data(*a, **k):
    captured["data"] = real_fit_data(*a, **k)
    return captured["data"]


def run(train, valid, test):
    learner.select, learner.fit_data = select, fit_data
    picked.clear()
    fit_spin(train, valid, test, SpinOptions())
    data = captured["data"]
    return {name: float(learner.spin_scores(data, c.head())["test"]) for name, c in picked.items()}


def main(argv):
    problem, first, n = argv[0], int(argv[1]), int(argv[2])
    cache = argv[argv.index("--features-cache") + 1] if "--features-cache" in argv else None
    for s in range(first, first + n):
        if problem == "reviews":
            arrays, y, names = recipes.review_features(cache)
        else:
            arrays, y, names = recipes.planted(problem, s)
        scores = run(*recipes.split(arrays, y, names, s))
        print(json.dumps({"problem": problem, "seed": s, "scores": scores}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
