"""Loading models (HF folder, hub id, or our converted checkpoint) and running them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import tokenizer
from spin_jax._version import __version__
from spin_jax.models import config_from_hf, forward_params
from spin_jax.models.layers import ConfigError, Features, Params, WeightsError, cast_params
from spin_jax.progress import stage

CHECKPOINT_FORMAT = 2  # 2: GPT-2's c_attn stored as q, k, v
CHECKPOINT_META = "spin_jax_model.json"
_HUB_FILES = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "spiece.model",
]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class Model:
    """A frozen transformer: config (hashable), parameters (pytree) and tokenizer."""

    config: Any
    params: Params
    tokenizer: Any
    hf_config: dict
    source: str
    revision: str | None = None
    head: tuple[str, Params] | None = None  # a fine-tuned classification head, if any
    dtype: str = "float32"

    @property
    def config_hash(self) -> str:
        return config_hash(self.hf_config)

    @property
    def fingerprint(self) -> str:
        return params_fingerprint(self.params)


def config_hash(hf_config: dict) -> str:
    keep = {
        k: v for k, v in hf_config.items() if not k.startswith("_") and k != "transformers_version"
    }
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def params_fingerprint(params: Params) -> str:
    """A cheap content hash of the weights: every leaf's path, shape and a strided sample."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        a = np.asarray(leaf, np.float32).ravel()
        step = max(1, a.size // 4096)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(leaf.shape).encode())
        h.update(np.ascontiguousarray(a[::step]).tobytes())
    return h.hexdigest()[:16]


def forward(
    model: Model,
    input_ids,
    attention_mask,
    *,
    pooled: bool = True,
    num_layers: int | None = None,
    **kwargs,
) -> Features:
    """Every layer's hidden states and FFN activations, pooled ([L+1,B,P,D], [L,B,P,F]).

    pooled=False returns per-token activations; num_layers=k runs only the first k blocks.
    """
    return forward_params(
        model.config,
        model.params,
        input_ids,
        attention_mask,
        pooled=pooled,
        num_layers=num_layers,
        **kwargs,
    )


def _resolve(name_or_path: str, revision: str | None) -> Path:
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{path} is a file; pass the model folder that holds config.json.")
        return path
    if not _looks_like_hub_id(str(name_or_path)):
        raise ConfigError(
            f"no such model folder: {name_or_path} does not exist. Check the path (a model "
            "folder holds config.json), or pass a Hugging Face hub id such as gpt2."
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, revision=revision, allow_patterns=_HUB_FILES))
    except Exception as e:
        raise ConfigError(
            f"{name_or_path!r} is not a local folder, and fetching it from the HF hub failed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Pass a local "
            "model folder (save_pretrained output), or, with network access, unset "
            "HF_HUB_OFFLINE."
        ) from None


def _looks_like_hub_id(name: str) -> bool:
    """ "gpt2" or "owner/name": at most one slash, no path-like start, hub characters only."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", ""):
        return False
    return all(c.isalnum() or c in "-_./" for c in name) and not name.endswith("/")


def load_tokenizer(folder: Path, model_type: str):
    """The folder's tokenizer: its tokenizer.json read directly (spin_jax.tokenizer: no
    torch import) for the families tested that way, else transformers' AutoTokenizer."""
    if tokenizer.can_read(folder, model_type):
        try:
            return tokenizer.FastTokenizer(folder)
        except Exception as e:
            raise ConfigError(f"no usable tokenizer in {folder}: {e}") from None
    from transformers import AutoTokenizer

    if (
        not any(folder.glob("tokenizer*"))
        and not any(folder.glob("vocab*"))
        and not (folder / "spiece.model").exists()
    ):
        return None  # e.g. a bare save_pretrained of a model; encode() says what to do
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise ConfigError(f"no usable tokenizer in {folder}: {e}") from None
    tok.padding_side = "right"
    if tok.pad_token is None:  # GPT-2 has none; padded positions are masked anyway
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def read_hf_config(folder: Path) -> dict:
    f = folder / "config.json"
    if not f.exists():
        raise ConfigError(f"{folder} has no config.json; is it an HF model folder?")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{f} is not valid JSON ({e}).") from None


def _apply_options(config, options: dict):
    if options:
        try:
            config = dataclasses.replace(config, **options)
        except TypeError as e:
            raise ConfigError(f"unsupported model option for {config.model_type}: {e}") from None
        if hasattr(config, "__post_init__"):
            config.__post_init__()
    return config


