"""report.html, figures/ and MODEL_CARD.md of a run folder, built from its report.json and
classifier.json alone (`write_report`), so `spin-jax report RUN` rebuilds them any time.

The page is self-contained: its figures (figures.py, matplotlib) are inlined as SVG and also
written to figures/ beside it; it names no URL and loads nothing. Every number a table shows
from report.json carries that number's place in the file (`data-path`), which the tests use
to check the page against the file.
"""

from __future__ import annotations

from pathlib import Path

from spin_jax import artifact, figures, model_card
from spin_jax.files import write_text_atomic
from spin_jax.html import big, cell, esc, inline_svg, num, page, table

REPORT_HTML, FIGURES_DIR, MODEL_CARD = "report.html", "figures", "MODEL_CARD.md"
CAPTIONS = {
    "layers": "Each layer's L1 probe on validation (solid) and test (dashed), per pooling, for "
    "hidden states and FFN activations; the black line is SPIN's classifier on the kept "
    "neurons of layers 0..k (1..k without the embedding layer; validation), the star the "
    "chosen k. (The paper's Figure 2.)",
    "what_which_where": "Every validated candidate at its best regularisation: validation "
    "score against the neurons it uses (log scale), by pooling (marker), eta (size: larger "
    "eta keeps more) and depth k (colour); below, the depth each one reaches. The red ring is "
    "the chosen classifier. (The paper's Figure 3.)",
    "eta": "For the chosen representation and pooling, the best validation score at each eta "
    "and the neurons that classifier uses.",
    "kept_per_layer": "How many of the classifier's neurons come from each layer.",
    "activations": "For each layer the classifier reads, its kept neurons' standardised "
    "activations over the texts of each true class (box: quartiles, whiskers: 5th and 95th "
    "percentiles). (The paper's Figure 4a.)",
    "early_exit": "Score and measured time per text when the model runs only a share of its "
    "layers; the dashed line is the last-layer baseline that runs every layer. (Table 7.)",
}


def write_report(run) -> Path:
    """Writes report.html, figures/*.svg and MODEL_CARD.md into the run folder from its
    report.json and classifier.json (both checked as loading does); returns the page."""
    run = Path(run)
    meta = artifact.read_meta(run)
    report = artifact._read_report(run, meta)
    svgs = figures.draw_all(report)
    (run / FIGURES_DIR).mkdir(exist_ok=True)
    for name, svg in svgs.items():
        write_text_atomic(run / FIGURES_DIR / f"{name}.svg", svg)
    write_text_atomic(run / MODEL_CARD, model_card.render(report, meta))
    write_text_atomic(run / REPORT_HTML, render(report, meta, svgs))
    return run / REPORT_HTML


def render(report: dict, meta: dict, svgs: dict[str, str]) -> str:
    model = meta.get("model", {}).get("source", "?")
    header = (
        '<header class="top"><div class="inner">'
        f"<h1>SPIN classifier on {esc(model)}</h1>"
        f"<p>{esc(_subtitle(report, meta))}</p></div></header>"
    )
    sections = [
        ("results", "Results", _results(report)),
        ("choice", "Chosen configuration", _choice(report)),
        ("layers", "Per layer", _figures(svgs, "layers")),
        ("www", "What, which, where", _figures(svgs, "what_which_where")),
        ("sparsity", "Sparsity", _figures(svgs, "eta", "kept_per_layer")),
        ("activations", "Activations by class", _figures(svgs, "activations")),
        ("classes", "Per class", _per_class(report)),
        ("early-exit", "Early exit", _early_exit(report, svgs)),
        ("efficiency", "Efficiency", _efficiency(report)),
        ("run", "Data and run", _run(report, meta)),
    ]
    toc = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title, _ in sections)
    header += f'<nav class="toc"><div class="inner">{toc}</div></nav>'
    body = _cards(report) + "".join(
        f'<section id="{key}"><h2>{esc(title)}</h2>{content}</section>'
        for key, title, content in sections
    )
    return page(f"SPIN report: {model}", body, header=header)


