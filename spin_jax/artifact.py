"""The saved classifier: classifier.safetensors + classifier.json + report.json.

classifier.json records the model (source, config hash, weight fingerprint), the tokenizer
settings, the head's layers, neurons and labels, the versions, the sha256 of the other two
files, and a sha256 of its own content (meta_sha256). Loading checks all of it, so a changed
byte anywhere is refused; nothing is pickled and no code runs on load.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from spin_jax._version import __version__
from spin_jax.errors import ArtifactError, ConfigError
from spin_jax.files import sha256_file, write_json_atomic
from spin_jax.head import SpinHead
from spin_jax.model import Model, load_model

FORMAT_VERSION = 1
WEIGHTS_FILE = "classifier.safetensors"
META_FILE = "classifier.json"
REPORT_FILE = "report.json"
INT_ARRAYS = ("rep", "pool", "layer", "neuron")
FLOAT_ARRAYS = ("mean", "std", "weights", "intercept")


def write(out, *, head: SpinHead, label_names, report: dict, model: Model, max_length: int):
    """Writes the three files, each under a temporary name renamed when complete; the
    weights are renamed last but one, classifier.json (whose presence marks a run) last."""
    from safetensors.numpy import save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(getattr(head, k), np.int32) for k in INT_ARRAYS}
    arrays.update({k: np.ascontiguousarray(getattr(head, k), np.float32) for k in FLOAT_ARRAYS})
    tmp = out / f".{WEIGHTS_FILE}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:  # open(), not save_file: the umask's mode (save_file: 0600)
        f.write(save(arrays))
        f.flush()
        os.fsync(f.fileno())
    write_json_atomic(out / REPORT_FILE, report)
    meta = _meta(head, label_names, report, model, max_length)
    meta.update(weights_sha256=sha256_file(tmp), report_sha256=sha256_file(out / REPORT_FILE))
    os.replace(tmp, out / WEIGHTS_FILE)
    write_json_atomic(out / META_FILE, {**meta, "meta_sha256": meta_sha256(meta)})
    return out


def _meta(head: SpinHead, label_names, report: dict, model: Model, max_length: int) -> dict:
    tok = model.tokenizer
    return {
        "format": "spin_jax.classifier",
        "format_version": FORMAT_VERSION,
        "spin_jax_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "model": {
            "source": model.source,
            "revision": model.revision,
            "model_type": model.config.model_type,
            "config_hash": model.config_hash,
            "params_fingerprint": model.fingerprint,
            "dtype": model.dtype,
        },
        "tokenizer": {
            "class": type(tok).__name__,
            "name": getattr(tok, "name_or_path", ""),
            "max_length": max_length,
        },
        "num_layers": head.num_layers,
        "n_neurons": int(len(head.rep)),
        "label_names": list(label_names) if label_names else None,
        "metric": report.get("metric"),
        "chosen": report.get("chosen"),
        "weights_file": WEIGHTS_FILE,
    }


def read(path, model: str | Model | None = None):
    """(meta, head, report, model) of a saved classifier, every file checked; `model`
    defaults to the one recorded at fit time."""
    path = Path(path)
    meta = read_meta(path)
    arrays = _read_weights(path, meta)
    check_arrays(arrays, meta, path)
    report = _read_report(path, meta)
    model = model if isinstance(model, Model) else _fitted_model(model, meta)
    check_model(meta, model)
    head = SpinHead(
        **{k: arrays[k] for k in INT_ARRAYS + FLOAT_ARRAYS}, num_layers=int(meta["num_layers"])
    )
    return meta, head, report, model


def meta_sha256(meta: dict) -> str:
    """sha256 of classifier.json's content without its own hash field (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _fitted_model(model: str | None, meta: dict) -> Model:
    """The model given, else the one recorded at fit time, saying how to point elsewhere."""
    if model is not None:
        return load_model(model)
    source = meta["model"]["source"]
    try:
        return load_model(source)
    except ConfigError as e:
        raise ConfigError(
            f"this classifier was fitted on model {source!r}, which cannot be loaded now "
            f"({e}). If the model moved, pass its new location as the model.",
            cli_hint="--model PATH",
        ) from None


