"""A model folder's tokenizer.json read with the `tokenizers` library alone.

transformers' AutoTokenizer imports torch when torch is installed: about 10 s of a CLI call
that predicts five rows. For the families spin_jax runs, the folder's tokenizer.json (which
HF's fast tokenizers write and read) holds the whole pipeline, so `FastTokenizer` reads it
directly and answers the part of the HF tokenizer API that spin_jax uses, with the same
ids, offsets, tokens and special tokens (tests/test_tokenizer.py checks each against
AutoTokenizer). Other folders still load through AutoTokenizer (model.load_tokenizer).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# model types whose HF tokenizer is tokenizer.json and nothing more (tested)
FAMILIES = ("gpt2", "bert", "roberta", "distilbert", "t5")
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
NAMED = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
UNLIMITED = int(1e30)  # HF's VERY_LARGE_INTEGER: no model_max_length given


def can_read(folder: Path, model_type: str) -> bool:
    return model_type in FAMILIES and (folder / "tokenizer.json").is_file()


class FastTokenizer:
    """tokenizer.json through `tokenizers`, with HF's names for what spin_jax reads."""

    is_fast = True
    padding_side = "right"

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.name_or_path = str(folder)
        self.backend = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        # The call says how to truncate and pad (spin_jax pads itself), as HF's does.
        self.backend.no_truncation()
        self.backend.no_padding()
        config = _special_config(self.folder)
        self.model_max_length = int(config.get("model_max_length") or UNLIMITED)
        for name in NAMED:
            setattr(self, f"{name}_token", _content(config.get(f"{name}_token")))
        if self.pad_token is None:  # GPT-2 has none; padded positions are masked anyway
            self.pad_token = self.eos_token or self.unk_token
        added = self.backend.get_added_tokens_decoder()
        self.all_special_ids = sorted(i for i, t in added.items() if t.special)

    def __getattr__(self, name: str):
        """bos_token_id ... mask_token_id: the id of the named token, or None."""
        if name.endswith("_token_id") and name[: -len("_token_id")] in NAMED:
            token = self.__dict__.get(name[: -len("_id")])
            return None if token is None else self.backend.token_to_id(token)
        raise AttributeError(name)

    def __call__(
        self,
        text,
        *,
        add_special_tokens: bool = True,
        truncation: bool = False,
        max_length: int | None = None,
        verbose: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
    ) -> dict:
        """HF's encoding of one text or a list of texts: input_ids, attention_mask, and
        on request special_tokens_mask and offset_mapping; truncation=True cuts each to
        max_length (default model_max_length) tokens, special tokens included."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if truncation:
            self.backend.enable_truncation(max_length or self.model_max_length)
        try:
            encs = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        finally:
            self.backend.no_truncation()
        out = {
            "input_ids": [e.ids for e in encs],
            "attention_mask": [e.attention_mask for e in encs],
        }
        if return_special_tokens_mask:
            out["special_tokens_mask"] = [e.special_tokens_mask for e in encs]
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encs]
        return {k: v[0] for k, v in out.items()} if single else out

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.backend.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_string(self, tokens) -> str:
        decoder = self.backend.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    def save_pretrained(self, out: str) -> None:
        for name in FILES:
            if (self.folder / name).is_file():
                shutil.copyfile(self.folder / name, Path(out) / name)


def _special_config(folder: Path) -> dict:
    """special_tokens_map.json's tokens, then tokenizer_config.json's over them (HF writes
    both with the same tokens; where they differ, the config wins)."""
    config = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = folder / name
        if f.is_file():
            config.update({k: v for k, v in json.loads(f.read_text()).items() if v is not None})
    return config


def _content(token) -> str | None:
    """A special token as tokenizer_config writes it: a string, or {"content": ...}."""
    return token.get("content") if isinstance(token, dict) else token