def _subtitle(report: dict, meta: dict) -> str:
    names = ", ".join(report.get("label_names") or meta.get("label_names") or [])
    parts = [
        f"{report['n_classes']} classes ({names})",
        f"metric: {report['metric']}",
        f"train / valid / test: {report['n_train']} / {report['n_valid']} / "
        f"{report['n_test'] if report['n_test'] is not None else '-'}",
        f"spin_jax {meta.get('spin_jax_version', '?')}",
        f"fitted {str(meta.get('created', '?'))[:19].replace('T', ' ')} UTC",
    ]
    return " · ".join(parts)


def _split(report: dict) -> str:
    return "test" if report["spin"].get("test") is not None else "valid"


def _cards(report: dict) -> str:
    split, spin, c = _split(report), report["spin"], report["chosen"]
    emb = report["baselines"].get("embedding", {})
    L = len(report["neurons_kept_per_layer"])
    cards = [
        (f"SPIN {split} {report['metric']}", num(spin[split]), f"valid {num(spin['valid'])}"),
        (
            f"last-layer baseline {split}",
            num(emb.get(split)),
            "" if emb.get(split) is None else f"SPIN {spin[split] - emb[split]:+.4f}",
        ),
        (
            "layers run",
            f"{spin['num_layers']} of {L}",
            f"{100 * spin['num_layers'] / L:.0f}% of the forward",
        ),
        (
            "neurons read",
            f"{spin['n_neurons']:,}",
            f"{c['representation']}, {c['pooling']}, eta {c['eta']}",
        ),
    ]
    inference = report.get("inference") or {}
    if inference.get("spin") and inference.get("baseline"):
        s, b = inference["spin"]["seconds"], inference["baseline"]["seconds"]
        cards.append(
            ("inference", f"{b / s:.1f}× faster", f"{1e3 * s:.2f} vs {1e3 * b:.2f} ms/text")
        )
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="label">{esc(a)}</div><div class="value">{esc(b)}</div>'
            f'<div class="sub">{esc(d)}</div></div>'
            for a, b, d in cards
        )
        + "</div>"
    )


def _results(report: dict) -> str:
    rows = [
        '<tr class="spin"><td>SPIN</td>'
        + cell(report["spin"]["valid"], "spin.valid")
        + cell(report["spin"]["test"], "spin.test")
        + cell(report["spin"]["num_layers"], "spin.num_layers")
        + cell(report["spin"]["n_neurons"], "spin.n_neurons")
        + "</tr>"
    ]
    for name, b in report["baselines"].items():
        if not isinstance(b, dict) or "valid" not in b:
            continue
        where = f"baselines.{name}"
        what = name.replace("_", " ")
        if "representation" in b:
            what += f" ({b['representation']}, {b['pooling']}, layer {b['layer']})"
        rows.append(
            f"<td>{esc(what)}</td>"
            + cell(b["valid"], f"{where}.valid")
            + cell(b.get("test"), f"{where}.test" if "test" in b else None)
            + cell(b.get("layer"), f"{where}.layer" if "layer" in b else None)
            + "<td></td>"
        )
    head = ["classifier", "valid", "test", "layers", "neurons"]
    note = (
        '<p class="note">The last-layer embedding reads the last hidden state (its single-token '
        "pooling); the best single layer is the best probe of any one layer on validation.</p>"
    )
    return table(head, rows) + note


