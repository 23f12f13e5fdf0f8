"""SpinClassifier: fit on texts, predict with early exit, save as safetensors + JSON.

Inference takes texts (only the first k blocks run, only the kept neurons leave the device)
or a feature source already extracted (FeatureStore, MemoryFeatures or DeviceFeatures): a
full one, or a selective one holding the classifier's columns (`extract_kept`, `spin-jax extract
--classifier`), so a test split can be extracted once and scored many times.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import artifact, inference
from spin_jax.artifact import WEIGHTS_FILE, meta_sha256  # noqa: F401 - re-exported
from spin_jax.cache import enable_compilation_cache
from spin_jax.columns import standardize_columns
from spin_jax.data import TextDataset, check_classes, check_texts, stratified_split, subset
from spin_jax.errors import ArtifactError, DataError, NotFittedError, SpinError  # noqa: F401
from spin_jax.extraction import TOKEN_BUDGET, extract, warn_truncated
from spin_jax.finetuned import head_baseline, head_label_order  # noqa: F401
from spin_jax.head import SpinHead
from spin_jax.inference import (  # noqa: F401 - re-exported: tests read the programs
    _head_logits,
    _kept_pooled,
    _token_shares,
    selection,
    selection_order,
)
from spin_jax.learner import fit_spin
from spin_jax.model import Model, load_model
from spin_jax.options import recipe_options, score
from spin_jax.progress import stage
from spin_jax.selection import (
    is_selective,
    neurons_of,
    poolings_of,
    read_head_columns,
)
from spin_jax.sources import align_labels, check_features, check_source, is_source, labels_of
from spin_jax.streaming import budgets, spill_folder
from spin_jax.text import encode, max_length_of, pad_batch

log = logging.getLogger("spin_jax")


class Explanation(NamedTuple):
    """SpinClassifier.explain's answer for one text."""

    tokens: list[str]
    shares: np.ndarray  # [T, C] each token's share of each class's logit (centred)
    bias: np.ndarray  # [C] the head's intercept (centred)
    proba: np.ndarray  # [C] softmax(bias + shares.sum(0)): the text's class probabilities


def _centred(logits) -> np.ndarray:
    """[..., K] logits as [..., C] centred over the classes; K == 1 is binary: [-z/2, z/2]."""
    z = np.asarray(logits, np.float64)
    if z.shape[-1] == 1:
        return np.concatenate([-z / 2, z / 2], axis=-1)
    return z - z.mean(-1, keepdims=True)


def _proba(logits: np.ndarray) -> np.ndarray:
    if logits.shape[-1] == 1:
        p = 0.5 * (1 + np.tanh(0.5 * logits[..., 0]))  # the sigmoid, without exp overflow
        return np.stack([1 - p, p], axis=-1)
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


# ---- the classifier ----------------------------------------------------------------------


