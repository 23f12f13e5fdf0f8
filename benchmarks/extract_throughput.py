"""How fast is pooled per-layer extraction in spin_jax, against HF torch eager and compiled?

All contenders run one random-weight model (GPT2-XL- or BERT-base-shaped) in one dtype on
the same batches (extraction.plan_batches over an IMDb-like length mix) and return the same
thing: hidden states [B, L+1, P, D] and FFN activations [B, L, P, F] pooled three ways
(P = token, mean, max; token = last real token for GPT-2, first for BERT), bf16, on the host.
  spin_jax       extraction.pooled_program (pooling inside the layer scan; outputs written
                 to pinned host memory by the program on GPU), pipelined like
                 extraction._Runner: two batches dispatched ahead of the host copy.
  spin_jax bare  the same scan returning only the mean last hidden state [B, D]: the
                 forward alone, to show what pooling and its copy cost.
  torch eager    HF model, output_hidden_states=True, each FFN activation module wrapped to
                 pool its output on the device (a forward hook that compiles); the output
                 copied to pinned memory on a side stream, collected two batches behind.
  torch compile  torch.compile of that same wrapper.
"compile s": one batch of every distinct shape (tracing, compiling, autotuning); "steady s":
then all batches, synchronised at both ends. tokens/s counts real tokens, not padding.
FLOPs of a batch of B rows padded to T tokens (the padded work the device does):
    2 * N * B * T + 4 * B * T^2 * D * L
N = matmul weights of the L blocks (kernels of params["layers"], 4 D^2 + 2 D F a block);
4 T^2 D a block and row = QK^T and AV, in full also for causal GPT-2 (the MFU convention).
Embeddings, norms, softmax and pooling are not counted. Full size needs a GPU; --quick runs
tiny models on CPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch

import argparse
import datetime
import functools
import json
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
import torch

from spin_jax import extraction, from_transformers
from spin_jax.extraction import plan_batches, pooled_dispatcher
from spin_jax.models import core, family_of
from spin_jax.text import pad_batch

GPT2_XL = dict(n_embd=1600, n_layer=48, n_head=25, n_positions=1024, vocab_size=50257)
BERT_BASE = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    vocab_size=30522,
    max_position_embeddings=512,
)
MODELS = {  # name -> (model_type, full config, quick config, default N)
    "gpt2-xl": (
        "gpt2",
        GPT2_XL,
        dict(
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=128,
            vocab_size=1000,
            bos_token_id=0,
            eos_token_id=0,
        ),
        2048,
    ),
    "bert-base": (
        "bert",
        BERT_BASE,
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            vocab_size=1000,
            max_position_embeddings=128,
        ),
        4096,
    ),
}
POOL_IDX, OUT_DTYPE = (0, 1, 2), jnp.dtype(jnp.bfloat16)  # all POOLINGS; storage dtype


class Batch(NamedTuple):
    ids: np.ndarray  # [B, T] int32, right-padded
    mask: np.ndarray  # [B, T] int32
    rows: int  # real rows (the rest are one-token fillers)
    tokens: int  # real tokens


def imdb_like_lengths(n: int, max_len: int, mean: float, seed: int) -> np.ndarray:
    """Log-normal lengths (sigma 0.7) clipped to [16, max_len]; IMDb/GPT-2 has mean ~300."""
    sigma = 0.7  # 1.13: makes up for the mean lost to clipping at 512
    raw = np.random.default_rng(seed).lognormal(np.log(mean * 1.13) - sigma**2 / 2, sigma, n)
    return np.clip(np.round(raw), 16, max_len).astype(int)


def make_batches(lengths, vocab: int, max_len: int, budget: int, seed: int) -> list[Batch]:
    rng = np.random.default_rng(seed + 1)
    texts = [rng.integers(3, vocab, n).astype(np.int32) for n in lengths]
    batches = []
    for rows, blen, size in plan_batches(lengths, max_len, budget):
        part = [texts[i] for i in rows] + [np.array([3], np.int32)] * (size - len(rows))
        ids, mask = pad_batch(part, blen)
        batches.append(Batch(ids, mask, len(rows), int(lengths[rows].sum())))
    return batches


def matmul_weights(params) -> int:
    leaves = jax.tree_util.tree_leaves_with_path(params["layers"])
    return sum(x.size for path, x in leaves if "kernel" in jax.tree_util.keystr(path))


def batch_flops(c, n_weights: int, b: Batch) -> float:
    (B, T), D, L = b.ids.shape, c.hidden_size, c.num_layers
    return 2.0 * n_weights * B * T + 4.0 * B * T * T * D * L  # formula: module docstring


def build_hf(name: str, quick: bool, device: str, dtype):
    from transformers import AutoConfig, AutoModel

    model_type, full, small, _ = MODELS[name]
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, **(small if quick else full))
    with torch.device(device):
        model = AutoModel.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def torch_pool(x, mask, token_index):
    """[B,T,*] -> [B,P,*] fp32 as layers.pool; no fp32 copy of x (sums accumulate in fp32)."""
    pad = ~mask[..., None]
    count = mask.sum(-1, keepdim=True).clamp(min=1).float()
    mean = x.masked_fill(pad, 0).sum(1, dtype=torch.float32) / count
    mx = x.masked_fill(pad, float("-inf")).amax(1).float()
    token = x[torch.arange(x.shape[0], device=x.device), token_index].float()
    return torch.stack([token, mean, mx], 1)


class Shared:  # what one forward's wrappers share (a SimpleNamespace breaks dynamo graphs)
    def __init__(self):
        self.mask, self.index, self.ffn = None, None, []


class PoolingAct(torch.nn.Module):
    """Wraps an FFN activation; pools its output into the shared context."""

    def __init__(self, act, ctx: Shared):
        super().__init__()
        self.act, self.ctx = act, ctx

    def forward(self, x):
        y = self.act(x)
        self.ctx.ffn.append(torch_pool(y, self.ctx.mask, self.ctx.index))
        return y


class TorchPooled(torch.nn.Module):
    """HF model -> (hidden [B, L+1, P, D], ffn [B, L, P, F]) pooled, bf16."""

    def __init__(self, hf):
        super().__init__()
        self.hf, self.ctx = hf, Shared()
        self.causal = hf.config.model_type == "gpt2"
        if self.causal:
            for block in hf.h:
                block.mlp.act = PoolingAct(block.mlp.act, self.ctx)
        else:
            for layer in hf.encoder.layer:
                f = layer.intermediate
                f.intermediate_act_fn = PoolingAct(f.intermediate_act_fn, self.ctx)

    def forward(self, ids, mask):
        m = self.ctx.mask = mask.bool()
        n = m.sum(-1)
        self.ctx.index = (n - 1).clamp(min=0) if self.causal else torch.zeros_like(n)
        self.ctx.ffn = []
        out = self.hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = torch.stack([torch_pool(h, m, self.ctx.index) for h in out.hidden_states], 1)
        ffn, self.ctx.ffn = torch.stack(self.ctx.ffn, 1), []
        return hidden.to(torch.bfloat16), ffn.to(torch.bfloat16)


def _bare_forward(config, params, ids, mask):
    """The layer scan with nothing pooled: mean final hidden state [B, D] only."""
    family, m = family_of(config.model_type), mask.astype(bool)
    block = functools.partial(family.block, config)
    h, _ = core.run_stack(
        block,
        family.embed(config, params, ids, m),
        m,
        params["layers"],
        lambda a: jnp.zeros((), a.dtype),
    )
    return h.astype(jnp.float32).mean(1)


def jax_contender(model, bare: bool, host_copy: str = "put"):
    """dispatch(batch) -> device handle, collect(handle) -> host arrays."""
    put = jax.device_put
    pooled = pooled_dispatcher(None, host_copy)  # as spin_jax.extract does on one device
    # The bare forward gets the same XLA options as the extraction program.
    bare_forward = jax.jit(
        _bare_forward, static_argnums=0, compiler_options=extraction.compiler_options()
    )

    def dispatch(b: Batch):
        if bare:
            return (bare_forward(model.config, model.params, put(b.ids), put(b.mask)),)
        return pooled(
            model.params,
            put(b.ids),
            put(b.mask),
            config=model.config,
            k=model.config.num_layers,
            poolings=POOL_IDX,
            out_dtype=OUT_DTYPE,
        )

    return dispatch, lambda handle: [np.asarray(x) for x in handle]


def torch_contender(fn, device: str):
    stream = torch.cuda.Stream() if device == "cuda" else None

    def dispatch(b: Batch):
        ids, mask = (torch.from_numpy(x) for x in (b.ids.astype(np.int64), b.mask))
        if stream is not None:
            ids, mask = (x.pin_memory().to(device, non_blocking=True) for x in (ids, mask))
        with torch.inference_mode():
            outs = fn(ids, mask)
        if stream is None:
            return None, [x.cpu() for x in outs], outs
        ready = torch.cuda.Event()
        ready.record()
        with torch.cuda.stream(stream):  # copy out on a side stream, behind the compute
            stream.wait_event(ready)
            host = [torch.empty(x.shape, dtype=x.dtype, pin_memory=True) for x in outs]
            for h, x in zip(host, outs, strict=True):
                h.copy_(x, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(stream)
        return copied, host, outs  # outs stay referenced until the copy is done

    def collect(handle):
        copied, host, _ = handle
        if copied is not None:
            copied.synchronize()
        return host

    return dispatch, collect


def run_pass(dispatch, collect, batches, keep: int, depth: int = 2):
    """All batches, `depth` dispatched ahead of the host copy; returns batch `keep`'s output."""
    pending, kept = deque(), None
    for i, b in enumerate(batches):
        pending.append((i, dispatch(b)))
        while len(pending) > depth or (pending and i == len(batches) - 1):
            j, handle = pending.popleft()
            out = collect(handle)
            kept = out if j == keep else kept
    return kept


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    (jax.device_put(0.0) + 0).block_until_ready()


