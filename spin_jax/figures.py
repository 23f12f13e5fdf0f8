"""The report's figures, drawn by matplotlib from report.json alone (so `spin-jax report`
redraws them): each function takes the report and returns an SVG document, or None when the
report lacks what the figure needs (an older report, or a fit without a test split).

  layers            the paper's Figure 2: probe score per layer, representation and pooling,
                    on validation and test (and the SLP probes' when recorded), with SPIN's
                    curve over k and the chosen k
  what_which_where  Figure 3: score against neurons used for every validated candidate, by
                    pooling (marker), eta (size) and depth k (colour)
  eta               score and neurons used against eta, for the chosen representation/pooling
  kept_per_layer    the chosen head's neurons per layer, hidden and FFN
  activations       Figure 4a: the kept neurons' activations per layer, split by class
  early_exit        Table 7 drawn: score and time per text against the share of layers run

matplotlib is imported here only, when a figure is drawn, and only through its object API
(`matplotlib.figure.Figure`): no pyplot state, no backend to choose.
"""

from __future__ import annotations

import io

POOLING_COLOURS = {"token": "#4c72b0", "mean": "#dd8452", "max": "#55a868", "all": "#8172b3"}
POOLING_MARKERS = {"token": "o", "mean": "s", "max": "^", "all": "D"}
REP_TITLES = {"hidden": "hidden states", "ffn": "FFN activations", "both": "hidden + FFN"}
STYLE = {
    "svg.fonttype": "none",  # text stays text: selectable, and small files
    "svg.hashsalt": "spin_jax",  # the same report draws the same bytes
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "legend.fontsize": 8,
}
NAMES = ("layers", "what_which_where", "eta", "kept_per_layer", "activations", "early_exit")


def draw_all(report: dict) -> dict[str, str]:
    """{name: SVG} of every figure the report has the data for, in NAMES order."""
    import matplotlib

    out = {}
    with matplotlib.rc_context(STYLE):
        for name in NAMES:
            svg = globals()[name](report)
            if svg is not None:
                out[name] = svg
    return out


def _figure(width: float, height: float, **subplots):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(squeeze=False, **subplots)


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "spin_jax"})
    return buf.getvalue()


def _metric(report: dict) -> str:
    return {"macro_f1": "macro-F1", "accuracy": "accuracy"}.get(report["metric"], report["metric"])


def layers(report: dict) -> str | None:
    probes = report.get("per_layer_probes") or {}
    reps = [r for r in ("hidden", "ffn") if any(k.startswith(r + "/") for k in probes)]
    if not reps:
        return None
    fig, axes = _figure(5.0 * len(reps) + 0.6, 3.9, ncols=len(reps), sharey=True)
    chosen, per_k = report["chosen"], report.get("per_k_integration_valid") or []
    for ax, rep in zip(axes[0], reps, strict=True):
        for key, scores in probes.items():
            r, pooling = key.split("/")
            if r != rep:
                continue
            x = scores.get("layers") or range(1, len(scores["valid"]) + 1)  # 0: embeddings
            colour = POOLING_COLOURS.get(pooling)
            ax.plot(x, scores["valid"], "-o", ms=3, color=colour, label=f"{pooling}, valid")
            if scores.get("test") is not None:
                ax.plot(x, scores["test"], "--", color=colour, alpha=0.7, label=f"{pooling}, test")
            slp = (report.get("per_layer_slp") or {}).get(key)
            if slp:  # the learner's single-layer probes without L1, when it records them
                ax.plot(x, slp["valid"], ":", color=colour, label=f"{pooling}, SLP valid")
        if per_k:
            k = report.get("integration_k") or _k_axis(report, len(per_k))
            span = f"{k[0]}..k"
            ax.plot(k, per_k, "-", color="black", lw=2, label=f"SPIN on layers {span}, valid")
        if per_k and chosen["k"] in k:
            ax.plot(
                [chosen["k"]],
                [per_k[list(k).index(chosen["k"])]],
                "*",
                color="crimson",
                ms=14,
                zorder=5,
                label=f"chosen k = {chosen['k']}",
            )
        ax.set_title(f"probe per layer: {REP_TITLES[rep]}")
        ax.set_xlabel("layer")
        _integer_ticks(ax.xaxis)
    axes[0][0].set_ylabel(_metric(report))
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4)
    return _svg(fig)


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, nbins="auto"))