def load_model(
    name_or_path: str,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    progress: bool = False,
    **options,
) -> Model:
    """Loads an HF model folder, an HF hub id, or a folder written by `save_model`.

    Extra keyword options set config fields (e.g. T5's mode="encoder"). progress=True says
    on stderr that the weights are loading, once the folder and its config are checked.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; choose one of {sorted(DTYPES)}.")
    folder = _resolve(name_or_path, revision)
    if (folder / CHECKPOINT_META).exists():
        stage(f"loading the converted model in {folder}", progress)
        return _load_converted(folder, dtype, options)
    from weights_convert import convert

    hf_config = read_hf_config(folder)
    config = _apply_options(config_from_hf(hf_config), options)
    stage(f"loading and converting the {config.model_type} weights in {folder}", progress)
    params, head = convert(config, folder)
    return Model(
        config,
        cast_params(params, DTYPES[dtype]),
        load_tokenizer(folder, config.model_type),
        hf_config,
        str(name_or_path),
        revision,
        _head_to_jax(head),
        dtype,
    )


def from_transformers(hf_model, tokenizer=None, *, dtype: str = "float32", **options) -> Model:
    """Converts a live `transformers` model (e.g. one built in a test)."""
    from weights_convert import convert

    hf_config = hf_model.config.to_dict()
    config = _apply_options(config_from_hf(hf_config), options)
    params, head = convert(config, hf_model)
    return Model(
        config,
        cast_params(params, DTYPES[dtype]),
        tokenizer,
        hf_config,
        getattr(hf_model, "name_or_path", "") or type(hf_model).__name__,
        None,
        _head_to_jax(head),
        dtype,
    )


def _head_to_jax(head):
    if head is None:
        return None
    kind, p = head
    return kind, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), p)


def save_model(model: Model, out: str | os.PathLike) -> Path:
    """Writes params (and any head) with orbax-checkpoint, plus config, tokenizer and hashes."""
    import orbax.checkpoint as ocp

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tree = {"params": model.params}
    if model.head is not None:
        tree["head"] = model.head[1]
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(out / "params", tree, force=True)
    ckpt.wait_until_finished()
    (out / "config.json").write_text(json.dumps(model.hf_config, indent=2, default=str))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out))
    meta = {
        "format_version": CHECKPOINT_FORMAT,
        "spin_jax_version": __version__,
        "source": model.source,
        "revision": model.revision,
        "dtype": model.dtype,
        "model_type": model.config.model_type,
        "config_hash": model.config_hash,
        "params_fingerprint": model.fingerprint,
        "head_kind": model.head[0] if model.head else None,
    }
    (out / CHECKPOINT_META).write_text(json.dumps(meta, indent=2))
    return out


def _load_converted(folder: Path, dtype: str, options: dict) -> Model:
    import orbax.checkpoint as ocp

    from spin_jax.models import param_shapes

    meta = json.loads((folder / CHECKPOINT_META).read_text())
    if meta.get("format_version") != CHECKPOINT_FORMAT:
        raise WeightsError(
            f"{folder} was written in checkpoint format {meta.get('format_version')}, this "
            f"spin_jax reads format {CHECKPOINT_FORMAT}; re-run `spin-jax convert`."
        )
    hf_config = read_hf_config(folder)
    if config_hash(hf_config) != meta["config_hash"]:
        raise WeightsError(f"{folder}/config.json does not match the checkpoint's config hash.")
    config = _apply_options(config_from_hf(hf_config), options)
    tree = ocp.StandardCheckpointer().restore(folder.resolve() / "params")
    params = tree["params"]
    from weights_convert import check_shapes

    check_shapes(config, jax.tree.map(np.asarray, params))
    del param_shapes
    if params_fingerprint(params) != meta["params_fingerprint"]:
        raise WeightsError(
            f"{folder}: weights do not match their recorded fingerprint "
            "(corrupted or modified); re-run `spin-jax convert`."
        )
    head = (meta["head_kind"], tree["head"]) if meta.get("head_kind") else None
    return Model(
        config,
        cast_params(params, DTYPES[dtype]),
        load_tokenizer(folder, config.model_type),
        hf_config,
        meta["source"],
        meta.get("revision"),
        _head_to_jax(head),
        dtype,
    )


def head_logits(model: Model, token_features: jax.Array) -> jax.Array:
    """Logits of the checkpoint's own classification head from last-layer token features.

    token_features [B, D] is the last hidden layer's "token" pooling ([CLS] / last token).
    """
    if model.head is None:
        raise ConfigError(
            f"{model.source} has no classification head (not a fine-tuned "
            "*ForSequenceClassification checkpoint)."
        )
    kind, p = model.head
    from spin_jax.models.layers import dense

    x = token_features.astype(jnp.float32)
    if kind in ("bert", "roberta", "t5"):
        x = jnp.tanh(dense(x, p["dense"]))
    elif kind == "distilbert":
        x = jax.nn.relu(dense(x, p["dense"]))
    return dense(x, p["out"])
