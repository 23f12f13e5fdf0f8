"""Token explanations as pages: the text itself, each token coloured by its additive share
of a class's logit (spin_jax/explain.py), with the prediction, the numbers on hover, a
control for the depth (the share of the columns of layers 1..j, j <= k) and one that hides
the special tokens; a JSON file beside each page holds the same numbers. For many texts,
one page each and an index sorted by confidence.

Tokens are mapped back to the original string by their character spans (text.token_spans),
so the page shows the user's text, not the tokenizer's pieces; tokens sharing characters (a
character split into bytes) are one coloured piece, their shares summed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spin_jax import inference
from spin_jax.batching import plan_batches
from spin_jax.classifier import _centred
from spin_jax.errors import DataError
from spin_jax.explain import split_logits_by_layer
from spin_jax.files import write_text_atomic
from spin_jax.html import esc, page
from spin_jax.models import forward_program
from spin_jax.text import pad_batch, token_spans

TOKEN_BUDGET = 2048  # tokens per batch: the per-token features of k layers are held at once
PALETTE_SIZE = 21


def _layer_shares(params, ids, mask, sel, *, config, k):
    """[B, T, k, K] each token's share of the head's logits, by the layer of its columns."""
    f = forward_program(config, params, ids, mask, num_layers=k, pooled=False)
    return split_logits_by_layer(config, k, sel, inference._kept(f, sel, pooled=False), mask)


def explain_texts(clf, texts, labels=None) -> list[dict]:
    """One record per text (the JSON written beside its page): the prediction, the class
    probabilities and the head's bias, and per token its text span and its share of each
    class's centred logit from each layer 1..k. Empty texts are refused."""
    clf._check_fitted()
    texts = [texts] if isinstance(texts, str) else list(texts)
    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty:
        raise DataError(
            f"explain: text {empty[0] + 1} of {len(texts)} is empty; pass texts with words in them."
        )
    tok, L = clf.model.tokenizer, clf.max_length
    spans = [token_spans(tok, str(t), L) for t in texts]
    shares = _shares(clf, [s.ids for s in spans])
    names = list(clf.label_names or range(len(_centred(clf.head.intercept))))
    bias = _centred(clf.head.intercept)
    return [
        _record(t, s, sh, bias, names, L, None if labels is None else labels[i])
        for i, (t, s, sh) in enumerate(zip(texts, spans, shares, strict=True))
    ]


def _shares(clf, ids: list[np.ndarray]) -> list[np.ndarray]:
    """[T, k, C] centred shares of each text, batched by length."""
    head, model = clf.head, clf.model
    run = inference.program(_layer_shares)
    sel, pad = inference.selection(head), int(getattr(model.tokenizer, "pad_token_id", 0) or 0)
    out = [None] * len(ids)
    lengths = np.array([len(i) for i in ids])
    for rows, blen, size in plan_batches(lengths, clf.max_length, TOKEN_BUDGET):
        batch = [ids[r] for r in rows] + [np.array([pad], np.int32)] * (size - len(rows))
        b_ids, b_mask = pad_batch(batch, blen, pad)
        got = np.asarray(
            run(model.params, b_ids, b_mask, sel, config=model.config, k=head.num_layers)
        )
        for b, r in enumerate(rows):
            out[r] = _centred(got[b, : lengths[r]])
    return out


def _record(text, spans, shares, bias, names, max_length, label) -> dict:
    z = bias + shares.sum((0, 1))
    p = np.exp(z - z.max())
    p /= p.sum()
    real = [e for (s, e), sp in zip(spans.spans, spans.special, strict=True) if not sp]
    return {
        "text": text,
        "labels": [str(n) for n in names],
        "prediction": str(names[int(p.argmax())]),
        "proba": [float(x) for x in p],
        "label": None if label is None else str(label),
        "bias": [float(x) for x in bias],
        "n_layers": int(shares.shape[1]),
        "max_length": int(max_length),
        "truncated": bool(spans.truncated),
        "n_tokens": int(spans.n_tokens),
        "read_chars": int(max(real, default=0)) if spans.truncated else len(text),
        "tokens": [
            {
                "token": t,
                "start": int(s),
                "end": int(e),
                "special": sp,
                "layers": np.round(share, 7).tolist(),
            }
            for t, (s, e), sp, share in zip(
                spans.tokens, spans.spans, spans.special, shares, strict=True
            )
        ],
    }


# ---- pages -------------------------------------------------------------------------------


def write_explanation(clf, text: str, html_path, label=None) -> Path:
    """One text's page at html_path and its JSON beside it (same name, .json)."""
    (record,) = explain_texts(clf, [text], None if label is None else [label])
    return _write_page(record, Path(html_path), _model(clf))


