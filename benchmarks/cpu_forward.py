"""CPU extraction beside HF torch with hooks, the same texts and cores, fp32, interleaved.

Both sides compute every layer's hidden state and FFN activation of all-MiniLM-L6-v2,
pooled over real tokens (first token, mean, max), for the shipped reviews (--texts N of
them, repeated; --join J makes each text J consecutive reviews, for longer texts). Ours is
`spin_jax.extract` (placement host) at JAX's default matmul precision; torch is the real
model with forward hooks in batches of --batch padded to their longest text, under
torch.no_grad, with torch.set_num_threads(os.cpu_count()), once in the texts' order (what a
plain loop does) and once with the texts sorted by length (less padding, as our runner does).

Our first call is timed alone ("cold": its compiles included, as a user's first run pays
them; the compile seconds are read from JAX's own compile events). Then --rounds rounds
each run every warm contender once, interleaved, so that load from other processes on the
machine falls on all of them alike; the table gives each one's median and best round.

With --old-batching, ours also runs with the accelerators' batching (one coarse bucket
grid, 32768-token batches: what the CPU ran before batching.backend_plan gave it finer
buckets and smaller batches), cold (its own shapes' compiles) and warm in the same rounds.

    PYTHONPATH=. python benchmarks/cpu_forward.py [--texts 600] [--join 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import numpy as np

import spin_jax
from spin_jax import batching, runner
from spin_jax.cli.learn import DEMO_DATA, demo_model_dir


def texts_of(n: int, join: int) -> list[str]:
    rows = [json.loads(line)["text"] for line in DEMO_DATA.read_text().splitlines() if line]
    return [" ".join(rows[(i * join + j) % len(rows)] for j in range(join)) for i in range(n)]


def compile_seconds() -> list[float]:
    """A list that JAX's backend compile durations are appended to from now on."""
    seconds: list[float] = []

    def listen(name, duration, **_):
        if name == "/jax/core/compile/backend_compile_duration":
            seconds.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    return seconds


def ours(model, texts, max_length, old_batching: bool = False):
    """Seconds of one extract call; old_batching: with the accelerators' batch plan."""
    new = runner.backend_plan
    if old_batching:
        runner.backend_plan = lambda _backend, *a: batching.backend_plan("gpu", *a)
    t = time.perf_counter()
    try:
        spin_jax.extract(
            model, texts, max_length=max_length, dtype="float32", progress=False, placement="host"
        )
    finally:
        runner.backend_plan = new
    return time.perf_counter() - t


def plan_line(lengths, max_length: int) -> str:
    """Padding and distinct (rows, tokens) shapes of our batch plan, CPU and accelerators'."""
    parts = []
    for name, backend in (("cpu", "cpu"), ("old/accelerators", "gpu")):
        plan = batching.backend_plan(backend, lengths, max_length, batching.TOKEN_BUDGET)
        padded = sum(blen * size for _, blen, size in plan)
        shapes = sorted({(size, blen) for _, blen, size in plan})
        parts.append(
            f"{name} batching: {len(plan)} batches, {1 - lengths.sum() / padded:.1%} padding, "
            f"{len(shapes)} shapes {shapes}"
        )
    return "; ".join(parts)


class TorchSide:
    """The real model in HF torch, FFN activations read by forward hooks."""

    def __init__(self, folder, max_length: int, batch: int):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(os.cpu_count())
        self.torch, self.max_length, self.batch = torch, max_length, batch
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.hf = AutoModel.from_pretrained(folder).eval()
        self.acts = []
        for layer in self.hf.encoder.layer:
            layer.intermediate.intermediate_act_fn.register_forward_hook(
                lambda mod, i, o: self.acts.append(o)
            )

    def __call__(self, texts) -> float:
        torch = self.torch
        t = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(texts), self.batch):
                self.acts.clear()
                enc = self.tok(
                    texts[start : start + self.batch],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                out = self.hf(**enc, output_hidden_states=True)
                m = enc["attention_mask"].bool()[None, :, :, None]
                for stack in (torch.stack(out.hidden_states), torch.stack(self.acts)):
                    first = stack[:, :, 0]
                    mean = (stack * m).sum(2) / m.sum(2)
                    mx = stack.masked_fill(~m, -torch.inf).amax(2)
                    torch.stack([first, mean, mx], 2).numpy()
        return time.perf_counter() - t


def measure(args, folder, model, texts, lengths):
    """{contender: [seconds per call]} and the compile seconds of our cold call(s)."""
    compiles = compile_seconds()
    cold = {"spin_jax cold (compiles included)": [ours(model, texts, args.max_length)]}
    compiled = [sum(compiles)]
    if args.old_batching:
        name = "spin_jax cold, old batching (its compiles included)"
        cold[name] = [ours(model, texts, args.max_length, old_batching=True)]
        compiled.append(sum(compiles) - compiled[0])
    side = TorchSide(folder, args.max_length, args.batch)
    by_length = [texts[i] for i in np.argsort(lengths, kind="stable")]
    contenders = {
        "spin_jax warm": lambda: ours(model, texts, args.max_length),
        "HF torch + hooks": lambda: side(texts),
        "HF torch + hooks, sorted by length": lambda: side(by_length),
    }
    if args.old_batching:
        contenders["spin_jax warm, old batching"] = lambda: ours(
            model, texts, args.max_length, old_batching=True
        )
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            times[name].append(run())
    return {**cold, **times}, compiled


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=600)
    p.add_argument("--join", type=int, default=1, help="reviews per text")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--old-batching", action="store_true", help="also the accelerators' batching")
    args = p.parse_args()
    import torch
    import transformers

    folder = demo_model_dir()
    model = spin_jax.load_model(folder)
    texts = texts_of(args.texts, args.join)
    ids, _ = spin_jax.encode(model.tokenizer, texts, args.max_length)
    lengths = np.array([len(i) for i in ids])
    times, compiled = measure(args, folder, model, texts, lengths)
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}; all-MiniLM-L6-v2, "
        f"{len(texts)} texts, {lengths.sum()} tokens (mean {lengths.mean():.0f}, max "
        f"{lengths.max()}), fp32; cold calls' compiles " + ", ".join(f"{c:.1f} s" for c in compiled)
    )
    print(plan_line(lengths, args.max_length))
    ref = statistics.median(times["HF torch + hooks"])
    print("| contender | median s | best s | tokens/s (median) | x torch (median) |")
    print("|---|---:|---:|---:|---:|")
    for name, s in times.items():
        med = statistics.median(s)
        row = (
            f"| {name} | {med:.2f} | {min(s):.2f} | {lengths.sum() / med:,.0f} | {ref / med:.2f} |"
        )
        print(row)


if __name__ == "__main__":
    main()
