"""The whole SPIN fit on 1, 2, 4, 8 devices of one host: extraction, probes, integration.

One run per device count, each in a fresh process that sees only that many devices
(CUDA_VISIBLE_DEVICES on GPU; --xla_force_host_platform_device_count on CPU). A run builds a
random-weight model of a real one's shape (bf16; `--model` gpt2-xl, bert-base or
flan-t5-base), extracts every layer's pooled features of an
IMDb-like length mix of token ids (train and validation; labels depend on the first token, so
the probes have something to find) with spin_jax's extraction program, data-parallel over
all devices, then runs `learner.fit_spin` (probes and integration sharded over the devices).
Reported per device count: seconds of each stage, extraction rows/s per device, and the
scaling efficiency against one device, t_1 / (n * t_n). Extraction is timed after a warm-up
pass; the fit's seconds include its compilation (one program per probe group and per
integration run, as a user's first fit pays it). Then the chosen head evaluates the test
split (`--n-test`, 25000 by default) as `spin-jax evaluate` would: its first k blocks and
its kept neurons only, compiles counted. The validation score should not depend on the
device count.

    python benchmarks/fit_scaling.py --devices 1,2,4,8          # GPUs, GPT2-XL shape
    python benchmarks/fit_scaling.py --devices 1,8 --quick      # CPU: 8 simulated devices

(Simulated CPU devices share the host's cores: their efficiencies say nothing of GPUs.)

Features live in host memory (`--placement device` copies them to the devices before the
fit, as `extract(placement="device")` leaves them): at full size 2.3 MB a row (bf16), ~57
GB for the default 20000 + 5000 rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np

# The model shapes (HF config.json fields), random weights in bf16. --quick shrinks each.
SHAPES = {
    "gpt2-xl": dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=1600,
                    n_layer=48, n_head=25),
    "bert-base": dict(model_type="bert", vocab_size=30522, max_position_embeddings=512,
                      hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072),
    "flan-t5-base": dict(model_type="t5", vocab_size=32128, d_model=768, d_kv=64,
                         num_heads=12, d_ff=2048, num_layers=12,
                         feed_forward_proj="gated-gelu"),
}  # fmt: skip
TINY = {
    "gpt2-xl": dict(n_embd=64, n_layer=3, n_head=4, n_inner=128),
    "bert-base": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                      intermediate_size=128),
    "flan-t5-base": dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2),
}  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", default="1,2,4,8", help="device counts, one run each")
    p.add_argument("--n-train", type=int, default=None, help="default 20000 (quick 400)")
    p.add_argument("--n-valid", type=int, default=None, help="default 5000 (quick 100)")
    p.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="texts evaluated with the chosen head after the fit (only its k blocks and kept "
        "neurons); default 25000 (quick 100), 0 for none",
    )
    p.add_argument("--model", choices=sorted(SHAPES), default="gpt2-xl", help="the shape")
    p.add_argument(
        "--token-budget",
        type=int,
        default=None,
        help="default extraction.TOKEN_BUDGET (quick 1024)",
    )
    p.add_argument("--quick", action="store_true", help="tiny model and data; runs on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="stage lines and bars on stderr")
    p.add_argument(
        "--placement",
        choices=("host", "device"),
        default="host",
        help="where the fit reads the features: host memory, or copied to the device first",
    )
    p.add_argument("--json", default=None, help="write the runs here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.n_train = args.n_train or (400 if args.quick else 20000)
    args.n_valid = args.n_valid or (100 if args.quick else 5000)
    if args.n_test is None:
        args.n_test = 100 if args.quick else 25000
    args.token_budget = args.token_budget or (1024 if args.quick else None)
    return args


# ----------------------------------------------------------------------------- one run


def build_model(args):
    import jax
    import jax.numpy as jnp

    from spin_jax.models import config_from_hf, param_shapes

    shape = {**SHAPES[args.model], **(TINY[args.model] if args.quick else {})}
    config = config_from_hf(shape)
    keys = iter(jax.random.split(jax.random.key(args.seed), 1024))
    params = jax.tree.map(
        lambda s: (0.02 * jax.random.normal(next(keys), s.shape)).astype(jnp.bfloat16),
        param_shapes(config),
    )
    tokenizer = SimpleNamespace(pad_token_id=0)
    return SimpleNamespace(config=config, params=params, tokenizer=tokenizer, dtype="bfloat16")


def make_split(n, vocab, max_len, mean, seed):
    """Token ids of an IMDb-like length mix and labels set by the first token's parity."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sigma = 0.7
    raw = rng.lognormal(np.log(mean * 1.13) - sigma**2 / 2, sigma, n)
    lengths = np.clip(np.round(raw), 16, max_len).astype(int)
    ids = [rng.integers(3, vocab, k).astype(np.int32) for k in lengths]
    labels = np.array([int(x[0]) % 2 for x in ids])
    return ids, labels