def write_explanations(clf, texts, out_dir, labels=None) -> Path:
    """A page and a JSON per text (0001.html, 0001.json, ...) and index.html, sorted by
    confidence, in out_dir; returns the index."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = explain_texts(clf, texts, labels)
    width = max(4, len(str(len(records))))
    names = [f"{i + 1:0{width}d}.html" for i in range(len(records))]
    for record, name in zip(records, names, strict=True):
        _write_page(record, out / name, _model(clf), index="index.html")
    write_text_atomic(out / "index.html", render_index(records, names, _model(clf)))
    return out / "index.html"


def _model(clf) -> str:
    return str(clf.model.source)


def _write_page(record: dict, path: Path, model: str, index: str | None = None) -> Path:
    write_text_atomic(path.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    write_text_atomic(path, render_page(record, model, index=index))
    return path


def palette() -> list[str]:
    """PALETTE_SIZE colours of matplotlib's diverging RdBu_r: against (blue), none (white),
    for (red) the class shown."""
    import matplotlib as mpl

    cmap = mpl.colormaps["RdBu_r"]
    return [mpl.colors.to_hex(cmap(i / (PALETTE_SIZE - 1))) for i in range(PALETTE_SIZE)]


def _units(record: dict) -> list[tuple[int, int, list[int]]]:
    """Pieces of the text to colour: (start, end, token indices), in text order. Tokens
    whose spans overlap are one piece; an empty span joins the next piece."""
    units, pending = [], []
    order = sorted(
        (i for i, t in enumerate(record["tokens"]) if not t["special"]),
        key=lambda i: (record["tokens"][i]["start"], i),
    )
    for i in order:
        s, e = record["tokens"][i]["start"], record["tokens"][i]["end"]
        if e <= s:
            pending.append(i)
        elif units and s < units[-1][1]:
            units[-1] = (units[-1][0], max(units[-1][1], e), units[-1][2] + pending + [i])
            pending = []
        else:
            units.append((s, e, pending + [i]))
            pending = []
    if pending and units:
        units[-1] = (units[-1][0], units[-1][1], units[-1][2] + pending)
    return units


def _text_html(record: dict) -> str:
    text, tokens = record["text"], record["tokens"]
    specials = [i for i, t in enumerate(tokens) if t["special"]]
    first_real = next((i for i, t in enumerate(tokens) if not t["special"]), len(tokens))
    chip = '<span class="tok special" data-t="{i}">{t}</span>'
    lead = [chip.format(i=i, t=esc(tokens[i]["token"])) for i in specials if i < first_real]
    tail = [chip.format(i=i, t=esc(tokens[i]["token"])) for i in specials if i >= first_real]
    parts, cursor = [], 0
    for s, e, idx in _units(record):
        parts.append(esc(text[cursor:s]))
        parts.append(
            f'<span class="tok" data-t="{" ".join(map(str, idx))}">{esc(text[s:e])}</span>'
        )
        cursor = e
    read = record["read_chars"]
    parts.append(esc(text[cursor:read]))
    unread = f'<span class="unread">{esc(text[read:])}</span>' if read < len(text) else ""
    return "".join(lead) + "".join(parts) + unread + "".join(tail)


def render_page(record: dict, model: str, index: str | None = None) -> str:
    names, proba = record["labels"], record["proba"]
    shown = names.index(record["prediction"])
    k = record["n_layers"]
    verdict = ""
    if record["label"] is not None:
        right = record["label"] == record["prediction"]
        verdict = (
            f' <span class="pill {"good" if right else "bad"}">true label: '
            f"{esc(record['label'])} {'✓' if right else '✗'}</span>"
        )
    bars = "".join(
        f'<div class="bar"><span class="name">{esc(n)}</span><span class="track"><span '
        f'class="fill" style="width:{100 * p:.1f}%"></span></span><span class="p">{p:.3f}</span>'
        "</div>"
        for n, p in zip(names, proba, strict=True)
    )
    notice = ""
    if record["truncated"]:
        notice = (
            f'<div class="notice">This text has {record["n_tokens"]} tokens, more than the '
            f"model's limit of {record['max_length']}: only its first "
            f"{record['read_chars']:,} of {len(record['text']):,} characters were read and "
            "are explained; the rest is shown in grey.</div>"
        )
    options = "".join(
        f'<option value="{i}"{" selected" if i == shown else ""}>{esc(n)}</option>'
        for i, n in enumerate(names)
    )
    back = f'<p class="muted"><a href="{esc(index)}">← all texts</a></p>' if index else ""
    body = f"""{back}
<section class="summary">
  <div class="verdict">prediction <span class="pill big">{esc(record["prediction"])}</span>
    p = {proba[shown]:.3f}{verdict}</div>
  <div class="bars">{bars}</div>
