"""What the report and the explanation pages share: one self-contained page (its style and
script inline, nothing fetched: no network, no CDN), escaping, number formats, and figures
inlined as SVG."""

from __future__ import annotations

import html
import json
import re

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa;
        --accent: #0969da; --good: #1a7f37; --bad: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
             Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 64px; }
header.top { background: #24292f; color: #fff; padding: 18px 28px; }
header.top .inner { max-width: 1120px; margin: 0 auto; padding: 0 28px; }
header.top h1 { margin: 0; font-size: 22px; font-weight: 600; }
header.top p { margin: 4px 0 0; color: #d1d9e0; font-size: 14px; }
nav.toc { position: sticky; top: 0; z-index: 5; background: rgba(255,255,255,.96);
          border-bottom: 1px solid var(--line); padding: 8px 28px; font-size: 13.5px; }
nav.toc .inner { max-width: 1120px; margin: 0 auto; padding: 0 28px; display: flex;
                 flex-wrap: wrap; gap: 4px 16px; }
nav.toc a { color: var(--accent); text-decoration: none; }
h2 { font-size: 19px; margin: 36px 0 8px; padding-bottom: 4px;
     border-bottom: 1px solid var(--line); }
h3 { font-size: 15.5px; margin: 20px 0 6px; }
p.note, .muted { color: var(--muted); font-size: 13.5px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr));
         gap: 12px; margin: 18px 0 8px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px;
        background: var(--soft); }
.card .label { color: var(--muted); font-size: 12.5px; text-transform: uppercase;
               letter-spacing: .04em; }
.card .value { font-size: 24px; font-weight: 600; }
.card .sub { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 12px 5px 8px; text-align: left;
         vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.spin td { font-weight: 600; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr));
         gap: 8px 28px; }
figure { margin: 12px 0 20px; }
figure svg { height: auto; max-width: 100%; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 2px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
              font-size: 13px; }
.pill { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12.5px;
        background: #ddf4ff; color: #0550ae; }
.pill.bad { background: #ffebe9; color: var(--bad); }
.pill.good { background: #dafbe1; color: var(--good); }
.notice { border: 1px solid #d4a72c; background: #fff8c5; border-radius: 6px;
          padding: 8px 12px; margin: 12px 0; font-size: 14px; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def num(value, digits: int = 4) -> str:
    """A score or ratio as the pages show it; '-' for a missing one."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}f}"


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def big(value) -> str:
    """A count of parameters or FLOPs: exact below a million, else like 1.23 × 10¹²."""
    if value is None:
        return "-"
    if abs(value) < 1e6:
        return f"{int(value):,}"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa} × 10{str(int(exponent)).translate(_SUPERSCRIPT)}"


def cell(value, path=None, text=None, digits: int = 4, align: str = "num") -> str:
    """A table cell of a number; `path` (dotted, into report.json) lets a test find the
    number the cell shows and compare it with the file."""
    attrs = f' data-path="{esc(path)}" data-value="{esc(json.dumps(value))}"' if path else ""
    shown = num(value, digits) if text is None else text
    return f'<td class="{align}"{attrs}>{esc(shown)}</td>'


def table(head: list[str], rows: list[str], numeric_from: int = 1, cls: str = "") -> str:
    """rows are the rows' inner HTML (their <td>s); head the column titles."""
    ths = "".join(
        f'<th class="num">{esc(h)}</th>' if i >= numeric_from else f"<th>{esc(h)}</th>"
        for i, h in enumerate(head)
    )
    body = "".join(f"<tr>{r}</tr>" if not r.startswith("<tr") else r for r in rows)
    thead = f"<thead><tr>{ths}</tr></thead>" if any(head) else ""
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


_PROLOG = re.compile(r"^.*?(?=<svg)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>", re.S)
_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')
_IDS = re.compile(r'(\bid="|url\(#|href="#)([^")]+)')


def inline_svg(svg: str, prefix: str) -> str:
    """A standalone SVG document as an element of an HTML page: without the XML prolog,
    doctype, metadata and namespace declarations (HTML's parser supplies the namespaces),
    so the page names no URL; its ids (clip paths, markers) get `prefix`, so that several
    figures on one page keep distinct ids."""
    svg = _XMLNS.sub("", _METADATA.sub("", _PROLOG.sub("", svg, count=1)))
    return _IDS.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)


def page(title: str, body: str, *, header: str = "", css: str = "", script: str = "") -> str:
    """A complete page. A script marks <body data-ready> when it has run (the browser
    tests read it), and reports its own errors in the page rather than only the console."""
    js = ""
    if script:
        js = (
            "<script>\n(function () {\n"
            f"{script}\n"
            "document.body.dataset.ready = '1';\n})();\n</script>"
        )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}{css}</style>\n</head>\n"
        f"<body>\n{header}\n<main>\n{body}\n</main>\n{js}\n</body>\n</html>\n"
    )