class SpinClassifier:
    """SPIN text classifier over a frozen transformer.

    >>> clf = SpinClassifier(model="path/or/hub-id").fit(texts, labels)
    >>> clf.predict(["a new text"])
    """

    def __init__(
        self,
        model: str | Model,
        *,
        feature_dtype: str = "float32",
        max_length: int | None = None,
        valid_fraction: float = 0.2,
        seed: int = 0,
        token_budget: int = TOKEN_BUDGET,
        progress: bool = False,
        allow_empty: bool = False,
        work_dir=None,
        compilation_cache: bool = True,
        recipe: str = "default",
        device_budget: int | None = None,
        host_budget: int | None = None,
        **options,
    ):
        if compilation_cache:
            enable_compilation_cache()  # spin_jax/cache.py; before the model's first compile
        self.options = recipe_options(recipe, options)  # checked before the model loads
        self.budgets = budgets(device_budget, host_budget)  # bytes of features (streaming.py)
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise SpinError(f"max_length {max_length!r}: pass a positive number of tokens.")
        self.model = model if isinstance(model, Model) else load_model(model, progress=progress)
        self.feature_dtype, self.valid_fraction, self.seed = feature_dtype, valid_fraction, seed
        self.max_length = min(max_length or max_length_of(self.model), max_length_of(self.model))
        self.allow_empty = allow_empty
        self.token_budget, self.progress, self.work_dir = token_budget, progress, work_dir
        self.head: SpinHead | None = None
        self.label_names: tuple[str, ...] | None = None
        self.report: dict = {}

    # -- fitting

    def _dataset(self, texts, labels, names=None) -> TextDataset:
        from spin_jax.data import encode_labels

        texts = self._texts(texts)
        if labels is not None and len(texts) != len(labels):
            raise SpinError(
                f"{len(texts)} texts but {len(labels)} labels; pass one label per text."
            )
        y, names = (None, names) if labels is None else encode_labels(list(labels), names)
        return TextDataset(texts=texts, labels=y, label_names=names, source="<memory>")

    def _texts(self, texts) -> list[str]:
        """A list of texts, checked (a lone string and empty texts are refused)."""
        texts = check_texts(texts, "the given texts", allow_empty=self.allow_empty)
        return [str(t) for t in texts]

    def fit(self, texts, labels, valid=None, test=None) -> SpinClassifier:
        """Fits on texts/labels; valid and test are (texts, labels) pairs or TextDatasets."""
        train = texts if isinstance(texts, TextDataset) else self._dataset(texts, labels)
        if isinstance(texts, TextDataset):
            check_texts(train.texts, train.source, allow_empty=self.allow_empty)
        check_classes(train.labels, train.label_names)
        names = train.label_names
        if valid is None:
            tr, va = stratified_split(train.labels, self.valid_fraction, self.seed)
            train, valid = subset(train, tr), subset(train, va)
        else:
            valid = self._as_dataset(valid, names)
        test = None if test is None else self._as_dataset(test, names)
        with spill_folder(self.work_dir) as spill:  # features over the host budget
            feats = [
                self._extract(ds, name, spill)
                for ds, name in ((train, "train"), (valid, "valid"), (test, "test"))
                if ds is not None
            ]
            return self.fit_features(*feats)

    def _as_dataset(self, data, names) -> TextDataset:
        if isinstance(data, TextDataset):
            check_texts(data.texts, data.source, allow_empty=self.allow_empty)
            return data
        return self._dataset(data[0], data[1], names)

    def _extract(self, ds: TextDataset, name: str, spill=None):
        """A store in work_dir, or features in memory: on the accelerator when they fit
        its budget (extract's placement "auto"), so the probes read them without a host
        round trip, else on the host; over the host budget, a store in `spill`."""
        out = None if self.work_dir is None else Path(self.work_dir) / f"features-{name}"
        spill = None if spill is None else spill / f"features-{name}"
        stage(f"{name}: tokenising and extracting {len(ds.texts)} texts", self.progress)
        return extract(
            self.model,
            ds,
            out,
            dtype=self.feature_dtype,
            max_length=self.max_length,
            token_budget=self.token_budget,
            progress=self.progress,
            spill_dir=spill,
            **self.budgets,
        )

    def fit_features(self, train, valid, test=None) -> SpinClassifier:
        """Fits on already-extracted feature sources (FeatureStore, MemoryFeatures or
        DeviceFeatures)."""
        for src in (train, valid, test):
            if src is not None:
                check_features(src, self.model)
        self.label_names = tuple(train.label_names) if train.label_names else None
        valid = align_labels(valid, self.label_names, "validation")
        test = None if test is None else align_labels(test, self.label_names, "test")
        head_fn = head_baseline(self.model, self.label_names) if self.model.head else None
        self.head, self.report = fit_spin(
            train,
            valid,
            test,
            self.options,
            head_fn=head_fn,
            progress=self.progress,
            checkpoint_dir=None if self.work_dir is None else Path(self.work_dir) / "probes",
        )
        return self

    # -- inference

    def _check_fitted(self):
        if self.head is None:
            raise NotFittedError(
                "this SpinClassifier is not fitted yet; call fit(texts, labels) first, or "
                "SpinClassifier.load(folder) for a saved one."
            )

    def decision_function(self, X) -> np.ndarray:
        """Logits [N, K] of texts (running only the first k blocks and reading only kept
        neurons) or of a feature source (FeatureStore / MemoryFeatures / DeviceFeatures, full
        or selective)."""
        self._check_fitted()
        if is_source(X):
            order = selection_order(self.head)  # the device program's column order
            x = jnp.asarray(self._source_features(X)[:, order])
            return np.asarray(inference.head_apply(x, selection(self.head)))
        (logits,) = inference.heads_logits(
            self.model, [self.head], self._texts(X), **self._batching
        )
        return logits

    def features(self, X) -> np.ndarray:
        """The kept neurons [N, M], standardised, in the head's column order.

        Selective extraction: only the first k blocks run and only these M values leave the
        device, so a test split or new data costs what the classifier needs. From a feature
        source, the head's columns are read (in blocks of rows) and standardised.
        """
        self._check_fitted()
        if is_source(X):
            return np.asarray(self._source_features(X))
        x = inference.kept_features(self.model, self.head, self._texts(X), **self._batching)
        return x[:, np.argsort(selection_order(self.head), kind="stable")]

    def _source_features(self, src):
        """features(src): numpy, or a jax Array from a source on the device (kept there)."""
        self._check_fitted()
        check_source(src, self.model, self.head)
        if src.manifest.get("max_length", self.max_length) != self.max_length:
            log.warning(
                "features were tokenized to max_length %s, this classifier reads %s tokens: "
                "long texts will be scored differently than from their text.",
                src.manifest["max_length"],
                self.max_length,
            )
        h, out = self.head, np.empty((src.n_rows, len(self.head.rep)), np.float32)
        block = max(1, (1 << 24) // max(1, len(h.rep)))  # rows per read: ~64 MB of float32
        on_device = []  # blocks read from a DeviceFeatures, joined on the device
        for start in range(0, src.n_rows, block):
            rows = np.arange(start, min(start + block, src.n_rows))
            if is_selective(src):
                x = standardize_columns(read_head_columns(src, h, rows), h.mean, h.std)
            else:
                x = h.features(src, rows)
            if isinstance(x, jax.Array):
                on_device.append(x)
            else:
                out[rows] = x
        return jnp.concatenate(on_device) if on_device else out

    def extract_kept(self, data, out=None, **options):
        """Extracts only what this classifier reads, to pass to decision_function & co.

        Its kept (rep, layer, neuron) columns at the poolings it uses, running blocks up to
        its deepest kept layer (head.num_layers); a FeatureStore at `out`, else features in
        memory where extract's `placement` puts them (MemoryFeatures or DeviceFeatures).
        Options as extract's; dtype defaults to float32 (the columns are few, and the logits
        then match decision_function(texts) to float rounding), max_length and
        token_budget to the classifier's.
        """
        self._check_fitted()
        fixed = sorted({"neurons", "num_layers", "poolings"} & set(options))
        if fixed:
            raise SpinError(f"extract_kept takes {fixed} from the classifier; drop them.")
        if len(self.head.rep) == 0:
            raise SpinError("this classifier keeps no neuron (its logits are the intercept).")
        options = {
            "dtype": "float32",
            "max_length": self.max_length,
            "token_budget": self.token_budget,
            "progress": self.progress,
            "allow_empty": self.allow_empty,
            **options,
        }
        neurons, poolings = neurons_of(self.head), poolings_of(self.head)
        return extract(self.model, data, out, neurons=neurons, poolings=poolings, **options)

    @property
    def _batching(self) -> dict:
        """How inference runs texts: their max_length and the batches' token budget."""
        return {"max_length": self.max_length, "token_budget": self.token_budget}

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities [N, K] of texts or of a feature source."""
        return _proba(self.decision_function(X))

    def predict(self, X) -> list:
        return self._predicted(self.predict_proba(X))

    def _predicted(self, proba: np.ndarray) -> list:
        """The labels of the most probable classes (class ids without label names)."""
        idx = np.argmax(proba, axis=-1)
        return [self.label_names[i] for i in idx] if self.label_names else idx.tolist()

    def score(self, X, labels=None, metric: str = "accuracy") -> float:
        """`metric` on texts and labels, or on a feature source and (by default) its labels."""
        self._check_fitted()
        if is_source(X):
            y = labels_of(X, self.label_names) if labels is None else self._labels(X, labels)
        else:
            y = self._dataset(X, labels, self.label_names).labels
        pred = np.argmax(self.predict_proba(X), axis=-1)
        n_classes = len(self.label_names or [0, 1])
        return float(score(metric, jnp.asarray(y), jnp.asarray(pred), n_classes))

    def _labels(self, src, labels) -> np.ndarray:
        from spin_jax.data import encode_labels

        if len(labels) != src.n_rows:
            raise SpinError(f"{src.n_rows} rows but {len(labels)} labels; pass one per row.")
        return encode_labels(list(labels), self.label_names)[0]

    def explain(self, text: str) -> Explanation:
        """Each token's additive share of each class's logit (spin_jax/explain.py).

        Shares and bias are centred over the classes (a binary head's one logit z becomes
        [-z/2, z/2]), so softmax(bias + shares.sum(0)) is predict_proba([text])[0].
        """
        self._check_fitted()
        if not isinstance(text, str):
            raise TypeError(f"explain takes one text (a str), got {type(text).__name__}.")
        if not text.strip():
            raise DataError("explain: the text is empty; pass a text with words in it.")
        ids, truncated = encode(self.model.tokenizer, [text], self.max_length)
        warn_truncated(truncated, 1, self.max_length)
        b_ids, b_mask = pad_batch(ids, len(ids[0]))
        shares = inference.token_shares(self.model, self.head, b_ids, b_mask)
        shares, bias = _centred(shares[0]), _centred(self.head.intercept)
        z = bias + shares.sum(0)
        proba = np.exp(z - z.max())
        return Explanation(
            tokens=self.model.tokenizer.convert_ids_to_tokens(ids[0].tolist()),
            shares=shares,
            bias=bias,
            proba=proba / proba.sum(),
        )

    # -- persistence

    def save(self, out) -> Path:
        """Writes classifier.safetensors + classifier.json + report.json (spin_jax/artifact.py)."""
        self._check_fitted()
        return artifact.write(
            out,
            head=self.head,
            label_names=self.label_names,
            report=self.report,
            model=self.model,
            max_length=self.max_length,
        )

    @classmethod
    def load(
        cls,
        path,
        model: str | Model | None = None,
        *,
        allow_empty: bool = False,
        compilation_cache: bool = True,
    ) -> SpinClassifier:
        """Loads a saved classifier; checks format, version, the sha256 of every file and
        of classifier.json itself, the arrays against it, and the model."""
        if compilation_cache:
            enable_compilation_cache()  # before the model's first compile
        meta, head, report, model = artifact.read(path, model)
        clf = cls(
            model,
            max_length=meta["tokenizer"]["max_length"],
            allow_empty=allow_empty,
            compilation_cache=compilation_cache,
        )
        clf.head, clf.report = head, report
        clf.label_names = tuple(meta["label_names"]) if meta["label_names"] else None
        return clf


# ---- several classifiers, one forward ----------------------------------------------------

MODEL_IDENTITY = ("config_hash", "params_fingerprint")  # as artifact.check_model compares


def decision_function_many(classifiers, X) -> list[np.ndarray]:
    """Each classifier's logits [N, K] of X, one array per classifier.

    From texts, the model's forward runs once per batch, to the deepest layer any of the
    classifiers needs, and each head reads its own kept neurons from it; from a feature
    source, each classifier reads its own columns. The classifiers must be fitted on one
    model (its config and weights) and read texts to the same max_length.
    """
    classifiers = list(classifiers)
    _check_classifiers(classifiers)
    if is_source(X):
        return [clf.decision_function(X) for clf in classifiers]
    allow_empty = all(clf.allow_empty for clf in classifiers)
    texts = [str(t) for t in check_texts(X, "the given texts", allow_empty=allow_empty)]
    first = classifiers[0]
    return inference.heads_logits(
        first.model,
        [clf.head for clf in classifiers],
        texts,
        max_length=first.max_length,
        token_budget=min(clf.token_budget for clf in classifiers),
    )


def predict_proba_many(classifiers, X) -> list[np.ndarray]:
    """Each classifier's class probabilities [N, K] of X, from one forward over texts."""
    return [_proba(z) for z in decision_function_many(classifiers, X)]


def predict_many(classifiers, X) -> list[list]:
    """Each classifier's predicted labels for X (as SpinClassifier.predict), one list per
    classifier, from one forward over texts (decision_function_many)."""
    classifiers = list(classifiers)
    probas = predict_proba_many(classifiers, X)
    return [clf._predicted(p) for clf, p in zip(classifiers, probas, strict=True)]


def load_many(paths, model: str | Model | None = None, *, allow_empty: bool = False):
    """Classifiers saved from one model, loaded onto one copy of it (`model`, by default
    the one the first recorded at fit time); refused before any model loads when they were
    fitted on different models (their classifier.json says)."""
    paths = [Path(p) for p in paths]
    metas = [artifact.read_meta(p) for p in paths]
    _check_one_forward(
        [
            (p.name, {**m["model"], "max_length": m["tokenizer"]["max_length"]})
            for p, m in zip(paths, metas, strict=True)
        ]
    )
    first = SpinClassifier.load(paths[0], model, allow_empty=allow_empty)
    rest = [SpinClassifier.load(p, first.model, allow_empty=allow_empty) for p in paths[1:]]
    return [first, *rest]


def _check_classifiers(classifiers: list[SpinClassifier]) -> None:
    """_check_one_forward of fitted classifiers. One Model object is one model without
    hashing its weights (params_fingerprint reads every weight onto the host): only models
    held as distinct objects are compared by config_hash and params_fingerprint."""
    if not classifiers:
        raise SpinError("no classifiers given; pass at least one fitted classifier.")
    for clf in classifiers:
        clf._check_fitted()
    models = list({id(clf.model): clf.model for clf in classifiers}.values())
    identity = {id(m): {"source": m.source} for m in models}
    if len(models) > 1:
        for m in models:
            identity[id(m)].update(config_hash=m.config_hash, params_fingerprint=m.fingerprint)
    _check_one_forward(
        [
            (f"classifier {i + 1}", {**identity[id(clf.model)], "max_length": clf.max_length})
            for i, clf in enumerate(classifiers)
        ]
    )


def _check_one_forward(named: list[tuple[str, dict]]) -> None:
    """Refuses classifiers that cannot share one forward: `named` holds (name, identity),
    the identity being the model's source, config_hash and params_fingerprint (as a saved
    classifier records them) and the max_length its texts are read to."""
    if not named:
        raise SpinError("no classifiers given; pass at least one saved classifier.")
    name0, first = named[0]
    for name, other in named[1:]:
        changed = [k for k in MODEL_IDENTITY if other.get(k) != first.get(k)]
        if changed:
            key = changed[0]
            raise SpinError(
                f"{name} was fitted on model {other.get('source')!r} ({key} {other.get(key)}), "
                f"{name0} on {first.get('source')!r} ({key} {first.get(key)}): one forward "
                "cannot serve both. Predict with each separately, or pass classifiers fitted "
                "on the same model."
            )
        if other["max_length"] != first["max_length"]:
            raise SpinError(
                f"{name} reads texts to max_length {other['max_length']}, {name0} to "
                f"{first['max_length']}: one forward reads one tokenisation. Predict with "
                "each separately, or fit them with the same max_length."
            )