def time_contender(dispatch, collect, batches, device, repeats: int, keep: int):
    """(warm-up seconds over one batch of each shape, best timed pass, batch `keep`'s output)."""
    sync(device)
    t0 = time.perf_counter()
    for b in {b.ids.shape: b for b in batches}.values():
        collect(dispatch(b))
    sync(device)
    compile_s, steady = time.perf_counter() - t0, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        kept = run_pass(dispatch, collect, batches, keep)
        sync(device)
        steady.append(time.perf_counter() - t0)
    return compile_s, min(steady), kept


def as_f32(x, rows: int) -> np.ndarray:
    return (x.float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32))[:rows]


def cross_check(name, ref, got, rows: int) -> dict:
    """Max |difference| of pooled outputs (real rows only) against torch eager's."""
    out = {}
    for label, r, g in zip(("hidden", "ffn"), ref, got, strict=True):
        r, g = as_f32(r, rows), as_f32(g, rows)
        diff, scale = float(np.abs(r - g).max()), float(np.abs(r).max())
        out[label] = {"max_abs_diff": diff, "max_abs_ref": scale, "rel": diff / max(scale, 1e-30)}
        print(
            f"    {name}, {label}: max |diff| {diff:.3g} (max |ref| {scale:.3g}, relative "
            f"{out[label]['rel']:.2e})"
        )
    return out


