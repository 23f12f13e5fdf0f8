"""What `spin-jax fit` writes for a person to read (report.html, figures/, MODEL_CARD.md),
`spin-jax report` rebuilding it, and `spin-jax explain --html / --data` pages: the numbers
the pages show are report.json's, the pages are well-formed HTML naming no URL, bad input
ends in one line. The browser tests render the pages in headless Chromium (skipped where
none is installed) and look at the screenshots."""

from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from spin_jax import figures, report_html
from spin_jax.classifier import SpinClassifier
from spin_jax.cli import main
from tests.run_fixture import fitted_run
from tests.test_learner import write_csv

pytestmark = pytest.mark.torch  # the session's tiny BERT is built with HF torch

TEXT = "The plot was thin, but the acting saved it."


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
    return fitted_run(tmp_path_factory.getbasetemp(), folder)


@pytest.fixture(scope="module")
def report(run):
    return json.loads((run / "report.json").read_text())


@pytest.fixture(scope="module")
def why(run, tmp_path_factory):
    page = tmp_path_factory.mktemp("why") / "why.html"
    assert main(["explain", str(run), TEXT, "--html", str(page), "--label", "positive"]) == 0
    return page


# ---- reading pages back ------------------------------------------------------------------

VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "col", "source"}


class Page(HTMLParser):
    """Checks that tags nest and close, and collects the cells that carry a number of
    report.json (data-path, data-value, the text shown) and every URL-bearing attribute."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.numbers, self.links = [], [], [], []
        self._cell = None
        self.doctype = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [(tag, k, v) for k, v in attrs if k in ("src", "href", "xlink:href")]
        if "data-path" in a:
            self._cell = [a["data-path"], json.loads(a["data-value"]), ""]
            self.numbers.append(self._cell)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.links += [(tag, k, v) for k, v in attrs if k in ("src", "href", "xlink:href")]

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        self._cell = None if tag == "td" else self._cell

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data


def read_page(path) -> Page:
    p = Page()
    text = Path(path).read_text(encoding="utf-8")
    p.feed(text)
    p.close()
    assert p.doctype == "DOCTYPE html" and text.startswith("<!DOCTYPE html>")
    assert not p.errors, p.errors[:3]
    assert p.stack == [], p.stack
    return p


def no_urls(path) -> None:
    """The page loads nothing: no URL anywhere in it, links only to its own anchors or to
    pages beside it."""
    text = Path(path).read_text(encoding="utf-8")
    assert not re.search(r"https?:|//[\w.-]+\.\w|url\((?!#)|@import", text)
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))
    for tag, attr, value in read_page(path).links:
        assert tag == "a" or value.startswith("#"), (tag, attr, value)
        assert value.startswith("#") or re.fullmatch(r"[\w.-]+\.html", value), value


def at(report, path):
    for part in path.split("."):
        report = report[int(part)] if isinstance(report, list) else report[part]
    return report


SUPERSCRIPT = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")


def shown_number(path: str, text: str) -> tuple[float, float]:
    """(the number a cell shows, in report.json's unit; half its last shown digit)."""
    text = text.strip().replace(",", "")
    if "× 10" in text:
        mantissa, exponent = text.split(" × 10")
        e = int(exponent.translate(SUPERSCRIPT))
        return float(mantissa) * 10.0**e, 0.5 * 10.0 ** (e - _decimals(mantissa))
    scale = 1.0
    if text.endswith("%"):
        text, scale = text[:-1], 0.01
    elif path.startswith("inference."):
        scale = 1e-3  # shown in ms
    return float(text) * scale, 0.5 * 10.0 ** -_decimals(text) * scale


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def check_numbers(page_path, report) -> list:
    """Every number cell of the page: its data-value is report.json's value at its path,
    and the text shown is that value to the digits shown."""
    numbers = read_page(page_path).numbers
    for path, value, text in numbers:
        assert value == at(report, path), path
        if value is None:
            assert text.strip() == "-", (path, text)
            continue
        got, tol = shown_number(path, text)
        assert abs(got - value) <= tol * 1.0001 + 1e-12, (path, value, text)
    return numbers


# ---- the report --------------------------------------------------------------------------


def test_fit_writes_the_report_its_figures_and_a_model_card(run, report):
    assert (run / "report.html").is_file()
    svgs = sorted((run / "figures").glob("*.svg"))
    assert {p.stem for p in svgs} >= {"layers", "kept_per_layer", "activations"}
    for p in svgs:
        assert "<svg" in p.read_text()[:2000]
    card = (run / "MODEL_CARD.md").read_text()
    for section in (
        "Model details",
        "Intended use",
        "Training data",
        "Evaluation",
        "Limitations",
        "How to load",
    ):
        assert f"## {section}" in card
    assert f"{report['spin']['test']:.4f}" in card


def test_report_json_holds_what_the_figures_need(report):
    assert report["label_names"] == ["negative", "positive"]
    test = report["per_class"]["test"]
    assert np.sum(test["confusion"]) == report["n_test"] == 40
    assert np.trace(test["confusion"]) / 40 == pytest.approx(report["spin"]["test"])
    kept = report["kept_activations"]
    assert kept["split"] == "test" and kept["aligned_to"] == "positive"
    assert sum(x["n_neurons"] for x in kept["layers"]) == report["spin"]["n_neurons"]
    by_rep = report["neurons_kept_per_layer_by_rep"]  # blocks; the embeddings apart
    n = np.sum(list(by_rep.values())) + report["neurons_kept_embeddings"]
    assert n == report["spin"]["n_neurons"]
    eff = report["efficiency"]
    assert eff["parameters"]["spin_head"] < eff["parameters"]["fine_tuning"]
    assert eff["flops"]["spin"]["total"] == sum(
        eff["flops"]["spin"][k] for k in ("extraction", "probes", "integration")
    )
    inference = report["inference"]
    assert inference["spin"]["num_layers"] == report["spin"]["num_layers"]
    assert inference["baseline"]["seconds"] > 0 and inference["spin"]["seconds"] > 0
    assert report["run"]["data"]["test"].endswith("test.csv")
    assert report["run"]["versions"]["spin_jax"]
    assert set(report["times"]) >= {"extraction_s", "probes_s", "integration_s"}


def test_inference_is_timed_at_each_early_exit_depth(run):
    from spin_jax.run_record import inference_times

    clf = SpinClassifier.load(run)
    clf.report["early_exit"] = [
        {"fraction": f, "num_layers": n, "k": n, "n_neurons": 5, "valid": 0.9, "test": 0.8}
        for f, n in ((0.4, 1), (1.0, 3))
    ]
    times = inference_times(clf, ["a great film", "an awful plot", "the actor"], n_texts=2)
    assert times["n_texts"] == 2 and set(times["by_layers"]) == {"1", "3"}
    assert all(t > 0 for t in times["by_layers"].values())
    assert times["baseline"]["num_layers"] == 3


def test_the_report_shows_report_json_numbers(run, report):
    paths = {p for p, _, _ in check_numbers(run / "report.html", report)}
    want = {
        "spin.valid",
        "spin.test",
        "baselines.embedding.test",
        "baselines.best_single_layer.valid",
        "chosen.eta",
        "per_class.test.f1.1",
        "per_class.valid.confusion.1.0",
        "inference.baseline.seconds",
        "efficiency.flops.spin.total",
        "efficiency.parameters.spin_head",
        "times.probes_s",
    }
    assert want <= paths, want - paths


def with_learner_keys(report: dict) -> dict:
    """The report with what the learner adds (the validated grid, the recipe, early exit
    per layer budget) made up, to draw and check every section."""
    r = copy.deepcopy(report)
    rng = np.random.default_rng(0)
    L = len(r["neurons_kept_per_layer"])
    r["grid"] = [
        {
            "representation": rep,
            "pooling": pool,
            "eta": eta,
            "k": k,
            "lam": lam,
            "valid": float(rng.uniform(0.5, 1)),
            "n_neurons": int(rng.integers(0, 50)),
        }
        for rep, pool, eta, k, lam in itertools.product(
            ("hidden", "ffn", "both"),
            ("token", "mean", "max", "all"),
            (0.1, 0.5, 0.8),
            range(1, L + 1),
            (0.1, 0.01),
        )
    ]
    c = r["chosen"]
    r["recipe"] = {
        "name": "paper",
        "lam": 0.01,
        "selection": "1se",
        "lam_grid": [0.1, 0.01],
        "paper_argmax_valid": 0.95,
    }
    r["per_layer_slp"] = {
        key: {"valid": v["valid"], "test": None} for key, v in r["per_layer_probes"].items()
    }
    r["early_exit"] = [
        {
            "fraction": f,
            "num_layers": max(1, round(f * L)),
            "k": max(1, round(f * L)),
            "n_neurons": c["n_neurons"],
            "valid": c["valid"],
            "test": r["spin"]["test"],
        }
        for f in (0.2, 0.4, 0.6, 0.8, 1.0)
    ]
    r["inference"]["by_layers"] = {str(n): 1e-4 * n for n in range(1, L + 1)}
    return r


def test_every_section_draws_and_shows_its_numbers(run, report, tmp_path):
    full = with_learner_keys(report)
    svgs = figures.draw_all(full)
    assert list(svgs) == list(figures.NAMES)
    meta = json.loads((run / "classifier.json").read_text())
    page = tmp_path / "report.html"
    page.write_text(report_html.render(full, meta, svgs), encoding="utf-8")
    paths = {p for p, _, _ in check_numbers(page, full)}
    assert {"early_exit.0.test", "early_exit.4.num_layers", "recipe.lam"} <= paths
    assert "recipe.paper_argmax_valid" in paths
    assert "inference.by_layers.1" in paths
    no_urls(page)


def test_a_report_of_only_the_first_keys_still_renders(run, report, tmp_path):
    """A report.json from before this page (no per-class scores, activations, efficiency,
    inference, run record) draws what it can and says what it lacks."""
    first = {
        k: report[k]
        for k in (
            "metric",
            "n_classes",
            "n_train",
            "n_valid",
            "n_test",
            "chosen",
            "spin",
            "baselines",
            "per_layer_probes",
            "per_k_integration_valid",
            "neurons_kept_per_layer",
            "candidates",
            "times",
        )
    }
    svgs = figures.draw_all(first)
    assert list(svgs) == ["layers", "kept_per_layer"]
    meta = json.loads((run / "classifier.json").read_text())
    page = tmp_path / "report.html"
    page.write_text(report_html.render(first, meta, svgs), encoding="utf-8")
    check_numbers(page, first)
    assert "holds no per-class scores" in page.read_text()


def test_pages_are_well_formed_and_name_no_url(run, why):
    for page in (run / "report.html", why):
        no_urls(page)


def test_report_command_rebuilds_the_same_files(run, tmp_path, capsys):
    copy_ = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("features"))
    for name in ("report.html", "MODEL_CARD.md"):
        (copy_ / name).unlink()
    shutil.rmtree(copy_ / "figures")
    assert main(["report", str(copy_)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {copy_ / 'report.html'}"
    assert (copy_ / "report.html").read_text() == (run / "report.html").read_text()
    for svg in (run / "figures").glob("*.svg"):
        assert (copy_ / "figures" / svg.name).read_text() == svg.read_text()


@pytest.mark.parametrize("command", [["report"], ["explain", "--html", "x.html", "-", "a text"]])
def test_a_folder_without_a_classifier_is_one_line_and_exit_2(tmp_path, capsys, command):
    args = [a if a != "-" else str(tmp_path) for a in command]
    if command == ["report"]:
        args.append(str(tmp_path))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spin-jax: error:") and "\n" not in err
    assert "classifier.json" in err


# ---- explanation pages -------------------------------------------------------------------


def test_explanation_page_holds_the_shares_of_explain(run, why):
    record = json.loads(why.with_suffix(".json").read_text())
    clf = SpinClassifier.load(run)
    ex = clf.explain(TEXT)
    assert [t["token"] for t in record["tokens"]] == ex.tokens
    shares = np.array([t["layers"] for t in record["tokens"]])  # [T, k, C]
    # One depth per block; the embeddings count with block 1 (a k = 0 head has that one).
    assert shares.shape[1] == max(clf.head.num_layers, 1)
    np.testing.assert_allclose(shares.sum(1), ex.shares, atol=1e-5)
    np.testing.assert_allclose(record["proba"], ex.proba, atol=1e-5)
    assert record["label"] == "positive" and record["prediction"] in clf.label_names
    for t in record["tokens"]:
        piece = TEXT[t["start"] : t["end"]].lower()
        assert t["special"] or piece == t["token"].removeprefix("##"), (t, piece)
    html = why.read_text()
    assert 'id="depth"' in html and 'id="hide-special"' in html and "true label" in html


def test_a_text_longer_than_the_limit_is_explained_over_its_read_part(run, tmp_path):
    text = " ".join(["a great film"] * 60) + " and a terrible ending"
    page = tmp_path / "long.html"
    assert main(["explain", str(run), text, "--html", str(page)]) == 0
    record = json.loads(page.with_suffix(".json").read_text())
    assert record["truncated"] and record["n_tokens"] > record["max_length"]
    assert len(record["tokens"]) == record["max_length"]
    assert 0 < record["read_chars"] < len(text)
    assert max(t["end"] for t in record["tokens"]) == record["read_chars"]
    html = page.read_text()
    assert 'class="notice"' in html and "only its first" in html and 'class="unread"' in html


@pytest.mark.parametrize("extra", [[], ["--html", "empty.html"]])
def test_an_empty_text_is_one_line_and_exit_2(run, tmp_path, capsys, extra, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["explain", str(run), "   ", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spin-jax: error:") and "empty" in err and "\n" not in err
    assert not (tmp_path / "empty.html").exists()


def test_explain_data_writes_a_page_per_text_and_an_index_by_confidence(run, tmp_path, capsys):
    texts = ["a great film", "an awful boring plot", "the actor", "superb and wonderful"]
    data = write_csv(tmp_path / "new.csv", texts, ["positive", "negative", "negative", "positive"])
    out = tmp_path / "explanations"
    assert main(["explain", str(run), "--data", str(data), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"explanations: {out / 'index.html'}"
    records = [json.loads((out / f"{i:04d}.json").read_text()) for i in range(1, 5)]
    assert [r["text"] for r in records] == texts
    assert [r["label"] for r in records] == ["positive", "negative", "negative", "positive"]
    index = (out / "index.html").read_text()
    order = re.findall(r'href="(\d+)\.html"', index)
    confidence = [max(records[int(n) - 1]["proba"]) for n in order]
    assert sorted(order) == ["0001", "0002", "0003", "0004"]
    assert confidence == sorted(confidence, reverse=True)
    for page in ("index.html", "0001.html"):
        no_urls(out / page)


def test_explain_arguments_that_do_not_go_together(run, tmp_path, capsys):
    for args in ([], ["a text", "--data", "x.csv"], ["--data", "x.csv"], ["a", "--out", "d"]):
        assert main(["explain", str(run), *args]) == 2
        assert capsys.readouterr().err.startswith("spin-jax: error:")


# ---- in a real browser -------------------------------------------------------------------

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)
browser = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium/Chrome installed")


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def screenshot(page: Path, tmp_path: Path, height: int) -> Path:
    png = tmp_path / f"{page.stem}.png"
    done = chromium(page, tmp_path, f"--screenshot={png}", f"--window-size=1280,{height}")
    assert "CONSOLE" not in done.stderr, done.stderr  # no message, no error, no exception
    return png


def not_blank(png: Path) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"), np.int32)
    ink = np.abs(pixels - pixels[0, -1]).sum(-1) > 60  # away from the background colour
    assert ink.mean() > 0.03, ink.mean()
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 50  # text, figures, colour


@browser
def test_the_report_renders_in_chromium(run, tmp_path):
    not_blank(screenshot(run / "report.html", tmp_path, 3000))


@browser
def test_the_explanation_page_renders_and_runs_its_script(why, tmp_path):
    not_blank(screenshot(why, tmp_path, 900))
    dom = chromium(why, tmp_path, "--dump-dom").stdout
    assert '<body data-ready="1"' in dom  # the script ran to its end
    assert re.search(r'class="tok[^"]*"[^>]*style="background: rgb', dom)  # and coloured tokens