</section>
{notice}
<section class="controls">
  <label>shares of the logit of <select id="cls">{options}</select></label>
  <label>from layers 1..<output id="depth-out">{k}</output> of {k}
    <input id="depth" type="range" min="1" max="{k}" value="{k}" step="1"{" disabled" * (k == 1)}>
  </label>
  <label><input id="hide-special" type="checkbox"> hide special tokens</label>
</section>
<div class="legend"><span id="lo">-</span><span class="ramp" id="ramp"></span>
  <span id="hi">+</span><span class="muted" id="logit"></span></div>
<article class="text" id="text">{_text_html(record)}</article>
<h3>Tokens that weigh most</h3>
<table id="top"><thead><tr><th>token</th><th>text</th><th class="num">share</th></tr></thead>
<tbody></tbody></table>
<p class="note">A token's share is its exact additive part of the class's logit: the bias
plus every token's share is the logit, and the softmax of the logits gives the
probabilities above. Shares are centred over the classes. The depth control keeps the
columns the classifier reads from the first layers only.</p>
<div id="tip" class="tip" hidden></div>
<script type="application/json" id="spin-data">{_json_for_html(record)}</script>
<script type="application/json" id="spin-palette">{json.dumps(palette())}</script>"""
    header = (
        '<header class="top"><div class="inner"><h1>Why '
        f"{esc(record['prediction'])}?</h1><p>SPIN classifier on {esc(model)}: each "
        "token's share of the class's logit</p></div></header>"
    )
    return page(f"Why {record['prediction']}?", body, header=header, css=CSS, script=SCRIPT)


def _json_for_html(obj) -> str:
    """JSON safe inside a <script> element (no "</" can close it)."""
    return json.dumps(obj).replace("</", "<\\/")


def render_index(records: list[dict], pages: list[str], model: str) -> str:
    order = sorted(range(len(records)), key=lambda i: -max(records[i]["proba"]))
    rows = []
    for rank, i in enumerate(order, 1):
        r = records[i]
        right = "" if r["label"] is None else ("✓" if r["label"] == r["prediction"] else "✗")
        snippet = esc(r["text"] if len(r["text"]) <= 140 else r["text"][:137] + "…")
        if r["truncated"]:
            snippet += ' <span class="pill bad">truncated</span>'
        rows.append(
            f'<tr><td class="num">{rank}</td><td><a href="{esc(pages[i])}">{esc(pages[i])}</a>'
            f'</td><td>{esc(r["prediction"])}</td><td class="num">{max(r["proba"]):.3f}</td>'
            f"<td>{esc(r['label'] if r['label'] is not None else '-')}</td><td>{right}</td>"
            f"<td>{snippet}</td></tr>"
        )
    scored = [r for r in records if r["label"] is not None]
    summary = f"{len(records)} texts"
    if scored:
        right = sum(r["label"] == r["prediction"] for r in scored)
        summary += f"; {right} of {len(scored)} predicted as labelled ({right / len(scored):.1%})"
    body = (
        f'<p class="muted">{esc(summary)}; most confident first.</p>'
        '<table class="index"><thead><tr><th class="num">#</th><th>page</th><th>prediction</th>'
        '<th class="num">p</th><th>true</th><th></th><th>text</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )
    header = (
        '<header class="top"><div class="inner"><h1>Explanations</h1>'
        f"<p>SPIN classifier on {esc(model)}</p></div></header>"
    )
    return page("Explanations", body, header=header, css=CSS)


CSS = """
.summary { display: flex; flex-wrap: wrap; gap: 12px 40px; align-items: center;
           margin: 8px 0 12px; }
.verdict { font-size: 17px; }
.pill.big { font-size: 16px; padding: 2px 12px; }
.bars { min-width: 280px; }
.bar { display: flex; align-items: center; gap: 8px; font-size: 13.5px; }
.bar .name { width: 110px; text-align: right; overflow: hidden; text-overflow: ellipsis; }
.bar .track { width: 180px; height: 10px; background: var(--soft);
              border: 1px solid var(--line); border-radius: 5px; overflow: hidden; }
.bar .fill { display: block; height: 100%; background: var(--accent); }
.controls { display: flex; flex-wrap: wrap; gap: 10px 28px; align-items: center;
            padding: 10px 14px; background: var(--soft); border: 1px solid var(--line);
            border-radius: 8px; font-size: 14px; }
.controls input[type=range] { vertical-align: middle; width: 200px; }
.legend { display: flex; align-items: center; gap: 8px; margin: 12px 0 4px;
          font-size: 13px; }
.legend .ramp { width: 240px; height: 12px; border: 1px solid var(--line); border-radius: 3px; }
.text { font-size: 18px; line-height: 2.05; white-space: pre-wrap; word-wrap: break-word;
        padding: 14px 18px; border: 1px solid var(--line); border-radius: 8px; }