def _choice(report: dict) -> str:
    c, recipe = report["chosen"], report.get("recipe") or {}
    opts = report.get("options") or {}
    items = [
        ("representation", c["representation"], "chosen.representation"),
        ("pooling", c["pooling"], "chosen.pooling"),
        ("eta", c["eta"], "chosen.eta"),
        (f"k (layers {_first_layer(report)}..k offered)", c["k"], "chosen.k"),
        ("layers run (deepest used)", c["num_layers"], "chosen.num_layers"),
        ("neurons used", c["n_neurons"], "chosen.n_neurons"),
        ("validation score", c["valid"], "chosen.valid"),
    ]
    if "lam" in recipe:
        items.append(("lam (L1 strength)", recipe["lam"], "recipe.lam"))
    rule = recipe.get("selection", opts.get("selection"))
    if rule:
        items.append(("selection rule", _rule(rule), None))
    if recipe.get("name"):
        items.append(("recipe", recipe["name"], None))
    for key, value in recipe.items():
        if key not in ("name", "lam", "selection"):
            path = f"recipe.{key}" if _is_number(value) else None
            items.append((key.replace("_", " "), value if path else _plain(value), path))
    rows = [
        f"<td>{esc(k)}</td>"
        + (cell(v, path, text=f"{v:g}", align="") if _is_number(v) else f"<td>{esc(v)}</td>")
        for k, v, path in items
    ]
    cands = report.get("candidates") or []
    crow = [
        f"<td>{esc(x['representation'])}</td><td>{esc(x['pooling'])}</td>"
        + cell(x["eta"], f"candidates.{i}.eta", text=str(x["eta"]))
        + cell(x["num_layers"], f"candidates.{i}.num_layers")
        + cell(x["n_neurons"], f"candidates.{i}.n_neurons")
        + cell(x["valid"], f"candidates.{i}.valid")
        for i, x in enumerate(cands)
    ]
    best = table(["representation", "pooling", "eta", "layers", "neurons", "valid"], crow, 2)
    return (
        '<div class="grid2"><div>'
        + table(["setting", "value"], rows)
        + "</div><div><h3>Best candidate of each representation and pooling</h3>"
        + best
        + "</div></div>"
    )


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _rule(rule: str) -> str:
    return {
        "paper-first": "paper-first: the best of the paper's six combinations, unless the "
        "whole search's best beats it by more than one standard error",
        "1se": "1se: the fewest layers, then neurons, within one standard error of the best",
        "exact": "exact: the best validation score",
    }.get(rule, rule)


def _figures(svgs: dict, *names: str) -> str:
    shown = [n for n in names if n in svgs]
    if not shown:
        return (
            '<p class="note">This report holds no data for this figure (an older report, or '
            "the learner did not record it).</p>"
        )
    out = "".join(
        f'<figure id="fig-{n}">{inline_svg(svgs[n], n)}<figcaption>{esc(CAPTIONS[n])}'
        "</figcaption></figure>"
        for n in shown
    )
    return f'<div class="grid2">{out}</div>' if len(shown) > 1 else out


def _per_class(report: dict) -> str:
    out = []
    for split, pc in (report.get("per_class") or {}).items():
        rows = [
            f"<td>{esc(name)}</td>"
            + cell(pc["precision"][i], f"per_class.{split}.precision.{i}")
            + cell(pc["recall"][i], f"per_class.{split}.recall.{i}")
            + cell(pc["f1"][i], f"per_class.{split}.f1.{i}")
            + cell(pc["support"][i], f"per_class.{split}.support.{i}")
            for i, name in enumerate(pc["labels"])
        ]
        metrics = table(["class", "precision", "recall", "F1", "support"], rows)
        out.append(f"<div><h3>{esc(split)}</h3>{metrics}{_confusion(pc, split)}</div>")
    if not out:
        return '<p class="note">This report holds no per-class scores.</p>'
    return '<div class="grid2">' + "".join(out) + "</div>"


def _confusion(pc: dict, split: str) -> str:
    m, names = pc["confusion"], pc["labels"]
    rows = []
    for i, name in enumerate(names):
        total = max(sum(m[i]), 1)
        cells = "".join(
            f'<td class="num" style="background: rgba({"26,127,55" if i == j else "207,34,46"},'
            f' {0.08 + 0.6 * m[i][j] / total:.2f})" data-path="per_class.{split}.confusion.{i}.{j}"'
            f' data-value="{m[i][j]}">{m[i][j]:,}</td>'
            for j in range(len(names))
        )
        rows.append(f"<th>{esc(name)}</th>{cells}")
    head = ["true \\ predicted", *names]
    return table(head, rows, cls="confusion")


