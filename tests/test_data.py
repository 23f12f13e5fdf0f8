"""spin_jax.data: every input format, label encodings, and one test per user mistake."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spin_jax.data import (
    DataError,
    TextDataset,
    check_classes,
    load_texts,
    stratified_split,
    subset,
)

TEXTS = ["great film", "awful, truly", 'said "wow"\nthen left', ""]
LABELS = ["pos", "neg", "pos", "neg"]


def write_csv(path, header, rows, delimiter=","):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def assert_expected(ds):
    assert ds.texts == TEXTS
    assert ds.label_names == ("neg", "pos")
    np.testing.assert_array_equal(ds.labels, [1, 0, 1, 0])
    assert ds.labels.dtype == np.int64


@pytest.mark.parametrize("suffix,delimiter", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv(tmp_path, suffix, delimiter):
    path = write_csv(
        tmp_path / f"d{suffix}", ["text", "label"], zip(TEXTS, LABELS, strict=True), delimiter
    )
    ds = load_texts(path, allow_empty=True)  # TEXTS end with an empty cell
    assert_expected(ds)
    assert ds.source == str(path)


def test_jsonl_and_json_array(tmp_path):
    records = [{"text": t, "label": y} for t, y in zip(TEXTS, LABELS, strict=True)]
    assert_expected(load_texts(write_jsonl(tmp_path / "d.jsonl", records), allow_empty=True))
    (tmp_path / "d.json").write_text(json.dumps(records), encoding="utf-8")
    assert_expected(load_texts(tmp_path / "d.json", allow_empty=True))


def test_parquet(tmp_path):
    pq.write_table(pa.table({"text": TEXTS, "label": LABELS}), tmp_path / "d.parquet")
    assert_expected(load_texts(tmp_path / "d.parquet", allow_empty=True))


def test_save_to_disk_folder_and_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_dict({"text": TEXTS, "label": LABELS})
    test = datasets.Dataset.from_dict({"text": ["meh"], "label": ["pos"]})
    train.save_to_disk(tmp_path / "single")
    assert_expected(load_texts(tmp_path / "single", allow_empty=True))
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "dict")
    assert_expected(load_texts(tmp_path / "dict", split="train", allow_empty=True))
    assert load_texts(tmp_path / "dict", split="test").texts == ["meh"]
    with pytest.raises(DataError, match="several splits.*train, test.*split="):
        load_texts(tmp_path / "dict")
    with pytest.raises(DataError, match="no split 'valid'.*train, test"):
        load_texts(tmp_path / "dict", split="valid")


def test_class_label_keeps_dataset_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["positive", "negative"]),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"sentence": ["a", "b", "c"], "label": [1, 0, 1]}, features=features
    )
    ds.save_to_disk(tmp_path / "cl")
    out = load_texts(tmp_path / "cl")
    # Ids and names follow the dataset, not a re-sort of the names.
    assert out.label_names == ("positive", "negative")
    np.testing.assert_array_equal(out.labels, [1, 0, 1])
    # GLUE-style test split: every label -1 is "no labels", accepted only for prediction.
    datasets.Dataset.from_dict(
        {"sentence": ["a", "b"], "label": [-1, -1]}, features=features
    ).save_to_disk(tmp_path / "unlabelled")
    assert load_texts(tmp_path / "unlabelled", require_labels=False).labels is None
    with pytest.raises(DataError, match="label is missing in row 1"):
        load_texts(tmp_path / "unlabelled")


def test_hub_names_and_offline_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "glue/sst2":  # not a repo id: falls back to name "glue", config "sst2"
            raise datasets.exceptions.DatasetNotFoundError(name)
        return datasets.Dataset.from_dict({"sentence": ["x", "y"], "label": [0, 1]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    ds = load_texts("hf:glue/sst2", split="train")
    assert calls == [("glue/sst2", None, "train"), ("glue", "sst2", "train")]
    assert ds.texts == ["x", "y"] and ds.label_names == ("0", "1")
    calls.clear()
    load_texts("hf:nyu-mll/glue/sst2", split="validation")
    assert calls == [("nyu-mll/glue", "sst2", "validation")]

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_HUB_OFFLINE.*local .csv"):
        load_texts("hf:imdb", split="train")


def test_excel_byte_order_mark_is_dropped(tmp_path):
    (tmp_path / "x.csv").write_text("text,label\nhi,pos\nho,neg\n", encoding="utf-8-sig")
    assert load_texts(tmp_path / "x.csv").texts == ["hi", "ho"]


def test_int_labels_sort_numerically(tmp_path):
    rows = [("a", 10), ("b", 2), ("c", 1), ("d", 2)]
    ds = load_texts(write_csv(tmp_path / "d.csv", ["review", "stars"], rows))
    # "10" would sort before "2" as a string; CSV integer strings are read as numbers.
    assert ds.label_names == ("1", "2", "10")
    np.testing.assert_array_equal(ds.labels, [2, 1, 0, 1])
    records = [{"content": "a", "class": 3.0}, {"content": "b", "class": 1}]
    ds = load_texts(write_jsonl(tmp_path / "d.jsonl", records))
    assert ds.label_names == ("1", "3")
    np.testing.assert_array_equal(ds.labels, [1, 0])


def test_explicit_columns_win(tmp_path):
    rows = [("ignored", "body one", "x", "pos"), ("ignored", "body two", "y", "neg")]
    path = write_csv(tmp_path / "d.csv", ["text", "body", "label", "mood"], rows)
    ds = load_texts(path, text_column="body", label_column="mood")
    assert ds.texts == ["body one", "body two"]
    assert ds.label_names == ("neg", "pos")


def test_label_names_from_fit_time(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [("a", "pos"), ("b", "pos")])
    ds = load_texts(path, label_names=["neg", "pos", "neutral"])
    assert ds.label_names == ("neg", "pos", "neutral")
    np.testing.assert_array_equal(ds.labels, [1, 1])
    with pytest.raises(DataError, match="label 'pos' in row 1 .*not seen at fit time.*neg, bad"):
        load_texts(path, label_names=["neg", "bad"])


def test_predict_without_labels(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": 5}])
    ds = load_texts(path, require_labels=False, label_names=["neg", "pos"])
    assert ds.texts == ["a", "5"]  # non-strings become strings
    assert ds.labels is None and ds.label_names == ("neg", "pos")
    with pytest.raises(DataError, match="no label column.*available columns: text.*label_column="):
        load_texts(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found: .*nope.csv.*Check the path"):
        load_texts(tmp_path / "nope.csv")


def test_missing_column_lists_available(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", ["body", "stars"], [("a", 1), ("b", 2)])
    with pytest.raises(DataError) as err:
        load_texts(path, label_column="stars")
    assert "no text column" in str(err.value)
    assert "available columns: body, stars" in str(err.value)
    assert "text_column=" in str(err.value) and err.value.cli_hint == "--text-column NAME"
    with pytest.raises(DataError, match="column 'review' not found.*body, stars.*text_column="):
        load_texts(path, text_column="review")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_empty_file(tmp_path, suffix):
    (tmp_path / f"e{suffix}").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load_texts(tmp_path / f"e{suffix}")


def test_header_only_and_blank_files_have_no_rows(tmp_path):
    (tmp_path / "h.csv").write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match="has no rows"):
        load_texts(tmp_path / "h.csv")
    (tmp_path / "b.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="has no rows"):
        load_texts(tmp_path / "b.jsonl")


def test_non_utf8_names_offset(tmp_path):
    data = "text,label\ncafé,pos\n".encode("latin-1")
    (tmp_path / "l1.csv").write_bytes(data)
    with pytest.raises(DataError) as err:
        load_texts(tmp_path / "l1.csv")
    message = str(err.value)
    assert "l1.csv is not valid UTF-8" in message
    assert f"byte offset {data.index(0xE9)}" in message and "line 2" in message
    assert "Re-encode" in message


def test_nan_and_empty_labels_give_row(tmp_path):
    pq.write_table(
        pa.table({"text": ["a", "b", "c"], "label": [1.0, float("nan"), 0.0]}),
        tmp_path / "n.parquet",
    )
    with pytest.raises(DataError, match="label is missing in row 2 .*column 'label'"):
        load_texts(tmp_path / "n.parquet")
    path = write_csv(tmp_path / "e.csv", ["text", "label"], [("a", "pos"), ("b", "pos"), ("c", "")])
    with pytest.raises(DataError, match="label is missing in row 3"):
        load_texts(path)


def test_missing_text_gives_row(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": None, "label": 1}]
    )
    with pytest.raises(DataError, match="text is missing in row 2"):
        load_texts(path)


def test_malformed_inputs(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\n{"text": \n', "utf-8")
    with pytest.raises(DataError, match="line 2 of .*bad.jsonl is not valid JSON"):
        load_texts(tmp_path / "bad.jsonl")
    (tmp_path / "ragged.csv").write_text("text,label\na,pos,extra\n", "utf-8")
    with pytest.raises(DataError, match="row 1 .* has 3 fields but the header has 2"):
        load_texts(tmp_path / "ragged.csv")
    (tmp_path / "notparquet.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="could not read .* as Parquet"):
        load_texts(tmp_path / "notparquet.parquet")
    (tmp_path / "d.xlsx").write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        load_texts(tmp_path / "d.xlsx")


def test_single_class_refused():
    check_classes(np.array([0, 1, 1]), ("neg", "pos"))  # two classes: fine
    with pytest.raises(DataError, match="only one class 'pos'.*at least two"):
        check_classes(np.array([1, 1, 1]), ("neg", "pos"))
    with pytest.raises(DataError, match="at least two"):
        check_classes(np.array([], np.int64))


def test_stratified_split_properties():
    labels = np.array([0] * 50 + [1] * 7 + [2] * 2 + [3] * 1)
    np.random.default_rng(1).shuffle(labels)
    train, valid = stratified_split(labels, fraction=0.2, seed=3)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(valid) > 0)  # sorted, no repeats
    assert len(np.intersect1d(train, valid)) == 0
    np.testing.assert_array_equal(np.union1d(train, valid), np.arange(len(labels)))
    counts = {c: int(np.sum(labels[valid] == c)) for c in range(4)}
    assert counts == {0: 10, 1: 1, 2: 1, 3: 0}  # each class with >= 2 rows is represented
    assert set(labels[train]) == {0, 1, 2, 3}  # and keeps a training row
    again = stratified_split(labels, fraction=0.2, seed=3)
    np.testing.assert_array_equal(again[1], valid)
    other = stratified_split(labels, fraction=0.2, seed=4)
    assert not np.array_equal(other[1], valid)
    with pytest.raises(DataError, match="between 0 and 1"):
        stratified_split(labels, fraction=1.5)


def test_subset():
    ds = TextDataset(["a", "b", "c"], np.array([0, 1, 0]), ("x", "y"), "mem")
    part = subset(ds, np.array([2, 0]))
    assert part.texts == ["c", "a"]
    np.testing.assert_array_equal(part.labels, [0, 0])
    assert part.label_names == ("x", "y") and len(part) == 2
    assert subset(ds, np.array([False, True, False])).texts == ["b"]
