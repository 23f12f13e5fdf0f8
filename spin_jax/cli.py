"""The `spin-jax` command: thin argument parsing over library functions."""

from __future__ import annotations

import argparse
import logging
import sys
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
BUDGET_HELP = "tokens per batch, padding included (default: spin_jax.extraction.TOKEN_BUDGET)"


def token_budget(args) -> int:
    from spin_jax.extraction import TOKEN_BUDGET

    return TOKEN_BUDGET if args.token_budget is None else args.token_budget


def _add_data_args(p, *, labels=True, required=True):
    p.add_argument(
        "--data",
        required=required,
        help="CSV/TSV/JSONL/Parquet file, a datasets folder, or hf:NAME[/CONFIG]",
    )
    p.add_argument("--split", default=None, help="split of a hub dataset or DatasetDict")
    p.add_argument("--text-column", default=None)
    if labels:
        p.add_argument("--label-column", default=None)


def _add_model_args(p):
    p.add_argument(
        "--model",
        required=True,
        help="HF hub id, HF model folder, or a folder written by `spin-jax convert`",
    )
    p.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--revision", default=None)


def cmd_convert(args):
    import spin_jax

    model = spin_jax.load_model(args.model_path, dtype=args.model_dtype, revision=args.revision)
    out = spin_jax.save_model(model, args.out)
    print(
        f"wrote {out} ({model.config.model_type}, {model.config.num_layers} layers, "
        f"fingerprint {model.fingerprint})"
    )


def cmd_extract(args):
    import spin_jax
    from spin_jax.data import load_texts
    from spin_jax.extraction import extract
    from spin_jax.selection import load_neurons

    check_out_folder(args.out)
    ds = load_texts(
        args.data,
        split=args.split,
        text_column=args.text_column,
        label_column=args.label_column,
        require_labels=False,
        allow_empty=args.allow_empty,
    )
    model = spin_jax.load_model(args.model, dtype=args.model_dtype, revision=args.revision)
    options = dict(
        max_length=args.max_length,
        chunk_rows=args.chunk_rows,
        token_budget=token_budget(args),
        progress=not args.quiet,
    )
    if args.classifier:
        store = _extract_kept(args, model, ds, options)
    else:
        neurons = None if args.neurons is None else load_neurons(args.neurons)
        poolings = tuple((args.poolings or ",".join(spin_jax.POOLINGS)).split(","))
        store = extract(
            model,
            ds,
            args.out,
            neurons=neurons,
            dtype=args.dtype or "float16",
            num_layers=args.num_layers,
            poolings=poolings,
            **options,
        )
    print(f"features of {store.n_rows} rows in {store.path}")


def _extract_kept(args, model, ds, options):
    """Only the neurons, layers and poolings that a fitted classifier reads."""
    from spin_jax.classifier import SpinClassifier
    from spin_jax.models import InputError

    given = [f"--{n}" for n in ("neurons", "num_layers", "poolings") if getattr(args, n)]
    if given:
        raise InputError(
            f"--classifier chooses the neurons, layers and poolings; drop {', '.join(given)}."
        )
    clf = SpinClassifier.load(args.classifier, model=model)
    options["max_length"] = options["max_length"] or clf.max_length
    return clf.extract_kept(ds, args.out, dtype=args.dtype or "float32", **options)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="spin-jax", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an HF checkpoint to an orbax checkpoint")
    p.add_argument("model_path")
    p.add_argument("out")
    p.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--revision", default=None)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "extract", help="extract pooled features of every layer, or of selected neurons"
    )
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float16", "bfloat16", "float32"],
        help="storage dtype (default float16; float32 with --classifier)",
    )
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--num-layers", type=int, default=None, help="early exit after k blocks")
    p.add_argument("--poolings", default=None, help="default token,mean,max")
    p.add_argument(
        "--neurons",
        default=None,
        help='JSON file: only these neurons, e.g. {"hidden": {"0": [3, 7]}, "ffn": {"2": [10]}}',
    )
    p.add_argument(
        "--classifier",
        default=None,
        help="a `spin-jax fit --out` folder: only the neurons, layers and poolings it reads",
    )
    p.add_argument("--chunk-rows", type=int, default=None)
    p.add_argument("--token-budget", type=int, default=None, help=BUDGET_HELP)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--allow-empty", action="store_true", help=ALLOW_EMPTY_HELP)
    p.set_defaults(func=cmd_extract)

    from spin_jax import cli_learn

    cli_learn.add_commands(sub)
    return parser


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the problem, and where the usage is."""

    def error(self, message):
        self.exit(2, f"spin-jax: error: {message} (see `{self.prog} --help`)\n")


def _interrupted(args) -> str:
    out = getattr(args, "out", None)
    if args.command in ("fit", "extract") and out:
        return (
            f"interrupted; the finished chunks and probe groups are kept in {out}: "
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