.tok { border-radius: 3px; padding: 1px 0; cursor: default; }
.tok:hover { outline: 2px solid #24292f; }
.tok.special { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px;
               border: 1px dashed #8c959f; padding: 1px 4px; margin: 0 3px; }
body.hide-special .tok.special { display: none; }
.unread { color: #8c959f; }
.tip { position: fixed; z-index: 10; background: #24292f; color: #fff; font-size: 13px;
       padding: 8px 10px; border-radius: 6px; pointer-events: none; max-width: 360px;
       box-shadow: 0 4px 12px rgba(0,0,0,.2); }
.tip td, .tip th { border: 0; padding: 1px 8px 1px 0; color: #fff; background: none; }
table.index td:last-child { max-width: 620px; }
"""

SCRIPT = r"""
const data = JSON.parse(document.getElementById('spin-data').textContent);
const palette = JSON.parse(document.getElementById('spin-palette').textContent);
const cls = document.getElementById('cls'), depth = document.getElementById('depth');
const depthOut = document.getElementById('depth-out'), tip = document.getElementById('tip');
const units = Array.from(document.querySelectorAll('#text .tok')).map(function (el) {
  return {el: el, idx: el.dataset.t.split(' ').map(Number)};
});
function share(i, c, j) {
  let s = 0;
  const layers = data.tokens[i].layers;
  for (let l = 0; l < j; l++) s += layers[l][c];
  return s;
}
function fmt(x) { return (x >= 0 ? '+' : '') + x.toFixed(3); }
function colour(v) { return palette[Math.round((v + 1) / 2 * (palette.length - 1))]; }
document.getElementById('ramp').style.background =
  'linear-gradient(to right, ' + palette.join(', ') + ')';
function update() {
  const c = Number(cls.value), j = Number(depth.value);
  depthOut.textContent = j;
  let scale = 1e-12, total = data.bias[c];
  units.forEach(function (u) {
    u.value = u.idx.reduce(function (a, i) { return a + share(i, c, j); }, 0);
    scale = Math.max(scale, Math.abs(u.value));
    total += u.value;
  });
  units.forEach(function (u) {
    const v = u.value / scale;
    u.el.style.background = Math.abs(v) < 0.05 ? 'transparent' : colour(v);
    u.el.style.color = Math.abs(v) > 0.65 ? '#fff' : '';
  });
  const name = data.labels[c];
  document.getElementById('lo').textContent = fmt(-scale) + ' against ' + name;
  document.getElementById('hi').textContent = fmt(scale) + ' for ' + name;
  document.getElementById('logit').textContent = ' · logit of ' + name + ' from layers 1..' +
    j + ': ' + fmt(total) + ' (bias ' + fmt(data.bias[c]) + ')';
  const top = units.slice().sort(function (a, b) { return Math.abs(b.value) - Math.abs(a.value); });
  const body = document.querySelector('#top tbody');
  body.textContent = '';
  top.filter(function (u) { return u.value !== 0; }).slice(0, 10).forEach(function (u) {
    const tr = document.createElement('tr');
    [u.idx.map(function (i) { return data.tokens[i].token; }).join(' '), u.el.textContent,
     fmt(u.value)].forEach(function (text, n) {
      const td = document.createElement('td');
      td.textContent = text;
      if (n === 2) td.className = 'num';
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
}
function showTip(event) {
  const el = event.target.closest('.tok');
  if (!el) { tip.hidden = true; return; }
  const idx = el.dataset.t.split(' ').map(Number), j = Number(depth.value);
  const rows = data.labels.map(function (name, c) {
    const s = idx.reduce(function (a, i) { return a + share(i, c, j); }, 0);
    return '<tr><td>' + escapeHtml(name) + '</td><td>' + fmt(s) + '</td></tr>';
  }).join('');
  const toks = idx.map(function (i) { return escapeHtml(data.tokens[i].token); }).join(' ');
  tip.innerHTML = '<div><b>' + toks + '</b> (layers 1..' + j + ')</div><table>' + rows +
    '</table>';
  tip.hidden = false;
  tip.style.left = Math.min(event.clientX + 14, window.innerWidth - 370) + 'px';
  tip.style.top = (event.clientY + 16) + 'px';
}
function escapeHtml(s) {
  return s.replace(/[&<>"]/g, function (ch) {
    return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[ch];
  });
}
document.getElementById('text').addEventListener('mousemove', showTip);
document.getElementById('text').addEventListener('mouseleave', function () { tip.hidden = true; });
document.getElementById('hide-special').addEventListener('change', function (e) {
  document.body.classList.toggle('hide-special', e.target.checked);
});
cls.addEventListener('change', update);
depth.addEventListener('input', update);
update();
"""
