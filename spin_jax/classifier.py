"""SpinClassifier: fit on texts, predict with early exit, save as safetensors + JSON.

Inference takes texts (only the first k blocks run, only the kept neurons leave the device)
or a feature source already extracted (FeatureStore, MemoryFeatures or DeviceFeatures): a
full one, or a selective one holding the classifier's columns (`extract_kept`, `spin-jax extract
--classifier`), so a test split can be extracted once and scored many times.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import artifact
from spin_jax.artifact import WEIGHTS_FILE, meta_sha256  # noqa: F401 - re-exported
from spin_jax.cache import enable_compilation_cache
from spin_jax.columns import reciprocal, standardize_columns, take
from spin_jax.data import TextDataset, check_classes, check_texts, stratified_split, subset
from spin_jax.errors import ArtifactError, DataError, NotFittedError, SpinError  # noqa: F401
from spin_jax.explain import split_logits
from spin_jax.extraction import (
    TOKEN_BUDGET,
    compiler_options,
    extract,
    plan_batches,
    warn_truncated,
)
from spin_jax.finetuned import head_baseline, head_label_order  # noqa: F401
from spin_jax.head import SpinHead
from spin_jax.learner import fit_spin
from spin_jax.model import Model, load_model
from spin_jax.models import _forward
from spin_jax.options import recipe_options, score
from spin_jax.selection import (
    is_selective,
    neurons_of,
    poolings_of,
    read_head_columns,
)
from spin_jax.sources import align_labels, check_features, check_source, is_source, labels_of
from spin_jax.text import encode, max_length_of, pad_batch

log = logging.getLogger("spin_jax")


# ---- the device program of inference -----------------------------------------------------


@functools.cache
def _program(fn):
    """`fn(config, k, params, sel, ids, mask)` jitted, with the extraction program's XLA
    options (the forward is the same; extraction.compiler_options says why)."""
    return jax.jit(fn, static_argnums=(0, 1), compiler_options=compiler_options())


def _head_logits(config, k, params, sel, ids, mask):
    """Runs k blocks, reads only the kept neurons, applies the head: logits [B, K]."""
    return _head_apply(_kept_features(config, k, params, sel, ids, mask, pooled=True), sel)


def _kept_features(config, k, params, sel, ids, mask, *, pooled):
    """Kept neurons [B, M] (pooled) or [B, T, M] (per token), standardised."""
    f = _forward(config, k, pooled, True, (), params, ids, mask)
    # Per token, every pooling of a neuron is the token's value: [B, T, M]; pooled [B, M].
    x = take(f.hidden, f.ffn, sel, by_pool=pooled).astype(jnp.float32)
    return (x - sel["mean"]) * sel["inv_std"]  # as columns.standardize_columns


def _kept_pooled(config, k, params, sel, ids, mask):
    return _kept_features(config, k, params, sel, ids, mask, pooled=True)


def _head_apply(x, sel):
    return jnp.einsum("...M,MK->...K", x, sel["weights"]) + sel["intercept"]


_head_apply_jit = jax.jit(_head_apply)


def _token_shares(config, k, params, sel, ids, mask):
    """[B, T, K] each token's share of the head's logits (spin_jax/explain.py)."""
    x = _kept_features(config, k, params, sel, ids, mask, pooled=False)
    return split_logits(config, k, sel, x, mask)


def selection_order(head: SpinHead) -> np.ndarray:
    """Head columns in device order: hidden neurons first, then FFN neurons."""
    return head.columns().device_order()


def selection(head: SpinHead) -> dict[str, jax.Array]:
    """Device arrays that index the kept neurons (Columns.device_index), and the head's
    statistics and weights in that column order."""
    order = selection_order(head)
    return {
        **head.columns().device_index(),
        "mean": jnp.asarray(head.mean[order]),
        "inv_std": jnp.asarray(reciprocal(head.std[order])),
        "weights": jnp.asarray(head.weights[order], jnp.float32),
        "intercept": jnp.asarray(head.intercept, jnp.float32),
    }


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
        **options,
    ):
        if compilation_cache:
            enable_compilation_cache()  # spin_jax/cache.py; before the model's first compile
        self.options = recipe_options(recipe, options)  # checked before the model loads
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise SpinError(f"max_length {max_length!r}: pass a positive number of tokens.")
        self.model = model if isinstance(model, Model) else load_model(model)
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
        feats = [
            self._extract(ds, name)
            for ds, name in ((train, "train"), (valid, "valid"), (test, "test"))
            if ds is not None
        ]
        return self.fit_features(*feats)

    def _as_dataset(self, data, names) -> TextDataset:
        if isinstance(data, TextDataset):
            check_texts(data.texts, data.source, allow_empty=self.allow_empty)
            return data
        return self._dataset(data[0], data[1], names)

    def _extract(self, ds: TextDataset, name: str):
        """A store in work_dir, or features in memory: on the accelerator when they fit
        (extract's placement "auto"), so the probes read them without a host round trip."""
        out = None if self.work_dir is None else Path(self.work_dir) / f"features-{name}"
        return extract(
            self.model,
            ds,
            out,
            dtype=self.feature_dtype,
            max_length=self.max_length,
            token_budget=self.token_budget,
            progress=self.progress,
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
            return np.asarray(_head_apply_jit(x, selection(self.head)))
        return self._run(_head_logits, X, self.head.weights.shape[1])

    def features(self, X) -> np.ndarray:
        """The kept neurons [N, M], standardised, in the head's column order.

        Selective extraction: only the first k blocks run and only these M values leave the
        device, so a test split or new data costs what the classifier needs. From a feature
        source, the head's columns are read (in blocks of rows) and standardised.
        """
        self._check_fitted()
        if is_source(X):
            return np.asarray(self._source_features(X))
        x = self._run(_kept_pooled, X, len(self.head.rep))
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

    def _run(self, program, texts, width: int) -> np.ndarray:
        """program(config, k, params, sel, ids, mask) -> [B, width] over length buckets."""
        self._check_fitted()
        program = _program(program)
        texts = self._texts(texts)
        out = np.empty((len(texts), width), np.float32)
        if not texts:
            return out
        ids, truncated = encode(self.model.tokenizer, texts, self.max_length)
        warn_truncated(truncated, len(texts), self.max_length)
        sel, k = selection(self.head), self.head.num_layers
        pad = int(getattr(self.model.tokenizer, "pad_token_id", None) or 0)
        lengths = np.array([len(i) for i in ids])
        pending = []  # dispatch every batch first: the device runs ahead of the host
        for rows, blen, size in plan_batches(lengths, self.max_length, self.token_budget):
            batch = [ids[r] for r in rows] + [np.array([pad], np.int32)] * (size - len(rows))
            b_ids, b_mask = pad_batch(batch, blen, pad)
            pending.append(
                (rows, program(self.model.config, k, self.model.params, sel, b_ids, b_mask))
            )
        for rows, result in pending:
            out[rows] = np.asarray(result)[: len(rows)]
        return out

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities [N, K] of texts or of a feature source."""
        return _proba(self.decision_function(X))

    def predict(self, X) -> list:
        idx = np.argmax(self.predict_proba(X), axis=-1)
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
        shares = _program(_token_shares)(
            self.model.config,
            self.head.num_layers,
            self.model.params,
            selection(self.head),
            b_ids,
            b_mask,
        )
        shares, bias = _centred(np.asarray(shares)[0]), _centred(self.head.intercept)
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


