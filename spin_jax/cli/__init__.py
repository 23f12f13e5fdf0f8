"""The `spin-jax` command: thin argument parsing over library functions.

  common.py   argument types, flag groups, output-path checks
  extract.py  convert, extract
  learn.py    fit, evaluate, predict, explain, demo
  report.py   report

Each command module imports only common.py and the library; this module builds the parser
from them and turns a user's mistake (spin_jax.SpinJaxError) into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from spin_jax.cli import extract, learn, report


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="spin-jax", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not read or write compiled programs in the cache folder (spin_jax/cache.py)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    extract.add_commands(sub)
    learn.add_commands(sub)
    report.add_commands(sub)
    return parser


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the problem, and where the usage is."""

    def error(self, message):
        self.exit(2, f"spin-jax: error: {message} (see `{self.prog} --help`)\n")


def _interrupted(args) -> str:
    out = getattr(args, "out", None)
    kept = {"extract": "finished chunks", "fit": "extracted features and finished probe groups"}
    if args.command in kept and out:
        return (
            f"interrupted; the {kept[args.command]} are kept in {out}: "
            "re-run the same command to resume."
        )
    return "interrupted; nothing was written."


def main(argv=None) -> int:
    from spin_jax.errors import SpinJaxError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad argument (Parser.error printed the line)
        return int(e.code or 0)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    from spin_jax import cache

    if args.no_compilation_cache:
        os.environ[cache.ENV_OFF] = "1"  # for SpinClassifier too, in this process
    cache.enable_compilation_cache()
    try:
        args.func(args)
    except SpinJaxError as e:  # user mistakes end with one clear line, bugs with a traceback
        hint = f" ({e.cli_hint})" if e.cli_hint else ""
        print(f"spin-jax: error: {e}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nspin-jax: {_interrupted(args)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
