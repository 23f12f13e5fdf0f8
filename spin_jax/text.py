"""Tokenisation to unpadded id lists, and right-padding into fixed shapes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def max_length_of(model) -> int:
    """Longest input the model takes: its position table, else the tokenizer's limit."""
    limit = model.config.max_positions
    tok_limit = getattr(model.tokenizer, "model_max_length", None) or 0
    if limit is None:
        limit = tok_limit if 0 < tok_limit < 100_000 else 512
    return int(limit)


def _fallback_id(tok) -> int:
    for name in ("eos_token_id", "bos_token_id", "cls_token_id", "unk_token_id", "pad_token_id"):
        i = getattr(tok, name, None)
        if i is not None:
            return int(i)
    return 0


def encode(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list[np.ndarray], int]:
    """Token ids per text (with the model's special tokens), truncated to max_length.

    Returns (ids, n_truncated). An empty text still gets one token (GPT-2 gives it none),
    so every row has a valid, non-NaN feature.
    """
    ids, truncated = encode_rows(tokenizer, texts, max_length)
    return ids, int(truncated.sum())


def encode_rows(tokenizer, texts: Sequence[str], max_length: int):
    """encode's ids, and a bool per text: was it truncated."""
    if tokenizer is None:
        raise ValueError(
            "this model folder has no tokenizer files; copy the tokenizer of its base model "
            "into the folder (tokenizer.save_pretrained(folder))."
        )
    # verbose=False: HF's own "longer than the maximum" warning would repeat ours
    # (extraction.warn_truncated) with a count of one text.
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
    out, truncated = [], np.zeros(len(texts), bool)
    fallback = _fallback_id(tokenizer)
    for row, ids in enumerate(enc["input_ids"]):
        if len(ids) > max_length:
            truncated[row] = True
            ids = _truncate(tokenizer, ids, max_length)
        out.append(np.asarray(ids if len(ids) else [fallback], np.int32))
    return out, truncated


def _truncate(tok, ids: list[int], n: int) -> list[int]:
    """Keeps the first n tokens, but keeps a trailing special token ([SEP], </s>) last."""
    last = ids[-1]
    if last in set(tok.all_special_ids) and n > 1:
        return ids[: n - 1] + [last]
    return ids[:n]


def pad_batch(ids: Sequence[np.ndarray], length: int, pad_id: int = 0):
    """Right-pads id arrays into [B, length] ids and a 0/1 mask."""
    out = np.full((len(ids), length), pad_id, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for i, row in enumerate(ids):
        out[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return out, mask
