"""`spin-jax convert / extract`: checkpoints and feature stores."""

from __future__ import annotations

from spin_jax.cli.common import (
    ALLOW_EMPTY_HELP,
    BUDGET_HELP,
    add_data_args,
    add_model_args,
    check_out_folder,
    token_budget,
)


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


def add_commands(sub) -> None:
    p = sub.add_parser("convert", help="convert an HF checkpoint to an orbax checkpoint")
    p.add_argument("model_path")
    p.add_argument("out")
    p.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--revision", default=None)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "extract", help="extract pooled features of every layer, or of selected neurons"
    )
    add_model_args(p)
    add_data_args(p)
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