def _early_exit(report: dict, svgs: dict) -> str:
    rows_in, inference = report.get("early_exit") or [], report.get("inference") or {}
    times = inference.get("by_layers") or {}
    base_time = (inference.get("baseline") or {}).get("seconds")
    rows = []
    for i, r in enumerate(rows_in):
        t = times.get(str(r["num_layers"]))
        rows.append(
            cell(r["fraction"], f"early_exit.{i}.fraction", text=f"{100 * r['fraction']:.0f}%")
            + cell(r["num_layers"], f"early_exit.{i}.num_layers")
            + cell(r["n_neurons"], f"early_exit.{i}.n_neurons")
            + cell(r["valid"], f"early_exit.{i}.valid")
            + cell(r.get("test"), f"early_exit.{i}.test")
            + _ms(t, f"inference.by_layers.{r['num_layers']}")
            + cell(None if t is None or not base_time else base_time / t, text=_ratio(t, base_time))
        )
    spin_t = (inference.get("spin") or {}).get("seconds")
    spin = report["spin"]
    rows.append(
        '<tr class="spin"><td>SPIN (the chosen classifier)</td>'
        + cell(spin["num_layers"], "spin.num_layers")
        + cell(spin["n_neurons"], "spin.n_neurons")
        + cell(spin["valid"], "spin.valid")
        + cell(spin["test"], "spin.test")
        + _ms(spin_t, "inference.spin.seconds")
        + cell(None, text=_ratio(spin_t, base_time))
        + "</tr>"
    )
    base = report["baselines"].get("embedding") or {}
    L = len(report["neurons_kept_per_layer"])
    rows.append(
        '<tr class="muted"><td>last layer (baseline)</td>'
        + cell(L)
        + cell(None)
        + cell(base.get("valid"), "baselines.embedding.valid")
        + cell(base.get("test"), "baselines.embedding.test")
        + _ms(base_time, "inference.baseline.seconds")
        + cell(None, text="1.0×" if base_time else "-")
        + "</tr>"
    )
    head = ["layers run", "blocks", "neurons", "valid", "test", "ms per text", "speed-up"]
    note = ""
    if inference:
        note = (
            f'<p class="note">Time per text measured on {inference["n_texts"]} texts on '
            f"{esc(inference['device'])}, after a first run that compiled the programs; "
            "each depth's row times a classifier of its width reading that block.</p>"
        )
    if not rows_in:
        note += (
            '<p class="note">This report holds no early-exit scores (the learner records '
            "them per layer budget).</p>"
        )
    drawn = _figures(svgs, "early_exit") if rows_in and "early_exit" in svgs else ""
    return table(head, rows, numeric_from=0) + note + drawn


def _ms(seconds, path) -> str:
    return cell(seconds, path if seconds is not None else None, text=_ms_text(seconds))


def _ms_text(seconds) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.3f}"


def _ratio(t, base) -> str:
    return "-" if t is None or not base else f"{base / t:.1f}×"


def _efficiency(report: dict) -> str:
    out = [_costs(report) if report.get("efficiency") else "", _stage_times(report)]
    if not any(out):
        return '<p class="note">This report holds no efficiency data.</p>'
    return "".join(out)


PARAMETER_ROWS = (
    ("fine-tuning {source} (every weight and a head)", "parameters.fine_tuning"),
    ("SPIN's classifier (its kept neurons × outputs)", "parameters.spin_head"),
    ("SPIN's per-layer probes (fitted, then discarded)", "parameters.spin_probes"),
)
FLOP_ROWS = (
    ("SPIN: extraction (one forward over train + valid, 2N per token)", "flops.spin.extraction"),
    ("SPIN: per-layer probes (the iterations they took)", "flops.spin.probes"),
    ("SPIN: integration over k, eta, lam (the iterations they took)", "flops.spin.integration"),
    ("SPIN: total", "flops.spin.total"),
    ("fine-tuning, {epochs} epochs (6N per token)", "flops.fine_tuning.total"),
)


