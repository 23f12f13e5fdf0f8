"""The SPIN learner: per-layer L1 probes, eta sparsification, cross-layer integration, and
the choice among the candidates. The stages live in their own modules, around one FitData:

  options.py       SpinOptions (checked when built), FitData, the metrics
  layer_probes.py  stage 1: a probe per (representation, pooling, layer)
  integration.py   stages 2-3: kept neurons, and classifiers on layers 1..k
  report.py        report.json
  columns.py       the kept-columns type and the block/layer rule (hidden[j], ffn[j-1])

Feature sources are anything with `read(name, rows=, layers=, poolings=, neurons=)`,
`labels`, `label_names` and `n_rows`: a FeatureStore on disk, MemoryFeatures (numpy) or
DeviceFeatures (jax Arrays). What a source reads stays where it is: features read from the
device are standardised and gathered there, with no copy through the host.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time

import numpy as np

from spin_jax import ahead, integration, layer_probes, probes
from spin_jax.columns import REPS, Columns, padded_width, reciprocal, standardize_columns  # noqa: F401
from spin_jax.errors import SpinError
from spin_jax.head import Choice, SpinHead
from spin_jax.integration import (  # noqa: F401
    candidates,
    combo_candidates,
    depths,
    integrate_combo,
    kept_neurons,
    own_width,
    shared_width,
)
from spin_jax.layer_probes import ProbeTable, cached, fit_probe_table
from spin_jax.models import POOLINGS
from spin_jax.options import (  # noqa: F401 - the learner's public names
    ETAS,
    FitData,
    SpinOptions,
    choose_metric,
    fit_data,
    pool_sets,
    rep_sets,
    require_full,
    score,
)
from spin_jax.progress import stage
from spin_jax.report import build_report, spin_scores
from spin_jax.streaming import memory_record

log = logging.getLogger("spin_jax")
Candidates = Columns  # the name of the kept-columns type before columns.py


def fit_spin(
    train,
    valid,
    test=None,
    opts: SpinOptions | None = None,
    *,
    n_layers=None,
    head_fn=None,
    progress: bool = False,
    checkpoint_dir=None,
) -> tuple[SpinHead, dict]:
    """Runs stages 1-3 and model selection. Returns (SpinHead, report dict).

    progress=True shows a bar (rate, ETA) over the probe groups and integration runs.
    checkpoint_dir keeps each finished probe group, so a crashed fit resumes after it.
    """
    opts = opts or SpinOptions()
    data = fit_data(train, valid, test, opts, n_layers)
    times = {}
    t0 = time.perf_counter()
    stage(f"probes: {opts.recipe()} recipe, {data.n_layers} layers (compiling first)", progress)
    tables = probe_tables(data, progress, checkpoint_dir)
    times["probes_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stage("integration: every (eta, k, lam) of each combination as lanes of one solve", progress)
    choices, grid = integrate_all(data, tables, progress)
    times["integration_s"] = time.perf_counter() - t0
    stage(f"selection ({opts.selection}) among {len(choices)} candidates, and the report", progress)
    best = select(choices, opts.selection, valid.n_rows)
    head = best.head()
    report = build_report(
        data,
        spin=spin_scores(data, head),
        best=best,
        choices=choices,
        tables=tables,
        head_fn=head_fn,
        times=times,
    )
    report.update(
        recipe=recipe_report(data, best, choices),
        grid=grid,
        integration_k=[int(k) for k in depths(data)],
        early_exit=early_exit(data, choices),
        memory=memory_record(data, sorted({r for _, rs in rep_sets(data.opts) for r in rs})),
    )
    report["solves"].update(iterations(tables, grid))
    return head, report


def iterations(tables: dict, grid: list[dict]) -> dict:
    """The solver iterations each stage took (run_record counts the FLOPs from them)."""
    probe = {
        f"{r}/{POOLINGS[p]}": int(np.sum(t.iterations))
        for (r, p), t in tables.items()
        if t.iterations is not None
    }
    combos = {}
    for row in grid:
        c = combos.setdefault(
            (row["representation"], row["pooling"]), {"columns": row["columns"], "iterations": 0}
        )
        c["iterations"] += row["n_iter"]
    integration = [{"representation": r, "pooling": p, **c} for (r, p), c in combos.items()]
    return {"probe_iterations": probe, "integration_iterations": integration}


def recipe_report(data: FitData, best: Choice, choices: list[Choice]) -> dict:
    """The recipe in a paper reader's terms: grids, selection rule, the chosen lam (and its
    scikit-learn C), and the paper's argmax beside the chosen candidate."""
    opts, n = data.opts, int(data.train.n_rows)
    argmax = select(choices, "exact", data.valid.n_rows)
    return {
        "name": opts.recipe(),
        "lam_grid": opts.lam_grid,
        "c_grid": list(probes.PAPER_C_GRID) if opts.lam_grid == "paper" else None,
        "n_lams": opts.n_lams if opts.lam_grid == "auto" else len(probes.PAPER_C_GRID),
        "lam_ratio": opts.lam_ratio if opts.lam_grid == "auto" else None,
        "etas": list(opts.etas),
        "representations": list(opts.representations),
        "poolings": list(opts.poolings),
        "embedding_layer": opts.embedding_layer,
        "layer_budget": opts.layer_budget,
        "selection": opts.selection,
        "solver": "fista" if opts.smooth is None else dict(opts.smooth._asdict()),
        "lam": best.lam,
        "sklearn_C": 1.0 / (best.lam * n),
        "paper_argmax": _choice_summary(argmax),
    }


