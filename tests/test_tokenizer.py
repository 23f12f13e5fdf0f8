"""spin_jax.tokenizer.FastTokenizer (tokenizer.json read with `tokenizers` alone) against
transformers' AutoTokenizer on the same folder, for each tokenizer kind the model families
use: ids, attention masks, special-token masks, offsets, tokens, token strings, special ids
and the named special tokens must all be the same."""

from __future__ import annotations

import pytest

from spin_jax.model import load_tokenizer
from spin_jax.text import encode_rows, token_spans
from spin_jax.tokenizer import FastTokenizer
from tests import hf_tiny
from tests.test_explain_html import TEXTS, byte_level, sentencepiece

MORE = TEXTS + ["", " ", "a", "x" * 300, "Ünïcödé ß ﬁ ½ 漢字 and <s> [CLS] </s> <pad> literally"]
KINDS = {"gpt2": "gpt2", "roberta": "roberta", "bert": "bert", "t5": "t5"}


@pytest.fixture(scope="module", params=list(KINDS))
def folder(request, tmp_path_factory):
    """A folder written by HF's save_pretrained (so it has tokenizer.json), and its type."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp(request.param)
    if request.param in ("gpt2", "roberta"):
        hf = byte_level(tmp, "GPT2Tokenizer" if request.param == "gpt2" else "RobertaTokenizer")
    elif request.param == "t5":
        hf = sentencepiece(tmp)
    else:
        hf = AutoTokenizer.from_pretrained(hf_tiny.minilm_dir())
    out = tmp / "saved"
    out.mkdir()
    hf.save_pretrained(str(out))
    return out, KINDS[request.param]


def pair(folder):
    from transformers import AutoTokenizer

    path, model_type = folder
    hf = AutoTokenizer.from_pretrained(str(path))
    if hf.pad_token is None:
        hf.pad_token = hf.eos_token or hf.unk_token
    ours = load_tokenizer(path, model_type)
    assert isinstance(ours, FastTokenizer)  # the fast path is the one under test
    return ours, hf


def test_encodings_match_autotokenizer(folder):
    ours, hf = pair(folder)
    for special in (True, False):
        a = ours(MORE, add_special_tokens=special, truncation=False, verbose=False)
        b = hf(MORE, add_special_tokens=special, truncation=False, verbose=False)
        assert a["input_ids"] == [list(x) for x in b["input_ids"]]
        assert a["attention_mask"] == [list(x) for x in b["attention_mask"]]
    for n in (4, 9):
        a = ours(MORE, truncation=True, max_length=n)["input_ids"]
        assert a == [list(x) for x in hf(MORE, truncation=True, max_length=n)["input_ids"]]
    for text in MORE:
        kw = dict(truncation=False, return_special_tokens_mask=True, return_offsets_mapping=True)
        a, b = ours(text, **kw), hf(text, **kw)
        assert a["special_tokens_mask"] == list(b["special_tokens_mask"])
        assert [tuple(o) for o in a["offset_mapping"]] == [tuple(o) for o in b["offset_mapping"]]
        tokens = ours.convert_ids_to_tokens(a["input_ids"])
        assert tokens == hf.convert_ids_to_tokens(b["input_ids"])
        assert ours.convert_tokens_to_string(tokens) == hf.convert_tokens_to_string(tokens)
        for t in tokens:
            assert ours.convert_tokens_to_string([t]) == hf.convert_tokens_to_string([t])


def test_special_tokens_and_limits_match(folder):
    ours, hf = pair(folder)
    assert set(ours.all_special_ids) == set(hf.all_special_ids)
    for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        assert getattr(ours, f"{name}_token") == getattr(hf, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id"), name
    assert ours.model_max_length == hf.model_max_length
    with pytest.raises(AttributeError):
        ours.no_such_attribute  # noqa: B018


def test_what_spin_jax_reads_is_the_same(folder):
    """encode_rows (with truncation) and token_spans give the same with either tokenizer."""
    ours, hf = pair(folder)
    for n in (3, 8, 512):
        a, ta = encode_rows(ours, MORE, n)
        b, tb = encode_rows(hf, MORE, n)
        assert ta.tolist() == tb.tolist() and [x.tolist() for x in a] == [x.tolist() for x in b]
    for text in MORE[:4]:
        a, b = token_spans(ours, text, 8), token_spans(hf, text, 8)
        assert a.ids.tolist() == b.ids.tolist() and a.tokens == b.tokens
        assert a.spans == b.spans and a.special == b.special
        assert (a.truncated, a.n_tokens) == (b.truncated, b.n_tokens)


def test_saved_folder_loads_the_same(folder, tmp_path):
    ours, _ = pair(folder)
    ours.save_pretrained(str(tmp_path))
    again = FastTokenizer(tmp_path)
    assert again(MORE)["input_ids"] == ours(MORE)["input_ids"]
    assert again.all_special_ids == ours.all_special_ids


def test_other_families_still_use_autotokenizer(folder):
    path, _ = folder
    assert not isinstance(load_tokenizer(path, "llama"), FastTokenizer)
