"""How long a user waits for `spin-jax predict` (or evaluate) of a few rows: each call a
fresh process (imports, model and tokenizer load, compiles read from the persistent
cache), warm cache.

Optionally beside another checkout of spin_jax (`--other PATH`, e.g. an older commit from
`git archive REV | tar -x -C PATH`), interleaved call by call, same run folder and rows.

    PYTHONPATH=. python benchmarks/cli_latency.py --run spin-jax-demo --rounds 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CALL = "import sys; from spin_jax.cli import main; sys.exit(main(sys.argv[1:]))"


def rows_file(n: int) -> str:
    from spin_jax.cli.learn import DEMO_DATA

    lines = Path(DEMO_DATA).read_text().splitlines()[:n]
    f = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
    f.write("\n".join(lines) + "\n")
    f.close()
    return f.name


def one_call(code: str, run: str, data: str, command: str) -> float:
    env = {**os.environ, "PYTHONPATH": code}
    cmd = [sys.executable, "-c", CALL, command, run, "--data", data]
    if command == "predict":
        cmd += ["--out", tempfile.mktemp(suffix=".csv")]
    t0 = time.perf_counter()
    # cwd elsewhere: `python -c` puts the working directory first on sys.path
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="spin-jax-demo", help="a fitted run folder")
    p.add_argument("--rows", type=int, default=5)
    p.add_argument("--command", default="predict", choices=["predict", "evaluate"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--other", help="another spin_jax checkout, timed beside this one")
    args = p.parse_args(argv)
    data, args.run = rows_file(args.rows), str(Path(args.run).resolve())
    sides = {"this": str(Path(".").resolve())}
    if args.other:
        sides["other"] = str(Path(args.other).resolve())
    for code in sides.values():
        one_call(code, args.run, data, args.command)  # fills the compilation cache
    times = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, code in sides.items():
            times[name].append(one_call(code, args.run, data, args.command))
    now = datetime.datetime.now(datetime.UTC)
    print(f"# cli_latency.py, {now:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPU cores; "
          f"{args.command} of {args.rows} rows, {args.rounds} rounds")  # fmt: skip
    for name, t in times.items():
        rounded = [round(x, 2) for x in t]
        print(f"{name} ({sides[name]}): median {statistics.median(t):.2f} s, all {rounded}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