def _costs(report: dict) -> str:
    """Tables 5 and 6: trainable parameters and estimated training FLOPs."""
    eff = report["efficiency"]
    size, tokens = eff["model"], eff["flops"]["tokens"]
    names = {"source": size["source"], "epochs": eff["flops"]["fine_tuning"]["epochs"]}

    def rows(spec):
        return [
            ('<tr class="spin">' if path.endswith("spin.total") else "<tr>")
            + _big_row(report, label.format(**names), f"efficiency.{path}")
            + "</tr>"
            for label, path in spec
        ]

    return (
        '<div class="grid2"><div><h3>Parameters (Table 5)</h3>'
        + table(["", "trainable parameters"], rows(PARAMETER_ROWS))
        + f'<p class="note">{esc(size["source"])}: {big(size["parameters"])} parameters, '
        f"{size['layers']} layers, width {size['hidden']}, FFN {size['ffn']}.</p>"
        + "</div><div><h3>Training FLOPs (Table 6)</h3>"
        + table(["stage", "FLOPs (estimate)"], rows(FLOP_ROWS))
        + '<p class="note">N is the model\'s parameter count; a solver iteration on n rows, '
        "d features and K outputs costs 4·n·d·K. Tokens: "
        + esc(", ".join(f"{k} {big(v)}" for k, v in tokens.items() if v is not None))
        + ".</p></div></div>"
    )


def _stage_times(report: dict) -> str:
    times = report.get("times") or {}
    if not times:
        return ""
    names = {
        "extraction_s": "extraction (forward passes)",
        "probes_s": "per-layer probes",
        "integration_s": "integration and choice",
    }
    rows = [
        f"<td>{esc(names.get(k, k))}</td>" + cell(v, f"times.{k}", text=f"{v:.2f}")
        for k, v in times.items()
    ]
    total = sum(times.values())
    rows.append(f'<tr class="spin"><td>total</td>{cell(total, text=f"{total:.2f}")}</tr>')
    return "<h3>Measured stage times</h3>" + table(["stage", "seconds"], rows)


def _big_row(report: dict, label: str, path: str) -> str:
    """A row of a label and a large count read from report.json at `path`."""
    value = report
    for part in path.split("."):
        value = value[part]
    return f"<td>{esc(label)}</td>" + cell(value, path, big(value))


def _run(report: dict, meta: dict) -> str:
    run = report.get("run") or {}
    data = run.get("data") or {}
    rows = [f"<td>{esc(k)}</td><td>{esc(_plain(v))}</td>" for k, v in data.items()]
    for key in ("valid_fraction", "seed", "max_length", "feature_dtype"):
        if key in run:
            rows.append(f"<td>{esc(key.replace('_', ' '))}</td><td>{esc(run[key])}</td>")
    rows.append(f"<td>model</td><td>{esc(_plain(meta.get('model', {})))}</td>")
    rows.append(f"<td>tokenizer</td><td>{esc(_plain(meta.get('tokenizer', {})))}</td>")
    opts = report.get("options") or {}
    orows = [f"<td>{esc(k)}</td><td class='mono'>{esc(_plain(v))}</td>" for k, v in opts.items()]
    vrows = [
        f"<td>{esc(k)}</td><td class='mono'>{esc(v)}</td>"
        for k, v in (run.get("versions") or {}).items()
    ]
    return (
        '<div class="grid2"><div><h3>Data</h3>'
        + table(["", ""], rows, numeric_from=9)
        + "</div><div><h3>Options</h3>"
        + (table(["option", "value"], orows, numeric_from=9) if orows else "")
        + "<h3>Versions</h3>"
        + (table(["package", "version"], vrows, numeric_from=9) if vrows else "")
        + "</div></div>"
    )


def _first_layer(report: dict) -> int:
    return 0 if (report.get("recipe") or {}).get("embedding_layer") else 1


def _plain(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