def _choice_summary(c: Choice) -> dict:
    return {
        "representation": c.rep,
        "pooling": c.pooling,
        "eta": c.eta,
        "k": c.k,
        "num_layers": c.layers_used,
        "n_neurons": c.n_neurons,
        "lam": c.lam,
        "valid": c.valid,
    }


EARLY_EXIT = (0.2, 0.4, 0.6, 0.8, 1.0)


def early_exit(data: FitData, choices: list[Choice]) -> list[dict]:
    """The paper's Table 7: at each share of the layers, the candidate the selection rule
    picks among those using no deeper layer, scored on validation and test."""
    out = []
    for fraction in EARLY_EXIT:
        budget = max(1, int(np.ceil(fraction * data.n_layers - 1e-9)))
        fits = [c for c in choices if c.layers_used <= budget]
        if not fits:
            continue
        c = select(fits, data.opts.selection, data.valid.n_rows)
        row = {"fraction": fraction, "budget_layers": budget, **_choice_summary(c)}
        row["test"] = spin_scores(data, c.head())["test"]
        out.append(row)
    return out


def probe_tables(data: FitData, progress: bool, checkpoint_dir) -> dict[tuple, ProbeTable]:
    """Stage 1 for every representation and pooling the options use: {(rep, pool): table}."""
    reps = sorted({r for _, rs in rep_sets(data.opts) for r in rs})
    pools = sorted({i for _, ps in pool_sets(data.opts) for i in ps})
    key = _run_key(data.opts, data.train, data.valid, data.test)
    layer_probes.compile_ahead(data, reps)
    tables = {}
    bar = _progress(len(reps) * len(pools), "probes", progress)
    for rep in reps:
        for p in pools:
            name = f"{rep}/{POOLINGS[p]}"
            bar.set_postfix_str(name)
            compute = lambda rep=rep, p=p: fit_probe_table(data, rep, p)  # noqa: E731
            t = tables[rep, p] = cached(checkpoint_dir, f"probes-{rep}-{POOLINGS[p]}", key, compute)
            best = int(np.argmax(t.valid))
            log.info("probes %s: best layer %d valid %.4f", name, best + 1, t.valid[best])
            bar.update()
    bar.close()
    return tables


def integrate_all(data: FitData, tables: dict, progress: bool) -> tuple[list[Choice], list]:
    """Stages 2-3 for every (representation, pooling) option: the candidates with a neuron,
    and the whole validated grid (`integrate_combo`)."""
    choices, grid = [], []
    combos = [(r, p) for r in rep_sets(data.opts) for p in pool_sets(data.opts)]
    cands = [combo_candidates(data, tables, r, p) for r, p in combos]
    shared = shared_width([len(c) for c in cands if len(c)], data.train.n_rows)
    widths = [shared or own_width(len(c), data.train.n_rows) for c in cands]
    for n in dict.fromkeys(w for c, w in zip(cands, widths, strict=True) if len(c)):
        ahead.background(functools.partial(integration.compile_ahead, data, n, n))
    bar = _progress(len(combos), "integration", progress)
    bar.set_postfix_str("gathering columns")
    union = integration.union_columns(data, tables, cands, widths)
    for (rep_set, pool_set), cand, width in zip(combos, cands, widths, strict=True):
        bar.set_postfix_str(f"{rep_set[0]}/{pool_set[0]}")
        combo_choices, combo_grid = integrate_combo(
            data, tables, rep_set, pool_set, cand=cand, width=width, union=union,
            narrow=shared is None and integration.narrow_steps(),  # own widths: shared steps
        )
        choices.extend(combo_choices)
        grid.extend(combo_grid)
        bar.update()
    bar.close()
    choices = [c for c in choices if c.n_neurons > 0]
    if not choices:
        raise SpinError(
            "every probe came out all-zero: the features carry no signal the "
            "probes could use. Check that labels match texts."
        )
    return choices, grid


def select(choices: list[Choice], rule: str, n_valid: int) -> Choice:
    """The candidate a selection rule picks (SpinOptions.selection says what each does)."""
    best = min(choices, key=Choice.key)
    if rule == "exact":
        return best
    if rule == "paper-first":
        return _paper_first(choices, best, n_valid)
    close = [c for c in choices if c.valid >= best.valid - _se(best, n_valid)]
    return min(close, key=lambda c: (c.layers_used, c.n_neurons, -c.valid))


def _paper_first(choices: list[Choice], best: Choice, n_valid: int) -> Choice:
    """The best of the paper's six (representation, pooling) combinations, unless the best
    of the whole search beats it on validation by more than its standard error."""
    paper = [c for c in choices if c.rep in REPS and c.pooling in POOLINGS]
    if not paper:
        return best
    narrow = min(paper, key=Choice.key)
    return best if best.valid > narrow.valid + _se(narrow, n_valid) else narrow


def _se(c: Choice, n_valid: int) -> float:
    """The standard error of a candidate's validation score, read as a proportion."""
    p = min(max(c.valid, 0.0), 1.0)
    return float(np.sqrt(p * (1 - p) / max(n_valid, 1)))


def _run_key(opts: SpinOptions, *sources) -> str:
    """What a probe checkpoint depends on: the options and the identity of every split."""
    ident = [None if s is None else (dict(s.manifest), int(s.n_rows)) for s in sources]
    labels = [None if s is None else np.asarray(s.labels).tolist() for s in sources]
    blob = json.dumps([dataclasses.asdict(opts), ident, labels], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="group", disable=not enabled)
