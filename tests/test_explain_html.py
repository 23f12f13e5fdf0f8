"""Token spans (text.token_spans) for the tokenizer kinds the model families use, built here
from a small corpus (no hub): GPT-2's and RoBERTa's byte-level BPE, BERT's WordPiece (the
real MiniLM tokenizer) and T5's SentencePiece; the shares split by layer, which the
explanation pages' depth control sums."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spin_jax import inference
from spin_jax.explain_html import _layer_shares, _units
from spin_jax.text import _fold, align_tokens, encode, token_spans
from tests import hf_tiny

TEXTS = [
    "The plot was thin, but  the acting saved it.",
    "Naïve café owners don't SHOUT; they whisper 😀 (mostly).",
    "  leading spaces, tabs\tand\nnew lines  ",
]
CORPUS = TEXTS * 5 + ["great acting, terrible plot", "a film about a café in Paris"] * 5


def byte_level(tmp_path, cls: str):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer

    bpe = ByteLevelBPETokenizer()
    specials = ["<|endoftext|>", "<s>", "</s>", "<pad>", "<unk>", "<mask>"]
    bpe.train_from_iterator(CORPUS, vocab_size=320, min_frequency=1, special_tokens=specials)
    folder = tmp_path / cls
    folder.mkdir()
    bpe.save_model(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls}))
    return AutoTokenizer.from_pretrained(str(folder))


def sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from transformers import AutoTokenizer

    folder = tmp_path / "t5"
    folder.mkdir()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_prefix=str(folder / "spiece"),
        vocab_size=60,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    config = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module", params=["gpt2", "roberta", "bert", "t5"])
def tokenizer(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "gpt2":
        return byte_level(tmp, "GPT2Tokenizer")
    if request.param == "roberta":
        return byte_level(tmp, "RobertaTokenizer")
    if request.param == "t5":
        return sentencepiece(tmp)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_tiny.minilm_dir())


def surface(tok, tokens) -> str:
    """What tokens read as, folded (case, accents) and without WordPiece's ##."""
    return _fold(tok.convert_tokens_to_string(list(tokens)).replace("##", "").strip())[0]


@pytest.mark.parametrize("text", TEXTS)
def test_spans_give_back_each_tokens_text(tokenizer, text):
    spans = token_spans(tokenizer, text, 512)
    (ids,), _ = encode(tokenizer, [text], 512)
    np.testing.assert_array_equal(spans.ids, ids)  # the very tokens explain reads
    groups = {}
    for token, (s, e), special in zip(spans.tokens, spans.spans, spans.special, strict=True):
        assert 0 <= s <= e <= len(text)
        if special:
            assert s == e
        elif token != tokenizer.unk_token:
            groups.setdefault((s, e), []).append(token)
    for (s, e), tokens in groups.items():  # a character split into bytes: tokens share it
        assert surface(tokenizer, tokens) == _fold(text[s:e].strip())[0], (tokens, text[s:e])
    starts = [s for (s, e), sp in zip(spans.spans, spans.special, strict=True) if not sp]
    assert starts == sorted(starts)


def test_unknown_and_byte_tokens_cover_their_character(tokenizer):
    text = TEXTS[1]
    spans = token_spans(tokenizer, text, 512)
    emoji = text.index("😀")
    assert any(s <= emoji < e for s, e in spans.spans)  # the emoji is some token's


def test_truncated_spans_keep_the_trailing_special_token(tokenizer):
    spans = token_spans(tokenizer, TEXTS[0], 6)
    assert spans.truncated and len(spans.ids) == 6 and spans.n_tokens > 6
    (ids,), _ = encode(tokenizer, [TEXTS[0]], 6)
    np.testing.assert_array_equal(spans.ids, ids)


def test_alignment_without_offsets_finds_the_same_words():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_tiny.minilm_dir())
    text = "Naïve café owners don't SHOUT."
    spans = token_spans(tok, text, 512)
    aligned = align_tokens(tok, text, spans.tokens, spans.special)
    assert aligned == spans.spans


def test_overlapping_and_empty_spans_make_one_piece():
    record = {
        "tokens": [
            {"token": "[CLS]", "start": 0, "end": 0, "special": True},
            {"token": "Ġ", "start": 0, "end": 0, "special": False},
            {"token": "a", "start": 0, "end": 1, "special": False},
            {"token": "ð", "start": 2, "end": 3, "special": False},
            {"token": "Ł", "start": 2, "end": 3, "special": False},
        ]
    }
    assert _units(record) == [(0, 1, [1, 2]), (2, 3, [3, 4])]


@pytest.mark.torch
@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_shares_by_layer_sum_to_the_shares(name):
    import spin_jax
    from tests.test_explain import random_head
    from tests.test_t5 import LD, LE, hf_t5

    hf = hf_tiny.gpt2() if name == "gpt2" else hf_t5()
    model = spin_jax.from_transformers(hf)
    c = model.config
    k = c.num_layers if name == "gpt2" else LE + LD
    head = random_head(c.num_layers, (c.hidden_size, c.ffn_size), k, 2, seed=3)
    ids, mask = hf_tiny.padded_batch(c.vocab_size, seed=3)
    sel, kw = inference.selection(head), dict(config=c, k=k)
    by_layer = inference.program(_layer_shares)(model.params, ids, mask, sel, **kw)
    total = inference.program(inference._token_shares)(model.params, ids, mask, sel, **kw)
    assert by_layer.shape == (*ids.shape, k, 2)
    np.testing.assert_allclose(np.asarray(by_layer).sum(2), np.asarray(total), atol=1e-5)
    first = np.abs(np.asarray(by_layer)[:, :, 1:]).sum((0, 1, 3))  # layers 2..k: their columns
    assert np.all(first != 0)