def extract_split(model, ids, labels, args):
    import numpy as np

    from spin_jax.extraction import (
        TOKEN_BUDGET,
        ExtractOptions,
        MemoryFeatures,
        _array_specs,
        _Runner,
    )

    k = model.config.num_layers
    opts = ExtractOptions(
        dtype="bfloat16", token_budget=args.token_budget or TOKEN_BUDGET, progress=False
    )
    runner = _Runner(model, k, opts, 512)
    arrays = runner.run_rows(ids, np.arange(len(ids)), _array_specs(model, k, opts))
    return MemoryFeatures(arrays, labels, ["even", "odd"], {}), runner.summary


def evaluate(model, head, ids, labels) -> float | None:
    """Test accuracy of the chosen head on ids, as `spin-jax evaluate` runs it: its first k
    blocks, its kept neurons (None when there are no test rows)."""
    import numpy as np

    from spin_jax.extraction import TOKEN_BUDGET
    from spin_jax.inference import heads_logits_of_ids

    if not len(ids):
        return None
    (logits,) = heads_logits_of_ids(model, [head], ids, max_length=512, token_budget=TOKEN_BUDGET)
    pred = logits[:, 0] > 0 if logits.shape[1] == 1 else logits.argmax(1)
    return float(np.mean(pred == labels))


def on_device(src):
    """MemoryFeatures copied to the accelerator as DeviceFeatures (waited for)."""
    import jax

    from spin_jax.extraction import DeviceFeatures

    arrays = jax.block_until_ready({k: jax.device_put(v) for k, v in src.arrays.items()})
    return DeviceFeatures(arrays, src.labels, src.label_names, src.manifest)