def contenders(hf, model, device, args):
    yield "spin_jax", lambda: jax_contender(model, bare=False)
    for mode in args.host_copies.split(",") if args.host_copies else ():
        yield f"spin_jax, host copy {mode}", functools.partial(jax_contender, model, False, mode)
    yield "spin_jax bare forward", lambda: jax_contender(model, bare=True)
    eager = TorchPooled(hf)
    yield "torch eager", lambda: torch_contender(eager, device)
    if not args.skip_compile:
        yield "torch compile", lambda: torch_contender(compiled(eager, args), device)


def compiled(module, args):
    import torch._dynamo

    cfg = torch._dynamo.config  # --compile-static needs one graph a shape
    setattr(cfg, "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit", 64)
    return torch.compile(module, mode=args.compile_mode, dynamic=not args.compile_static)


def prepare(name: str, args, device: str, dtype):
    """HF model, our converted copy, the batches, and a line describing them."""
    t0 = time.perf_counter()
    hf = build_hf(name, args.quick, device, dtype)
    model = from_transformers(hf, dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    setup_s = time.perf_counter() - t0
    c = model.config
    max_len = min(512, c.max_positions)
    n = args.n or (64 if args.quick else MODELS[name][3])
    lengths = imdb_like_lengths(n, max_len, 50 if args.quick else 300, args.seed)
    batches = make_batches(lengths, c.vocab_size, max_len, args.token_budget, args.seed)
    n_w = matmul_weights(model.params)
    stats = dict(
        texts=n,
        tokens=sum(b.tokens for b in batches),
        padded=sum(b.ids.size for b in batches),
        flops=sum(batch_flops(c, n_w, b) for b in batches),
    )
    print(
        f"\n## {name}: {c.num_layers} layers, D={c.hidden_size}, F={c.ffn_size}, "
        f"{n_w / 1e6:.1f}M matmul weights; {n} texts, {stats['tokens']} tokens "
        f"({1 - stats['tokens'] / stats['padded']:.1%} padding), {len(batches)} batches, "
        f"{len({b.ids.shape for b in batches})} shapes; {stats['flops'] / 1e12:.1f} TFLOP "
        f"a pass; model built and converted in {setup_s:.1f}s"
    )
    return hf, model, batches, stats


def bench_one(label, make, batches, stats, device, args) -> tuple[dict, list | None]:
    row = {"contender": label}
    try:
        dispatch, collect = make()
        compile_s, steady_s, kept = time_contender(
            dispatch, collect, batches, device, args.repeats, len(batches) // 2
        )
    except Exception as e:  # report per contender, keep going
        row["error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        print(f"  {label}: FAILED {row['error']}")
        traceback.print_exc(limit=4)
        return row, None
    row.update(
        compile_s=compile_s,
        steady_s=steady_s,
        tokens_per_s=stats["tokens"] / steady_s,
        examples_per_s=stats["texts"] / steady_s,
        tflops=stats["flops"] / steady_s / 1e12,
    )
    print(f"  {label}: compile {compile_s:.1f}s, steady {steady_s:.2f}s")
    return row, kept


def bench_model(name: str, args, device: str, dtype) -> list[dict]:
    hf, model, batches, stats = prepare(name, args, device, dtype)
    rows, kept, check = [], {}, batches[len(batches) // 2]
    shape = dict(batches=len(batches), padding=1 - stats["tokens"] / stats["padded"])
    for label, make in contenders(hf, model, device, args):
        row, kept[label] = bench_one(label, make, batches, stats, device, args)
        rows.append({"model": name, **shape, **row})
        if device == "cuda":
            torch.cuda.empty_cache()
    base = {r["contender"]: r.get("steady_s") for r in rows}
    for r in rows:
        for key, other in (("vs_eager", "torch eager"), ("vs_compile", "torch compile")):
            if base.get(other) and r.get("steady_s"):
                r[key] = base[other] / r["steady_s"]
    ref = kept.pop("torch eager", None)
    print(f"  cross-check on the batch of shape {check.ids.shape}:")
    for row in rows:
        got = kept.get(row["contender"])
        if ref is not None and got is not None and len(got) == 2:  # not the bare forward
            row["check"] = cross_check(row["contender"], ref, got, check.rows)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | contender | compile s | steady s | tokens/s | examples/s | TFLOP/s "
        "| x eager | x compile |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['contender']} | failed: {r['error']} |||||||")
            continue
        x = [f"{r[k]:.2f}" if k in r else "-" for k in ("vs_eager", "vs_compile")]
        lines.append(
            f"| {r['model']} | {r['contender']} | {r['compile_s']:.1f} | "
            f"{r['steady_s']:.2f} | {r['tokens_per_s']:,.0f} | "
            f"{r['examples_per_s']:,.1f} | {r['tflops']:.1f} | {x[0]} | {x[1]} |"
        )
    return "\n".join(lines)


def metadata(args, device: str, dtype) -> dict:
    return {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch_device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "jax_device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "token_budget": args.token_budget,
        "repeats": args.repeats,
        "xla_options": extraction.compiler_options(),
        "compile": None
        if args.skip_compile
        else {"mode": args.compile_mode, "dynamic": not args.compile_static},
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="gpt2-xl,bert-base")
    p.add_argument("--n", type=int, default=None, help="texts (default 2048 GPT2-XL, 4096 BERT)")
    p.add_argument(
        "--token-budget",
        type=int,
        default=None,
        help="default extraction.TOKEN_BUDGET (quick 1024)",
    )
    p.add_argument("--repeats", type=int, default=1, help="timed passes; the fastest is kept")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument(
        "--host-copies", default="", help="also time extraction.HOST_COPIES modes, e.g. put,async"
    )
    p.add_argument("--compile-mode", default="default")
    p.add_argument(
        "--compile-static",
        action="store_true",
        help="torch.compile(dynamic=False): one compile per shape (slow)",
    )
    p.add_argument("--quick", action="store_true", help="tiny models and data; runs on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--xla-options",
        default=None,
        help="JSON dict of XLA options for the JAX programs instead of "
        "extraction.compiler_options() (e.g. from benchmarks/xla_flags.py --best)",
    )
    args = p.parse_args(argv)
    args.token_budget = args.token_budget or (1024 if args.quick else extraction.TOKEN_BUDGET)
    return args


def main(argv=None):
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.xla_options:
        options = json.loads(args.xla_options)
        extraction.compiler_options = lambda: options  # read by pooled_program and the bare
    meta = metadata(args, device, dtype)
    print(json.dumps(meta))
    if (device == "cuda") != (jax.default_backend() == "gpu"):
        print(f"warning: torch runs on {device}, JAX on {jax.default_backend()}")
    rows = [
        r for name in args.models.split(",") for r in bench_model(name.strip(), args, device, dtype)
    ]
    report = table(rows)
    print(
        f"\n`{meta['command']}`\n{meta['torch_device']} / {meta['jax_device']}, jax "
        f"{meta['jax']}, torch {meta['torch']}, {meta['dtype']}, {meta['date']}\n\n{report}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({**meta, "rows": rows, "table": report}, indent=1))


if __name__ == "__main__":
    main()
