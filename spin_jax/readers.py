"""Tables of columns from local files (.csv, .tsv, .jsonl, .json, .parquet),
`datasets.save_to_disk` folders, or the Hugging Face hub (`hf:NAME[/CONFIG]`).

A reader knows formats, not texts or labels (spin_jax.data picks and checks the columns);
every mistake it can see (missing file, unsupported type, bad encoding, broken quoting, a
hub name that does not load) raises DataError whose message names the problem and the fix.
`datasets` is imported only for folders and hub names: some machines we run on lack it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from spin_jax.errors import DataError

FILE_TYPES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


class Table(NamedTuple):
    columns: list[str]
    n_rows: int
    get: Callable[[str], list]  # column name -> its values as Python objects
    class_names: dict[str, list[str]]  # HF ClassLabel columns: column -> names by id


def read_table(source: str, split: str | None) -> Table:
    if source.startswith("hf:"):
        return _read_hub(source[3:], split)
    path = Path(source)
    if not path.exists():
        raise DataError(
            f"file not found: {source}. Check the path; for a Hugging Face hub "
            "dataset write hf:NAME or hf:NAME/CONFIG."
        )
    if path.is_dir():
        return _read_saved(path, split)
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DataError(
            f"cannot read {source}: unsupported file type {suffix or '(none)'!r}; "
            f"use one of {', '.join(FILE_TYPES)} or a datasets.save_to_disk folder."
        )
    if path.stat().st_size == 0:
        raise DataError(f"{source} is empty; pass a file with a header and at least one row.")
    if suffix == ".parquet":
        return _read_parquet(path)
    text = _decode(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(text, "\t" if suffix == ".tsv" else ",", source)
    return _read_json(text, source)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path} is not valid UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start} "
            f"(line {line}). Re-encode the file as UTF-8, e.g. "
            f"iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}"
        ) from None
    return text.removeprefix("\ufeff")  # Excel writes a byte-order mark


def _read_csv(text: str, delimiter: str, source: str) -> Table:
    csv.field_size_limit(2**31 - 1)  # long documents exceed the 128 KiB default
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if r]
    except csv.Error as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise DataError(
            f"{source} is not valid {kind}: {e}. "
            "Check the quoting of fields that hold quotes or newlines."
        ) from None
    if not rows:
        raise DataError(f"{source} has no header and no rows; pass a file with data.")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    for i, row in enumerate(body):
        if len(row) > len(header):
            raise DataError(
                f"row {i + 1} of {source} has {len(row)} fields but the header has "
                f"{len(header)}; quote fields that contain the delimiter {delimiter!r}."
            )
    columns = {
        name: [row[j] if j < len(row) else None for row in body] for j, name in enumerate(header)
    }
    return Table(list(columns), len(body), columns.__getitem__, {})


def _read_json(text: str, source: str) -> Table:
    if text.lstrip().startswith("["):  # a whole-file JSON array of records
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{source} is not valid JSON: {e.msg} at line {e.lineno}; fix the "
                "file or write it as JSON Lines (one object per line)."
            ) from None
    else:
        records = []
        # split("\n"), not splitlines(): JSON strings may hold raw U+2028 line separators.
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(
                    f"line {lineno} of {source} is not valid JSON ({e.msg}); write "
                    "one JSON object per line (JSON Lines)."
                ) from None
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(
                f"row {i + 1} of {source} is a {type(record).__name__}, not a JSON "
                'object; write rows like {"text": "...", "label": "..."}.'
            )
    columns = list(dict.fromkeys(key for record in records for key in record))
    return Table(columns, len(records), lambda c: [r.get(c) for r in records], {})


def _read_parquet(path: Path) -> Table:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except (OSError, ValueError, pyarrow.ArrowException) as e:
        raise DataError(
            f"could not read {path} as Parquet ({e}); check that the file is "
            "Parquet, or convert it to .csv or .jsonl."
        ) from None
    return Table(table.column_names, table.num_rows, lambda c: table.column(c).to_pylist(), {})


def _import_datasets(source: str):
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"reading {source} needs the 'datasets' package, which is not "
            "installed; pip install datasets, or pass a .csv, .jsonl or .parquet "
            "file."
        ) from None
    return datasets


def _read_saved(path: Path, split: str | None) -> Table:
    datasets = _import_datasets(str(path))
    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as e:  # FileNotFoundError for an arbitrary folder
        raise DataError(
            f"{path} is a folder but not one written by datasets' save_to_disk "
            f"({e}); pass a data file or a save_to_disk folder."
        ) from None
    return _from_hf(_pick_split(datasets, ds, split, str(path)))


def _pick_split(datasets, ds, split: str | None, source: str):
    if not isinstance(ds, datasets.DatasetDict):
        return ds
    splits = list(ds.keys())
    if split is None and len(splits) == 1:
        return ds[splits[0]]
    if split is None or split not in ds:
        what = "holds several splits" if split is None else f"has no split {split!r}"
        raise DataError(
            f"{source} {what}; available splits: {', '.join(splits)}. "
            "Pass split= with one of them.",
            cli_hint="--split NAME",
        )
    return ds[split]


def _from_hf(ds) -> Table:
    class_names = {
        col: list(feature.names)
        for col, feature in ds.features.items()
        if type(feature).__name__ == "ClassLabel"
    }
    arrow = ds.with_format("arrow")  # 8x faster than iterating ds[col]
    return Table(list(ds.column_names), ds.num_rows, lambda c: arrow[c].to_pylist(), class_names)


def _hub_candidates(spec: str) -> list[tuple[str, str | None]]:
    """(name, config) readings of NAME[/CONFIG]; NAME itself may be "owner/repo"."""
    parts = spec.split("/")
    if not spec or "" in parts or len(parts) > 3:
        raise DataError(
            f"bad hub dataset hf:{spec}; write hf:NAME, hf:OWNER/NAME, "
            "hf:NAME/CONFIG or hf:OWNER/NAME/CONFIG."
        )
    if len(parts) == 1:
        return [(spec, None)]
    if len(parts) == 2:  # "stanfordnlp/imdb" is a repo, "glue/sst2" a name and config
        return [(spec, None), (parts[0], parts[1])]
    return [("/".join(parts[:2]), parts[2])]


def _read_hub(spec: str, split: str | None) -> Table:
    candidates = _hub_candidates(spec)
    datasets = _import_datasets(f"hf:{spec}")
    for k, (name, config) in enumerate(candidates):
        try:
            ds = datasets.load_dataset(name, config, split=split)
        except FileNotFoundError:  # datasets' DatasetNotFoundError too: try the next reading
            if k + 1 < len(candidates):
                continue
            raise DataError(_hub_failure(spec, "not found")) from None
        except Exception as e:  # noqa: BLE001 - network, auth and split errors vary by version
            raise DataError(_hub_failure(spec, f"{type(e).__name__}: {e}")) from None
        return _from_hf(_pick_split(datasets, ds, split, f"hf:{spec}"))
    raise AssertionError("unreachable")


def _hub_failure(spec: str, reason: str) -> str:
    offline = (
        " HF_HUB_OFFLINE is set, so only cached datasets load."
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        else ""
    )
    return (
        f"could not load Hugging Face dataset hf:{spec} ({reason}).{offline} If this "
        "machine is offline (HF_HUB_OFFLINE=1, no network) or the name is wrong, download "
        "the data elsewhere and pass a local .csv, .jsonl or .parquet file, or a "
        "datasets.save_to_disk folder."
    )