def _checked_file(path: Path, name: str, meta: dict, digest_key: str) -> Path:
    """`path / name`, present and with the sha256 that classifier.json records for it."""
    f = path / name
    if not f.exists():
        raise ArtifactError(f"{f} is missing; the classifier folder is incomplete.")
    if sha256_file(f) != meta.get(digest_key):
        raise ArtifactError(
            f"{f} does not match the sha256 recorded in {META_FILE}: it was modified or "
            "damaged. Restore the folder, or re-fit."
        )
    return f


def _read_report(path: Path, meta: dict) -> dict:
    return json.loads(_checked_file(path, REPORT_FILE, meta, "report_sha256").read_text())


def check_arrays(arrays: dict, meta: dict, path: Path) -> None:
    """The weights agree with classifier.json (both hashed; this catches a bug, or files of
    two runs put together)."""
    n, k = len(arrays["rep"]), int(meta["num_layers"])
    names = meta["label_names"]
    n_out = arrays["weights"].shape[1] if arrays["weights"].ndim == 2 else -1
    if n != meta.get("n_neurons") or (n and int(arrays["layer"].max()) > k):
        raise ArtifactError(f"{path}: the weights do not fit classifier.json's layers and neurons.")
    if names is not None and n_out != (1 if len(names) == 2 else len(names)):
        raise ArtifactError(f"{path}: the head has {n_out} outputs for {len(names)} labels.")


def read_meta(path: Path) -> dict:
    f = path / META_FILE
    if not path.is_dir():
        raise ArtifactError(f"no classifier at {path}: the folder does not exist.")
    if not f.exists() and (path / "features").is_dir():
        raise ArtifactError(
            f"the fit into {path} did not finish (no {META_FILE} yet, but its features "
            "are there): re-run the same fit command to resume it."
        )
    if not f.exists():
        raise ArtifactError(
            f"{path} holds no {META_FILE}: it is not a classifier folder (those are written "
            "by SpinClassifier.save, or by a fit into that folder)."
        )
    try:
        meta = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{f} is corrupted ({e}); re-run `spin-jax fit`.") from None
    if not isinstance(meta, dict) or meta.get("format") != "spin_jax.classifier":
        raise ArtifactError(f"{f} is not a spin_jax classifier.")
    if meta.get("format_version") != FORMAT_VERSION or _minor(
        meta.get("spin_jax_version", "")
    ) != _minor(__version__):
        raise ArtifactError(
            f"{path} was saved by spin_jax {meta.get('spin_jax_version')} (format "
            f"{meta.get('format_version')}); this is spin_jax {__version__} (format "
            f"{FORMAT_VERSION}). Re-fit it with this version, or install spin_jax=="
            f"{meta.get('spin_jax_version')}."
        )
    missing = [k for k in ("model", "tokenizer", "num_layers", "label_names") if k not in meta]
    if missing:
        raise ArtifactError(f"{f} lacks {missing}: it is damaged; re-run `spin-jax fit`.")
    if meta.get("meta_sha256") != meta_sha256(meta):
        raise ArtifactError(
            f"{f} does not match its own recorded sha256: it was edited or damaged. "
            "Restore the folder, or re-fit."
        )
    return meta


def _minor(version: str) -> str:
    return ".".join(str(version).split(".")[:2])


def _read_weights(path: Path, meta: dict) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    f = _checked_file(path, meta.get("weights_file", WEIGHTS_FILE), meta, "weights_sha256")
    try:
        arrays = load_file(str(f))
    except Exception as e:
        raise ArtifactError(f"{f} cannot be read ({e}).") from None
    need = {"rep", "pool", "layer", "neuron", "mean", "std", "weights", "intercept"}
    if need - set(arrays):
        raise ArtifactError(f"{f} lacks arrays {sorted(need - set(arrays))}.")
    return arrays


def check_model(meta: dict, model: Model) -> None:
    want = meta["model"]
    got = {"config_hash": model.config_hash, "params_fingerprint": model.fingerprint}
    for key, value in got.items():
        if want.get(key) != value:
            raise ArtifactError(
                f"this classifier was trained on model {want.get('source')!r} "
                f"({key} {want.get(key)}), but the model given has {key} {value}. Pass the "
                "same model.",
                cli_hint="--model PATH",
            )


