"""Parity against the true reference: HF torch in float64, beside HF torch's own fp32.

For each family (tiny random models built from configs, as in the tests) and the real
all-MiniLM-L6-v2, the largest |difference| over real tokens, hidden states and FFN
activations of every layer, of
  - spin_jax in float32 at "highest" matmul precision, and
  - HF torch in float32 (the release installed),
against HF torch run in float64 on the same padded batch. The tests assert the first at 1e-5;
this shows that the second is of the same size, so our fp32 is as close to the truth as
torch's own.

    PYTHONPATH=. python benchmarks/parity_fp64.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")

import spin_jax  # noqa: E402
from spin_jax.models import forward_params  # noqa: E402
from tests import hf_tiny  # noqa: E402


def err(got, want, real):
    return float(np.abs(np.asarray(got, np.float64)[:, real] - want[:, real]).max())


def encoder_family(kind):
    hf = hf_tiny.gpt2() if kind == "gpt2" else hf_tiny.bert(kind)
    pad = hf.config.pad_token_id if kind == "roberta" else 0
    ids, mask = hf_tiny.padded_batch(hf.config.vocab_size, pad_id=pad)
    ours = spin_jax.forward(spin_jax.from_transformers(hf), ids, mask, pooled=False)
    ref = hf_tiny.hf_features(hf, ids, mask, "float64")
    fp32 = hf_tiny.hf_features(hf, ids, mask, "float32")
    return mask.astype(bool), ours, ref, fp32


def minilm():
    from transformers import AutoModel

    from tests.test_models import SENTENCES

    model = spin_jax.load_model(hf_tiny.minilm_dir())
    ids, _ = spin_jax.encode(model.tokenizer, SENTENCES, 512)
    ids, mask = spin_jax.pad_batch(ids, max(len(i) for i in ids) + 3)
    hf = AutoModel.from_pretrained(hf_tiny.minilm_dir()).eval()
    ours = spin_jax.forward(model, ids, mask, pooled=False)
    ref = hf_tiny.hf_features(hf, ids, mask, "float64")
    fp32 = hf_tiny.hf_features(hf, ids, mask, "float32")
    return mask.astype(bool), ours, ref, fp32


def t5(proj):
    from tests import test_t5

    hf = test_t5.hf_t5(feed_forward_proj=proj)
    config, params = test_t5.ours(hf, decoder_mask="shifted")
    ids, mask = hf_tiny.padded_batch(config.vocab_size)
    dec = test_t5.shifted(mask)
    ours = forward_params(config, params, ids, mask, pooled=False)
    ref = test_t5.hf_features(hf, ids, mask, dec, dtype="float64")
    fp32 = test_t5.hf_features(hf, ids, mask, dec, dtype="float32")
    h_real = test_t5.layer_masks(mask, dec, test_t5.LE + 1, test_t5.LD)
    f_real = test_t5.layer_masks(mask, dec, test_t5.LE, test_t5.LD)
    return (h_real, f_real), ours, ref, fp32


def masked(x, want, real):
    return float(np.abs(np.asarray(x, np.float64) - want)[real].max())


def row(name, case):
    real, ours, (rh, rf), (th, tf) = case
    if isinstance(real, tuple):  # T5: a mask per layer
        hr, fr = real
        return {
            "model": name,
            "ours_hidden": masked(ours.hidden, rh, hr),
            "ours_ffn": masked(ours.ffn, rf, fr),
            "torch_fp32_hidden": masked(th, rh, hr),
            "torch_fp32_ffn": masked(tf, rf, fr),
        }
    return {
        "model": name,
        "ours_hidden": err(ours.hidden, rh, real),
        "ours_ffn": err(ours.ffn, rf, real),
        "torch_fp32_hidden": err(th, rh, real),
        "torch_fp32_ffn": err(tf, rf, real),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch
    import transformers

    rows = [row(k, encoder_family(k)) for k in ("gpt2", "bert", "roberta", "distilbert")]
    rows += [row(f"t5 ({p})", t5(p)) for p in ("relu", "gated-gelu")]
    try:
        rows.append(row("all-MiniLM-L6-v2 (real)", minilm()))
    except BaseException as e:  # noqa: BLE001 - pytest.skip when the wheel is absent
        print(f"MiniLM skipped: {e}")
    print(
        f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}, {platform.machine()}"
    )
    print("| model | ours hidden | ours ffn | torch fp32 hidden | torch fp32 ffn |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['ours_hidden']:.2e} | {r['ours_ffn']:.2e} | "
            f"{r['torch_fp32_hidden']:.2e} | {r['torch_fp32_ffn']:.2e} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
