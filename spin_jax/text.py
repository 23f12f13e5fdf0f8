"""Tokenisation to unpadded id lists, and right-padding into fixed shapes; for one text,
each token's character span in the original string (explanations)."""

from __future__ import annotations

import dataclasses
import unicodedata
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
    return [ids[i] for i in _kept_positions(tok, ids, n)]


def _kept_positions(tok, ids: list[int], n: int) -> list[int]:
    """The positions `_truncate` keeps of ids."""
    if len(ids) <= n:
        return list(range(len(ids)))
    if ids[-1] in set(tok.all_special_ids) and n > 1:
        return [*range(n - 1), len(ids) - 1]
    return list(range(n))


@dataclasses.dataclass
class TokenSpans:
    """One text's tokens as encode reads them, and where each comes from in the text."""

    ids: np.ndarray  # [T] int32, as encode([text])[0]
    tokens: list[str]  # the tokenizer's token strings
    spans: list[tuple[int, int]]  # text[start:end] is what the token covers ("" for none)
    special: list[bool]  # added by the tokenizer ([CLS], </s>, ...), covering no text
    truncated: bool  # the text had more tokens than max_length: its tail is not read
    n_tokens: int  # tokens of the whole text


def token_spans(tokenizer, text: str, max_length: int) -> TokenSpans:
    """encode's tokens of one text with each token's character span in `text`.

    Fast tokenizers report offsets; a token that is only a space marker (SentencePiece's
    lone "▁", a byte-level "Ġ" whose offsets were trimmed) is given the whitespace before
    it, so no token claims its neighbour's characters. Byte-level tokens of one character
    (an emoji split into bytes) share that character's span. Tokenizers without offsets are
    aligned by finding each token's text, case- and accent-folded, in order.
    """
    enc = tokenizer(
        text,
        add_special_tokens=True,
        truncation=False,
        verbose=False,
        return_special_tokens_mask=True,
        return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)),
    )
    ids = list(enc["input_ids"])
    tokens = tokenizer.convert_ids_to_tokens(ids)
    special = [bool(s) for s in enc["special_tokens_mask"]]
    if "offset_mapping" in enc:
        offsets = enc["offset_mapping"]
        spans = [_own_span(tokenizer, text, t, *o) for t, o in zip(tokens, offsets, strict=True)]
    else:
        spans = align_tokens(tokenizer, text, tokens, special)
    spans = [(0, 0) if sp else span for span, sp in zip(spans, special, strict=True)]
    keep = _kept_positions(tokenizer, ids, max_length)
    return TokenSpans(
        ids=np.asarray([ids[i] for i in keep], np.int32),
        tokens=[tokens[i] for i in keep],
        spans=[tuple(spans[i]) for i in keep],
        special=[special[i] for i in keep],
        truncated=len(ids) > max_length,
        n_tokens=len(ids),
    )


def _own_span(tokenizer, text: str, token: str, start: int, end: int) -> tuple[int, int]:
    """A token's offsets, a space marker's moved to the whitespace just before it."""
    if tokenizer.convert_tokens_to_string([token]).strip() or (
        end > start and not text[start:end].strip()
    ):
        return start, end
    first = start
    while first > 0 and text[first - 1].isspace():
        first -= 1
    return first, start


def _fold(text: str) -> tuple[str, list[int]]:
    """text casefolded and without accents, and for each of its characters the index of
    the original character it comes from."""
    out, where = [], []
    for i, ch in enumerate(text):
        for c in unicodedata.normalize("NFKD", ch.casefold()):
            if not unicodedata.combining(c):
                out.append(c)
                where.append(i)
    return "".join(out), where


def align_tokens(tokenizer, text: str, tokens: list[str], special: list[bool]):
    """Each token's span, found by its text (folded, WordPiece's "##" dropped) in order;
    (0, 0) for a special token, an empty span where a token's text is not found."""
    folded, where = _fold(text)
    spans, cursor = [], 0
    for token, is_special in zip(tokens, special, strict=True):
        if is_special:
            spans.append((0, 0))
            continue
        piece = _fold(tokenizer.convert_tokens_to_string([token]).strip().removeprefix("##"))[0]
        at = folded.find(piece, cursor) if piece else -1
        if at < 0:
            here = where[cursor] if cursor < len(where) else len(text)
            spans.append((here, here))
            continue
        spans.append((where[at], where[at + len(piece) - 1] + 1))
        cursor = at + len(piece)
    return spans


def pad_batch(ids: Sequence[np.ndarray], length: int, pad_id: int = 0):
    """Right-pads id arrays into [B, length] ids and a 0/1 mask."""
    out = np.full((len(ids), length), pad_id, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for i, row in enumerate(ids):
        out[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return out, mask
