"""What the commands share: argument types, flag groups, and checks of output paths made
before any work (so a run cannot fail at its end for a path it was given)."""

from __future__ import annotations

import argparse
from pathlib import Path


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1; pass e.g. 0.2")
    return value


def eta_list(text: str) -> tuple[float, ...]:
    """Comma-separated shares in (0, 1], e.g. 0.1,0.5,0.8."""
    etas = []
    for part in text.split(","):
        try:
            eta = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a number; pass shares in (0, 1] like 0.1,0.5,0.8"
            ) from None
        if not 0.0 < eta <= 1.0:
            raise argparse.ArgumentTypeError(f"eta {eta} is not in (0, 1]; pass e.g. 0.1,0.5")
        etas.append(eta)
    return tuple(etas)


def check_out_file(path: str | None) -> None:
    """Refuses, before any work, an output file that could not be written at the end."""
    from spin_jax.errors import DataError

    if path is None:
        return
    out = Path(path)
    if out.is_dir():
        raise DataError(f"output {path} is a folder; pass a file path such as {path}/out.csv.")
    if not out.parent.is_dir():
        raise DataError(
            f"cannot write {path}: the folder {out.parent} does not exist; create it first."
        )


def check_out_folder(path: str) -> None:
    """An --out folder: absent (it is created) or a folder, never an existing file."""
    from spin_jax.errors import DataError

    if Path(path).exists() and not Path(path).is_dir():
        raise DataError(f"--out {path} is an existing file; pass a folder path.")


ALLOW_EMPTY_HELP = "accept empty or whitespace-only texts (refused by default)"
BUDGET_HELP = (
    "tokens per batch, padding included (default: spin_jax.extraction.TOKEN_BUDGET; on CPU "
    "at most batching.CPU_TOKEN_BUDGET = 8192, in batches padded close to their longest row)"
)


def token_budget(args) -> int:
    from spin_jax.extraction import TOKEN_BUDGET

    return TOKEN_BUDGET if args.token_budget is None else args.token_budget


def add_data_args(p, *, labels=True, required=True):
    p.add_argument(
        "--data",
        required=required,
        help="CSV/TSV/JSONL/Parquet file, a datasets folder, or hf:NAME[/CONFIG]",
    )
    p.add_argument("--split", default=None, help="split of a hub dataset or DatasetDict")
    p.add_argument("--text-column", default=None)
    if labels:
        p.add_argument("--label-column", default=None)


def add_model_args(p):
    p.add_argument(
        "--model",
        required=True,
        help="HF hub id, HF model folder, or a folder written by `spin-jax convert`",
    )
    p.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--revision", default=None)