def _log_ticks(axis, values=None) -> None:
    """A log axis labelled in plain numbers: at `values`, or at its powers of ten."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if values is not None:
        axis.set_major_locator(FixedLocator(values))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _best_per_candidate(grid: list[dict]) -> list[dict]:
    """The grid at its best lam: one point per (representation, pooling, eta, k)."""
    best = {}
    for g in grid:
        key = (g["representation"], g["pooling"], g["eta"], g["k"])
        if key not in best or g["valid"] > best[key]["valid"]:
            best[key] = g
    return list(best.values())


def what_which_where(report: dict) -> str | None:
    grid = [g for g in _best_per_candidate(report.get("grid") or []) if g["n_neurons"] > 0]
    if not grid:
        return None
    import matplotlib as mpl

    reps = [r for r in REP_TITLES if any(g["representation"] == r for g in grid)]
    etas = sorted({g["eta"] for g in grid})
    n_layers, first = max(g["k"] for g in grid), min(g["k"] for g in grid)  # first: 0 or 1
    bounds = [b - 0.5 for b in range(first, n_layers + 2)]
    cmap = mpl.colormaps["viridis"].resampled(n_layers - first + 1)
    norm = mpl.colors.BoundaryNorm(bounds, cmap.N)
    fig, axes = _figure(
        3.5 * len(reps) + 1.2,
        4.8,
        nrows=2,
        ncols=len(reps),
        sharex="col",
        sharey="row",
        height_ratios=[3, 1.3],
    )
    for col, rep in enumerate(reps):
        style = dict(etas=etas, cmap=cmap, norm=norm, dense=len(grid) > 3000, legend=col == 0)
        _www_panel(axes[0][col], axes[1][col], grid, rep, report["chosen"], **style)
    axes[0][0].set_ylabel(f"valid {_metric(report)}")
    axes[1][0].set_ylabel("layers k")
    for e in (etas[0], etas[-1]):
        axes[0][0].scatter(
            [],
            [],
            s=12 + 60 * (etas.index(e) + 1) / len(etas),
            c="lightgrey",
            edgecolors="grey",
            label=f"eta {e}",
        )
    fig.legend(loc="outside lower center", ncols=8)
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
    label = f"layers {first}..k (colour)"
    bar = fig.colorbar(sm, ax=axes[:, -1].tolist(), label=label, shrink=0.8)
    bar.set_ticks(range(first, n_layers + 1, max(1, n_layers // 12)))
    return _svg(fig)


def _www_panel(top, bottom, grid, rep, chosen, *, etas, cmap, norm, dense, legend):
    """One representation's column of Figure 3: score (top) and k (bottom) against neurons."""
    for pooling, marker in POOLING_MARKERS.items():
        pts = [g for g in grid if g["representation"] == rep and g["pooling"] == pooling]
        if not pts:
            continue
        n = [g["n_neurons"] for g in pts]
        size = [12 + 60 * (etas.index(g["eta"]) + 1) / len(etas) for g in pts]
        colour = [g["k"] for g in pts]
        kw = dict(c=colour, s=size, marker=marker, cmap=cmap, norm=norm, alpha=0.75)
        kw.update(edgecolors="white", linewidths=0.3, rasterized=dense)
        top.scatter(n, [g["valid"] for g in pts], **kw)
        bottom.scatter(n, [g["k"] for g in pts], **kw)
        if legend:
            top.scatter([], [], marker=marker, c="grey", label=pooling)
    if chosen["representation"] == rep:
        top.scatter(
            [chosen["n_neurons"]],
            [chosen["valid"]],
            s=160,
            facecolors="none",
            edgecolors="crimson",
            linewidths=1.8,
            label="chosen",
            zorder=5,
        )
    top.set_xscale("log")
    _log_ticks(top.xaxis)
    _integer_ticks(bottom.yaxis)
    top.set_title(REP_TITLES[rep])
    bottom.set_xlabel("neurons used (log)")


def eta(report: dict) -> str | None:
    chosen = report["chosen"]
    grid = [
        g
        for g in _best_per_candidate(report.get("grid") or [])
        if (g["representation"], g["pooling"]) == (chosen["representation"], chosen["pooling"])
    ]
    if not grid:
        return None
    best = {}
    for g in grid:  # per eta, its best k (ties: the shallower)
        if g["eta"] not in best or g["valid"] > best[g["eta"]]["valid"]:
            best[g["eta"]] = g
    etas = sorted(best)
    fig, axes = _figure(5.2, 3.0)
    ax = axes[0][0]
    ax.plot(etas, [best[e]["valid"] for e in etas], "-o", color="#4c72b0", label="valid score")
    ax.axvline(chosen["eta"], color="crimson", ls=":", label=f"chosen eta = {chosen['eta']}")
    ax.set_xscale("log")
    _log_ticks(ax.xaxis, etas)
    ax.set_xlabel("eta: share of each probe's squared weight kept")
    ax.set_ylabel(f"valid {_metric(report)}", color="#4c72b0")
    twin = ax.twinx()
    twin.plot(etas, [best[e]["n_neurons"] for e in etas], "-s", color="#dd8452", label="neurons")
    twin.set_ylabel("neurons used", color="#dd8452")
    _integer_ticks(twin.yaxis)
    twin.grid(False)
    ax.set_title(f"{chosen['representation']} / {chosen['pooling']}: best k at each eta")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="best")
    return _svg(fig)


