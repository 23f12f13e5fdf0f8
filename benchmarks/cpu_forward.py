"""CPU extraction beside HF torch with hooks, the same texts and cores, fp32.

Both sides compute every layer's hidden state and FFN activation, pooled over real tokens
(first token, mean, max), for the shipped reviews (or --texts N of them, repeated). Ours is
`spin_jax.extract` (placement host) at JAX's default matmul precision, timed cold (its
compiles included, as a user's first run pays them) and warm (a second call); torch is the
real model run with forward hooks in batches of --batch padded to their longest text,
under torch.no_grad, with torch.set_num_threads(os.cpu_count()).

    PYTHONPATH=. python benchmarks/cpu_forward.py [--texts 1000] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax

import spin_jax
from spin_jax.cli.learn import DEMO_DATA, demo_model_dir


def texts_of(n: int) -> list[str]:
    rows = [json.loads(line)["text"] for line in DEMO_DATA.read_text().splitlines() if line]
    return [rows[i % len(rows)] for i in range(n)]


def ours(model, texts, max_length):
    t = time.perf_counter()
    feats = spin_jax.extract(
        model, texts, max_length=max_length, dtype="float32", progress=False, placement="host"
    )
    return time.perf_counter() - t, feats


def torch_side(folder, texts, max_length, batch):
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(os.cpu_count())
    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModel.from_pretrained(folder).eval()
    acts = []
    for layer in hf.encoder.layer:
        layer.intermediate.intermediate_act_fn.register_forward_hook(
            lambda mod, i, o: acts.append(o)
        )
    t = time.perf_counter()
    pooled = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            acts.clear()
            enc = tok(
                texts[start : start + batch],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            out = hf(**enc, output_hidden_states=True)
            m = enc["attention_mask"].bool()[None, :, :, None]
            for stack in (torch.stack(out.hidden_states), torch.stack(acts)):
                first = stack[:, :, 0]
                mean = (stack * m).sum(2) / m.sum(2)
                mx = stack.masked_fill(~m, -torch.inf).amax(2)
                pooled.append(torch.stack([first, mean, mx], 2).numpy())
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256)
    args = p.parse_args()
    import torch
    import transformers

    folder = demo_model_dir()
    model = spin_jax.load_model(folder)
    texts = texts_of(args.texts)
    ids, _ = spin_jax.encode(model.tokenizer, texts, args.max_length)
    tokens = sum(map(len, ids))
    cold, _ = ours(model, texts, args.max_length)
    warm, _ = ours(model, texts, args.max_length)
    ref = torch_side(folder, texts, args.max_length, args.batch)
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}; all-MiniLM-L6-v2, "
        f"{len(texts)} texts, {tokens} tokens, fp32"
    )
    print("| contender | seconds | tokens/s | x torch |")
    print("|---|---:|---:|---:|")
    for name, s in (
        ("spin_jax cold (compiles)", cold),
        ("spin_jax warm", warm),
        ("HF torch + hooks", ref),
    ):
        print(f"| {name} | {s:.1f} | {tokens / s:,.0f} | {ref / s:.2f} |")


if __name__ == "__main__":
    main()