def count_compiles() -> list[float]:
    """The seconds of each backend compile from now on (a list that fills as they happen)."""
    from jax import monitoring

    seconds = []

    def on_event(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            seconds.append(duration)

    monitoring.register_event_duration_secs_listener(on_event)
    return seconds


def worker(args) -> dict:
    """One run on every device this process sees; returns its measurements."""
    import jax

    from spin_jax.learner import SpinOptions, fit_spin

    model = build_model(args)
    vocab, mean = model.config.vocab_size, 50 if args.quick else 300
    splits = [make_split(n, vocab, 512, mean, args.seed + i) for i, n in
              enumerate((args.n_train, args.n_valid, args.n_test))]  # fmt: skip
    test = splits.pop()
    extract_s, warmup_s, rows, tokens, feats = 0.0, 0.0, 0, 0, []
    for ids, labels in splits:
        # One warm-up pass over a few rows compiles most bucket shapes out of the timing;
        # its seconds are reported too (warmup_s), as a user's cold run pays them.
        t = time.perf_counter()
        extract_split(model, ids[:64], labels[:64], args)
        warmup_s += time.perf_counter() - t
        t = time.perf_counter()
        f, summary = extract_split(model, ids, labels, args)
        extract_s += time.perf_counter() - t
        print(f"extracted {len(ids)} rows in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        rows, tokens = rows + summary.rows, tokens + summary.tokens
        feats.append(f)
    to_device_s = 0.0
    if args.placement == "device":  # as extract(placement="device") leaves them
        t = time.perf_counter()
        feats = [on_device(f) for f in feats]
        to_device_s = time.perf_counter() - t
    compiles = count_compiles()
    group_s, reads = time_groups(), time_probe_reads()
    t = time.perf_counter()
    head, report = fit_spin(feats[0], feats[1], opts=SpinOptions(), progress=args.progress)
    fit_s = time.perf_counter() - t
    n_programs = len(compiles)
    t = time.perf_counter()
    accuracy = evaluate(model, head, *test)
    eval_s = time.perf_counter() - t
    return dict(
        model=args.model,
        placement=args.placement,
        to_device_s=to_device_s,
        devices=jax.device_count(),
        device_kind=jax.devices()[0].device_kind,
        rows=rows,
        tokens=tokens,
        extract_s=extract_s,
        warmup_s=warmup_s,
        fit_s=fit_s,
        fit_programs=n_programs,
        fit_compile_s=sum(compiles[:n_programs]),
        test_rows=len(test[0]),
        eval_s=eval_s,
        eval_programs=len(compiles) - n_programs,
        test=accuracy,
        head_layers=head.num_layers,
        head_neurons=len(head.rep),
        stage_s=report["times"],
        valid=report["spin"]["valid"],
        chosen=report["chosen"],
        union_s=sum(g["union_s"] for g in group_s if "union_s" in g),
        probe_reads_s=reads["s"],
        integration_profile=integration_profile(
            report, [g for g in group_s if "union_s" not in g], args.n_train
        ),
    )


PARTS = ("seconds", "gather_s", "lanes_s")


def time_groups() -> list[dict]:
    """Seconds of each integration group, in order (learner.integrate_combo, wrapped), and
    of its parts: gathering its columns (reads, standardising, the copy to the device)
    and solving its lanes (integration._fit_masks: setup, rounds); first, where integration
    gathers every group's columns at once on the device, that gather as {"union_s": s}."""
    import jax

    from spin_jax import integration, learner

    groups = []

    def wrap(owner, name, key):
        inner = getattr(owner, name)

        def timed(*a, **k):
            if key in ("seconds", "union_s"):  # a new entry
                groups.append({key: 0.0} if key == "union_s" else dict.fromkeys(PARTS, 0.0))
            if key == "seconds" and k.get("width"):
                groups[-1]["width"] = k["width"]  # the group's padded width, as integrated
            t = time.perf_counter()
            out = jax.block_until_ready(inner(*a, **k))
            groups[-1][key] += time.perf_counter() - t
            return out

        setattr(owner, name, timed)

    wrap(integration, "union_columns", "union_s")  # before the groups: its own entry
    wrap(integration, "gather", "gather_s")
    wrap(integration, "_to_device", "gather_s")
    wrap(integration, "_fit_masks", "lanes_s")
    wrap(learner, "integrate_combo", "seconds")
    return groups


def time_probe_reads() -> dict:
    """{"s": seconds}: the probes' reads of their chunks of layers, up to the copy on the
    device (layer_probes.read_layers and _problems), of the probes' stage seconds."""
    import jax

    from spin_jax import layer_probes

    total = {"s": 0.0}
    inner = layer_probes._problems

    def timed(x):
        t = time.perf_counter()
        out = jax.block_until_ready(inner(x))
        total["s"] += time.perf_counter() - t
        return out

    read = layer_probes.read_layers

    def timed_read(*a, **k):
        t = time.perf_counter()
        out = read(*a, **k)
        total["s"] += time.perf_counter() - t
        return out

    layer_probes._problems, layer_probes.read_layers = timed, timed_read
    return total


def integration_profile(report: dict, group_s: list[dict], n_rows: int) -> list[dict]:
    """Per integration group: its columns, lanes and lane-iterations, the iterations at each
    lam (mean, and the share of lanes that ran to the cap), its seconds, and the TFLOP its
    lane steps cost at full width (a lane-iteration: two [N, width] products, K = 1), the
    group's own width where it shares a wider one."""
    from spin_jax import integration
    from spin_jax.columns import padded_width
    from spin_jax.learner import SpinOptions

    opts, groups = SpinOptions(), {}
    for row in report["grid"]:
        groups.setdefault((row["representation"], row["pooling"]), []).append(row)
    out = []
    for ((rep, pool), rows), times in zip(groups.items(), group_s, strict=False):
        lams = sorted({r["lam"] for r in rows}, reverse=True)
        iters = sum(r["n_iter"] for r in rows)
        times = dict(times)
        width = times.pop("width", None) or padded_width(rows[0]["columns"])
        # A group that shares a wider width steps at most its own (integration.prefix_widths).
        step = integration.WIDTH_STEP
        width = min(width, -(-rows[0]["columns"] // step) * step)
        per_lam = []
        caps = integration.lam_caps(opts, np.asarray(lams), n_rows)  # the weak lams' own
        for lam, cap in zip(lams, caps, strict=True):
            n = [r["n_iter"] for r in rows if r["lam"] == lam]
            per_lam.append(dict(lam=lam, mean_iter=float(np.mean(n)),
                                at_cap=float(np.mean(np.asarray(n) >= cap))))  # fmt: skip
        tflop = iters * n_rows * width * 4 / 1e12
        out.append(dict(group=f"{rep}/{pool}", columns=rows[0]["columns"], width=width,
                        lanes=len(rows), lane_iterations=iters, **times,
                        full_width_tflop=tflop, per_lam=per_lam))  # fmt: skip
    return out


def profile_table(profile: list[dict]) -> str:
    lines = [
        "| group | columns | lanes | lane-iterations | s | gather s | lanes s | "
        "TFLOP at full width | TFLOP/s of the lanes | "
        "mean iterations by lam, strong to weak (share at the cap) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for g in profile:
        by_lam = ", ".join(f"{p['mean_iter']:.0f} ({p['at_cap']:.0%})" for p in g["per_lam"])
        lines.append(
            f"| {g['group']} | {g['columns']} | {g['lanes']} | {g['lane_iterations']:,} | "
            f"{g['seconds']:.1f} | {g['gather_s']:.1f} | {g['lanes_s']:.1f} | "
            f"{g['full_width_tflop']:.3g} | {g['full_width_tflop'] / g['lanes_s']:.3g} | {by_lam} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


def run_with_devices(n: int, argv: list[str]) -> dict:
    env = dict(os.environ)
    if "--quick" in argv:
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(n)))
    cmd = [sys.executable, __file__, *argv, "--worker"]
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"run on {n} devices failed (its stderr is above)")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(runs: list[dict]) -> str:
    base = runs[0]
    lines = [
        "| devices | extract s | rows/s per device | extract eff. | fit s | whole s | "
        "whole eff. | valid | evaluate s (rows) | test |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    whole0 = base["extract_s"] + base["fit_s"]
    for r in runs:
        n, whole = r["devices"], r["extract_s"] + r["fit_s"]
        scale = n / base["devices"]
        test = "" if r["test"] is None else f"{r['test']:.3f}"
        lines.append(
            f"| {n} | {r['extract_s']:.1f} | {r['rows'] / r['extract_s'] / n:,.1f} | "
            f"{base['extract_s'] / (scale * r['extract_s']):.0%} | {r['fit_s']:.1f} | "
            f"{whole:.1f} | {whole0 / (scale * whole):.0%} | {r['valid']:.3f} | "
            f"{r['eval_s']:.1f} ({r['test_rows']}) | {test} |"
        )
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    counts = [int(n) for n in args.devices.split(",")]
    rest = [a for i, a in enumerate(argv) if not a.startswith("--devices")
            and not (i and argv[i - 1] == "--devices")]  # fmt: skip
    runs = []
    for n in counts:
        runs.append(run_with_devices(n, rest))
        print(f"{n} devices: {json.dumps(runs[-1])}", flush=True)
    print()
    print(f"command: python benchmarks/fit_scaling.py {' '.join(argv)}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(
        f"model: {args.model} shape; device: {runs[0]['device_kind']}; "
        f"rows {runs[0]['rows']}, tokens {runs[0]['tokens']}; "
        f"features read from the {args.placement}"
    )
    print()
    print(table(runs))
    print()
    stages, reads = runs[0]["stage_s"], runs[0].get("probe_reads_s", 0.0)
    print(f"probes {stages.get('probes_s', 0.0):.1f} s, of it reading and copying their "
          f"features to the device {reads:.1f} s")  # fmt: skip
    union = runs[0].get("union_s") or 0.0
    first = f" (every group's columns gathered first: {union:.1f} s)" if union else ""
    print(f"integration, one device{first}:")
    print(profile_table(runs[0]["integration_profile"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=2)


if __name__ == "__main__":
    main()