def _k_axis(report: dict, n: int) -> list[int]:
    """The k of each per-k score in a report that does not list them (integration_k):
    from 0 when its probes started at the embedding layer, else from 1."""
    probes = report.get("per_layer_probes") or {}
    first = min((min(v.get("layers") or [1]) for v in probes.values()), default=1)
    return list(range(first, first + n))


def kept_per_layer(report: dict) -> str | None:
    by_rep = report.get("neurons_kept_per_layer_by_rep") or {
        "all": report.get("neurons_kept_per_layer") or []
    }
    L = max((len(v) for v in by_rep.values()), default=0)
    if not L:
        return None
    fig, axes = _figure(5.2, 2.6)
    emb = int(report.get("neurons_kept_embeddings") or 0)  # layer 0: hidden state only
    first = 0 if emb else 1
    ax, bottom = axes[0][0], [0] * (L + 1 - first)
    colours = {"hidden": "#4c72b0", "ffn": "#dd8452", "all": "#8172b3"}
    for rep, counts in by_rep.items():
        counts = ([emb if rep in ("hidden", "all") else 0] if emb else []) + list(counts)
        ax.bar(range(first, L + 1), counts, bottom=bottom, color=colours[rep], label=rep)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_xlabel("layer (0: embeddings)" if emb else "layer")
    ax.set_ylabel("neurons kept")
    _integer_ticks(ax.yaxis)
    step = 1 if L <= 24 else max(1, L // 12)
    ax.set_xticks(range(first, L + 1, step))
    ax.set_title("the classifier's neurons per layer")
    ax.legend()
    return _svg(fig)


def activations(report: dict) -> str | None:
    kept = report.get("kept_activations")
    if not kept or not kept.get("layers"):
        return None
    import matplotlib as mpl

    names = report["label_names"]
    colours = mpl.colormaps["tab10"].colors
    n = len(names)
    width = 0.8 / n
    fig, axes = _figure(min(max(5.2, 0.35 * len(kept["layers"]) * n + 2), 10.5), 3.4)
    ax = axes[0][0]
    for c, name in enumerate(names):
        stats, positions = [], []
        for i, layer in enumerate(kept["layers"]):
            q = layer["by_class"][name]["quantiles"]
            if q is None:
                continue
            lo, q1, med, q3, hi = q
            stats.append({"whislo": lo, "q1": q1, "med": med, "q3": q3, "whishi": hi, "fliers": []})
            positions.append(i + (c - (n - 1) / 2) * width)
        style = dict(facecolor=colours[c % len(colours)], alpha=0.75)
        ax.bxp(
            stats,
            positions,
            widths=width * 0.9,
            patch_artist=True,
            boxprops=style,
            medianprops=dict(color="black"),
            showfliers=False,
        )
        ax.plot([], [], "s", color=colours[c % len(colours)], label=name)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(kept["layers"])))
    ax.set_xticklabels([f"{x['layer']}\n({x['n_neurons']})" for x in kept["layers"]])
    ax.set_xlabel("layer (kept neurons)")
    aligned = kept.get("aligned_to")
    ax.set_ylabel(f"activation (+: toward {aligned})" if aligned else "activation")
    ax.set_title(f"kept neurons' activations, {kept['split']} split")
    ax.legend(title="true class", loc="best")
    return _svg(fig)


def early_exit(report: dict) -> str | None:
    rows = report.get("early_exit") or []
    if not rows:
        return None
    split = "test" if all(r.get("test") is not None for r in rows) else "valid"
    fig, axes = _figure(5.2, 3.0)
    ax = axes[0][0]
    x = [100 * r["fraction"] for r in rows]
    ax.plot(x, [r[split] for r in rows], "-o", color="#4c72b0", label=f"SPIN, {split}")
    base = (report.get("baselines") or {}).get("embedding") or {}
    if base.get(split) is not None:
        ax.axhline(base[split], color="grey", ls="--", label="last-layer embedding")
    ax.set_xticks(x)
    ax.set_xlabel("share of the model's layers run (%)")
    ax.set_ylabel(f"{split} {_metric(report)}", color="#4c72b0")
    times = (report.get("inference") or {}).get("by_layers") or {}
    t = [times.get(str(r["num_layers"])) for r in rows]
    if any(v is not None for v in t):
        twin = ax.twinx()
        twin.plot(x, [None if v is None else 1e3 * v for v in t], "-s", color="#dd8452")
        twin.set_ylabel("ms per text", color="#dd8452")
        twin.set_ylim(bottom=0)
        twin.grid(False)
    ax.set_title("early exit: fewer layers, less time")
    ax.legend(loc="lower right")
    return _svg(fig)
