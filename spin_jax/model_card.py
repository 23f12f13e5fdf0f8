"""MODEL_CARD.md of a run folder, in the sections of a Hugging Face model card (metadata,
model details, intended use, training data, evaluation, limitations, how to load), from
report.json and classifier.json alone."""

from __future__ import annotations

from spin_jax.html import num


def render(report: dict, meta: dict) -> str:
    source = meta.get("model", {}).get("source", "?")
    names = report.get("label_names") or meta.get("label_names") or []
    metric = report["metric"]
    front = [
        "---",
        "library_name: spin_jax",
        "pipeline_tag: text-classification",
        f"base_model: {source}",
        "tags: [spin, sparsify-then-classify, frozen-transformer, jax]",
        f"metrics: [{metric}]",
        "---",
    ]
    lines = [
        *front,
        *_details(report, meta, names),
        "## Training data",
        "",
        *_data(report),
        "",
        "## Evaluation",
        "",
        *_scores(report),
        "",
        *_limitations(meta),
        *HOW_TO_LOAD,
    ]
    return "\n".join(lines)


def _details(report: dict, meta: dict, names) -> list[str]:
    model = meta.get("model", {})
    source = model.get("source", "?")
    c, spin = report["chosen"], report["spin"]
    L = len(report["neurons_kept_per_layer"])
    first = 0 if (report.get("recipe") or {}).get("embedding_layer") else 1
    return [
        f"# SPIN classifier on {source}",
        "",
        "## Model details",
        "",
        f"A linear classifier over {spin['n_neurons']} neurons of the first "
        f"{spin['num_layers']} of {L} layers of the frozen `{source}` "
        f"({model.get('model_type', '?')}), fitted with SPIN (Sparsify-then-Classify, "
        "arXiv 2311.15983) by spin_jax "
        f"{meta.get('spin_jax_version', '?')} on {str(meta.get('created', '?'))[:10]}. "
        "The transformer's weights are not changed; inference runs only the first "
        f"{spin['num_layers']} blocks and reads only the kept neurons.",
        "",
        f"- Classes: {', '.join(f'`{n}`' for n in names)}",
        f"- Representation: {c['representation']}, pooling: {c['pooling']}, eta: {c['eta']}, "
        f"layers offered: {first}..{c['k']}",
        "- Files: `classifier.safetensors`, `classifier.json` (model identity, tokenizer "
        "settings, hashes), `report.json`; `report.html` shows the fit.",
        "",
        "## Intended use",
        "",
        f"Classifying texts like its training data into {len(names)} classes, with the same "
        f"model `{source}`; explaining a prediction token by token (`spin-jax explain`). It "
        "is not meant for texts of another domain or language without checking its score "
        "on labelled examples of them first (`spin-jax evaluate`).",
        "",
    ]


def _limitations(meta: dict) -> list[str]:
    return [
        "## Limitations",
        "",
        f"- Texts longer than {meta.get('tokenizer', {}).get('max_length', '?')} tokens are "
        "read up to that limit only.",
        "- A linear head on frozen features inherits the base model's biases and blind spots; "
        "scores hold for data like the validation and test splits above.",
        "- Token shares explain this classifier's logits exactly, not the model's reasoning.",
        "- Loading refuses a different model or spin_jax version than the one recorded.",
        "",
    ]


HOW_TO_LOAD = [
    "## How to load",
    "",
    "```python",
    "from spin_jax import SpinClassifier",
    "",
    'clf = SpinClassifier.load("path/to/this/folder")  # the model recorded at fit time',
    'clf.predict(["a new text"])',
    'clf.explain("a new text")  # each token\'s share of each class logit',
    "```",
    "",
    "```",
    "spin-jax predict path/to/this/folder --data new.csv --out predictions.csv",
    'spin-jax explain path/to/this/folder "a new text" --html why.html',
    "```",
    "",
    "## Citation",
    "",
    "Jiao et al., *SPIN: Sparsifying and Integrating Internal Neurons in Large Language "
    "Models for Text Classification*, Findings of ACL 2024 (arXiv 2311.15983).",
    "",
]


def _data(report: dict) -> list[str]:
    run = report.get("run") or {}
    data = run.get("data") or {}
    lines = [f"- {k}: `{v}`" for k, v in data.items() if v is not None]
    lines.append(
        f"- Rows: {report['n_train']} train, {report['n_valid']} validation, "
        f"{report['n_test'] if report['n_test'] is not None else 'no'} test"
    )
    if "seed" in run:
        lines.append(f"- Split seed: {run['seed']} (validation fraction {run['valid_fraction']})")
    return lines


def _scores(report: dict) -> list[str]:
    rows = [
        f"| metric: {report['metric']} | validation | test |",
        "| --- | ---: | ---: |",
        f"| SPIN | {num(report['spin']['valid'])} | {num(report['spin']['test'])} |",
    ]
    for name, b in report["baselines"].items():
        if isinstance(b, dict) and "valid" in b:
            rows.append(f"| {name.replace('_', ' ')} | {num(b['valid'])} | {num(b.get('test'))} |")
    per_class = (report.get("per_class") or {}).get("test") or (report.get("per_class") or {}).get(
        "valid"
    )
    if per_class:
        rows += [
            "",
            "| class | precision | recall | F1 | support |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for i, name in enumerate(per_class["labels"]):
            rows.append(
                f"| {name} | {num(per_class['precision'][i])} | {num(per_class['recall'][i])} | "
                f"{num(per_class['f1'][i])} | {per_class['support'][i]} |"
            )
    return rows
