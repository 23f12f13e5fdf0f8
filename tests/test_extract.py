"""Extraction: CLI features == direct forward, resume, refusals, batching plan, compile count,
features kept on the device == on the host, 8 fake CPU devices == 1 device (full and
selective, on the host and on the device), run summary.

One tiny random BERT (vocab 30522 so that MiniLM's real tokenizer fits it), saved with
save_pretrained into a temporary folder: no download, a compile costs well under a second.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import spin_jax
from spin_jax import extraction as extract_mod
from spin_jax.cli import main
from spin_jax.data import DataError, load_texts
from spin_jax.extraction import DeviceFeatures, MemoryFeatures, extract, plan_batches
from spin_jax.models import InputError
from spin_jax.selection import parse_neurons
from spin_jax.store import FeatureStore, StoreError, StoreMismatchError
from tests.fake_devices import run_python

pytest.importorskip("torch")
TOL = 1e-5
MAX_LENGTH = 24  # < the model's 67 positions, so --max-length is what truncates
# extract's options of most tests; the texts hold an empty one on purpose
FP32 = dict(max_length=MAX_LENGTH, dtype="float32", progress=False, allow_empty=True)
NEURONS = {"hidden": {0: [3], 1: [0, 39]}, "ffn": {2: [7, 55]}}  # a selective extraction
WORDS = (
    "the movie was good bad long short film actor plot scene music story end "
    "great poor slow fast love hate"
).split()


def make_texts(n: int, seed: int, max_words: int) -> list[str]:
    """A shuffled mix of lengths: one empty text, some longer than MAX_LENGTH tokens."""
    rng = np.random.default_rng(seed)
    lengths = [0, max_words, max_words - 3, 1, *rng.integers(1, max_words, n - 4)]
    texts = [" ".join(rng.choice(WORDS, k)) for k in lengths]
    rng.shuffle(texts)
    return texts


@pytest.fixture(scope="module")
def model(folder):
    return spin_jax.load_model(str(folder))


@pytest.fixture(scope="module")
def texts():
    return make_texts(23, seed=1, max_words=40)


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory, texts):
    path = tmp_path_factory.mktemp("data") / "texts.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([t, i % 2] for i, t in enumerate(texts))
    return path


def extract_args(folder, csv_file, out, *extra):
    return [  # the texts hold an empty one on purpose
        "extract",
        "--allow-empty",
        "--model",
        str(folder),
        "--data",
        str(csv_file),
        "--out",
        str(out),
        "--dtype",
        "float32",
        "--quiet",
        "--max-length",
        str(MAX_LENGTH),
        *extra,
    ]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, folder, csv_file):
    """A store written by the CLI in chunks of 7 rows."""
    out = tmp_path_factory.mktemp("cli") / "features"
    assert main(extract_args(folder, csv_file, out, "--chunk-rows", "7")) == 0
    return out


def reference(model, texts, max_length=MAX_LENGTH):
    """Pooled features from direct `forward` calls, [N, L+1, P, D] and [N, L, P, F].

    Tokenised by the HF tokenizer itself (truncation keeps [SEP] last), independently of
    spin_jax.encode, and padded to a length no bucket uses.
    """
    enc = hf_tokenizer(model)(texts, truncation=True, max_length=max_length)["input_ids"]
    ids, mask = spin_jax.pad_batch([np.asarray(e) for e in enc], max_length + 5)
    f = spin_jax.forward(model, ids, mask)
    return np.moveaxis(np.asarray(f.hidden), 0, 1), np.moveaxis(np.asarray(f.ffn), 0, 1)


def n_overlong(model, texts, max_length=MAX_LENGTH):
    return sum(len(e) > max_length for e in hf_tokenizer(model)(texts)["input_ids"])


def hf_tokenizer(model):
    """transformers' own tokenizer of the model's folder (spin_jax reads tokenizer.json
    itself: spin_jax.tokenizer), so the reference is independent of spin_jax."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model.source)


# ---- features --------------------------------------------------------------------------


def test_cli_features_equal_direct_forward(store_dir, model, texts):
    assert n_overlong(model, texts) >= 2 and "" in texts  # the mix the test is about
    store = FeatureStore.open(store_dir, verify=True)
    assert store.n_chunks == 4
    hidden, ffn = store.read("hidden"), store.read("ffn")
    L, P = model.config.num_layers, len(spin_jax.POOLINGS)
    assert hidden.shape == (len(texts), L + 1, P, model.config.hidden_size)
    assert ffn.shape == (len(texts), L, P, model.config.ffn_size)
    want_h, want_f = reference(model, texts)
    np.testing.assert_allclose(hidden, want_h, atol=TOL, rtol=0)
    np.testing.assert_allclose(ffn, want_f, atol=TOL, rtol=0)
    np.testing.assert_array_equal(store.labels, np.arange(len(texts)) % 2)


def test_empty_text_gives_a_finite_row(store_dir, texts):
    store = FeatureStore.open(store_dir)
    row = [texts.index("")]
    for name in ("hidden", "ffn"):
        x = store.read(name, rows=row)
        assert np.isfinite(x).all() and np.abs(x).sum() > 0, name


def test_summary(store_dir, model, texts):
    summary = json.loads((store_dir / "summary.json").read_text())
    enc = hf_tokenizer(model)(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    assert summary["rows"] == len(texts)
    assert summary["tokens"] == sum(map(len, enc))
    assert summary["truncated"] == n_overlong(model, texts)
    assert summary["padded_tokens"] >= summary["tokens"]
    assert summary["padding_fraction"] == pytest.approx(
        1 - summary["tokens"] / summary["padded_tokens"]
    )
    assert 0 <= summary["padding_fraction"] < 1
    assert (summary["chunks_done"], summary["chunks_skipped"]) == (4, 0)


def test_memory_features_equal_store(store_dir, model, texts):
    mem = extract(model, texts, **FP32, placement="host")
    store = FeatureStore.open(store_dir)
    assert isinstance(mem, MemoryFeatures) and mem.n_rows == len(texts)
    for name in ("hidden", "ffn"):
        np.testing.assert_allclose(mem.read(name), store.read(name), atol=TOL, rtol=0)
    sel = dict(rows=[3, 0], layers=[-1], poolings=[1])
    np.testing.assert_array_equal(
        mem.read("hidden", **sel), mem.read("hidden")[[3, 0]][:, [-1]][:, :, [1]]
    )


# ---- features kept on the device ---------------------------------------------------------


@pytest.mark.parametrize("neurons", [None, NEURONS])
def test_device_placement_equals_host(model, texts, neurons):
    """Rows of a shuffled length mix, assembled on the device in their original order."""
    kw = dict(
        max_length=MAX_LENGTH, dtype="float32", progress=False, allow_empty=True, neurons=neurons
    )
    host = extract(model, texts, placement="host", **kw)
    dev = extract(model, texts, placement="device", **kw)
    assert type(host) is MemoryFeatures and type(dev) is DeviceFeatures
    assert set(dev.arrays) == set(host.arrays) == ({"columns"} if neurons else {"hidden", "ffn"})
    assert dev.n_rows == len(texts) and dev.manifest == host.manifest
    np.testing.assert_array_equal(dev.labels, host.labels)
    for name, x in dev.arrays.items():
        assert isinstance(x, jax.Array) and dev.shape(name) == host.shape(name)
        np.testing.assert_array_equal(np.asarray(x), host.arrays[name], err_msg=name)


@pytest.mark.parametrize(
    "sel",
    [
        {},
        dict(rows=[3, 0, 3]),
        dict(layers=[-1, 0], poolings=[2]),
        dict(rows=np.arange(5, 1, -1), layers=[1], poolings=[0, 1], neurons=[9, 2]),
        dict(rows=[6], neurons=[-1]),
    ],
)
def test_device_read_equals_memory_read(sel):
    rng = np.random.default_rng(0)
    arrays = {"hidden": rng.normal(size=(7, 3, 3, 11)).astype(np.float16)}
    arrays["columns"] = rng.normal(size=(7, 3, 5)).astype(np.float16)
    mem = MemoryFeatures(arrays, None, None, {})
    dev = DeviceFeatures({k: jax.numpy.asarray(v) for k, v in arrays.items()}, None, None, {})
    for name in arrays:
        s = sel if name == "hidden" else {k: v for k, v in sel.items() if k != "neurons"}
        for dtype in (np.float32, None):
            got, want = dev.read(name, dtype=dtype, **s), mem.read(name, dtype=dtype, **s)
            assert isinstance(got, jax.Array) and got.dtype == want.dtype, (name, dtype)
            np.testing.assert_array_equal(np.asarray(got), want)
    with pytest.raises(IndexError):
        dev.read("hidden", layers=[3])


def test_memory_read_follows_the_store_rules():
    """Same index rules and errors as FeatureStore.read (they share _selection)."""
    hidden = np.arange(7 * 3 * 2 * 5, dtype=np.float32).reshape(7, 3, 2, 5)
    mem = MemoryFeatures({"hidden": hidden, "columns": hidden[:, 0]}, None, None, {})
    assert mem.read("hidden", rows=[]).shape == (0, 3, 2, 5)
    mask = np.array([True, False, True, False, False, False, True])
    np.testing.assert_array_equal(mem.read("hidden", rows=mask), hidden[mask])
    np.testing.assert_array_equal(mem.read("hidden", neurons=[-1]), hidden[..., [-1]])
    with pytest.raises(StoreError, match="out of range"):
        mem.read("hidden", layers=[3])
    with pytest.raises(StoreError, match="no axis 3"):
        mem.read("columns", neurons=[0])
    with pytest.raises(StoreError, match="no array .ffn."):
        mem.read("ffn")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="auto placement on CPU")
def test_auto_placement_on_cpu_keeps_features_on_the_host(model):
    feats = extract(
        model, ["a film", "the end"], max_length=MAX_LENGTH, progress=False, allow_empty=True
    )
    assert type(feats) is MemoryFeatures


class FakeDevice:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


GIB = 1 << 30
SPECS = {"hidden": ((5, 1, 2), "float16"), "ffn": ((1, 1, 30), "float32")}  # 140 bytes a row


@pytest.mark.parametrize(
    "backend,stats,want",
    [
        ("cpu", {"bytes_limit": GIB, "bytes_in_use": 0}, "host"),
        ("gpu", {"bytes_limit": GIB, "bytes_in_use": 0}, "device"),
        ("tpu", {"bytes_limit": GIB, "bytes_in_use": GIB - 4 * 980 - 4}, "device"),
        ("gpu", {"bytes_limit": GIB, "bytes_in_use": GIB - 4 * 980}, "host"),  # a quarter
        ("gpu", {"bytes_limit": 1000}, "host"),  # nothing in use, yet too small
        ("gpu", None, "host"),  # the backend reports no memory statistics
        ("gpu", {}, "host"),
    ],
)
def test_auto_placement_rule(monkeypatch, backend, stats, want):
    """The device when the arrays (7 rows: 980 bytes) take under a quarter of its free memory."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax, "local_devices", lambda: [FakeDevice(stats)])
    assert extract_mod.placement_of("auto", SPECS, 7) == want
    assert extract_mod.placement_of("host", SPECS, 7) == "host"
    assert extract_mod.placement_of("device", SPECS, 7) == "device"


def test_bad_placements_are_refused(tmp_path, model):
    kw = dict(max_length=MAX_LENGTH, progress=False, allow_empty=True)
    with pytest.raises(InputError, match=r"placement='gpu': choose one of \('auto'"):
        extract(model, ["a film"], placement="gpu", **kw)
    with pytest.raises(InputError, match="placement='device'.*drop `out`"):
        extract(model, ["a film"], tmp_path / "store", placement="device", **kw)
    assert not (tmp_path / "store").exists()
    store = extract(model, ["a film"], tmp_path / "store", placement="host", **kw)
    assert isinstance(store, FeatureStore)
    assert issubclass(InputError, ValueError) and issubclass(DataError, ValueError)


# ---- resume and refusals -----------------------------------------------------------------


class Crash(Exception):
    pass


def chunk_digests(path: Path) -> dict[str, str]:
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.glob("*-*.npy"))
    }


def test_resume_after_crash_gives_identical_files(tmp_path, folder, csv_file, monkeypatch):
    args = lambda out: extract_args(folder, csv_file, out, "--chunk-rows", "3")  # noqa: E731
    assert main(args(tmp_path / "whole")) == 0
    whole = chunk_digests(tmp_path / "whole")
    assert len(whole) == 2 * 8  # 23 rows in chunks of 3, hidden and ffn

    real_write, real_run = FeatureStore.write_chunk, extract_mod._Runner.run_rows
    writes, runs = [], []

    def crashing_write(self, i, arrays, **kw):
        if len(writes) == 2:
            raise Crash("power cut")
        writes.append(i)
        real_write(self, i, arrays, **kw)

    def counting_run(self, ids, rows, specs):
        runs.append((int(rows[0]), len(rows)))
        return real_run(self, ids, rows, specs)

    monkeypatch.setattr(FeatureStore, "write_chunk", crashing_write)
    monkeypatch.setattr(extract_mod._Runner, "run_rows", counting_run)
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        main(args(out))
    assert writes == [0, 1] and len(chunk_digests(out)) == 4
    with pytest.raises(Exception, match="incomplete"):
        FeatureStore.open(out)

    monkeypatch.setattr(FeatureStore, "write_chunk", real_write)
    runs.clear()
    assert main(args(out)) == 0
    assert runs == [(3 * i, 3 if i < 7 else 2) for i in range(2, 8)]  # only the missing chunks
    assert chunk_digests(out) == whole
    FeatureStore.open(out, verify=True)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["chunks_done"], summary["chunks_skipped"]) == (6, 2)


def test_rerun_with_another_max_length_is_refused(store_dir, folder, csv_file, capsys):
    before = chunk_digests(store_dir)
    args = extract_args(folder, csv_file, store_dir, "--chunk-rows", "7")
    args[args.index("--max-length") + 1] = str(MAX_LENGTH + 1)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("spin-jax: error:") and "max_length" in err
    assert f"stored {MAX_LENGTH}, new {MAX_LENGTH + 1}" in err
    assert chunk_digests(store_dir) == before  # nothing was overwritten


def test_rerun_with_another_model_is_refused(store_dir, model, csv_file):
    other = dataclasses.replace(model, params=jax.tree.map(lambda x: x * 1.01, model.params))
    assert other.fingerprint != model.fingerprint
    before = chunk_digests(store_dir)
    # as the CLI read it: only the model differs
    ds = load_texts(csv_file, require_labels=False, allow_empty=True)
    with pytest.raises(StoreMismatchError, match="params_fingerprint") as e:
        extract(
            other,
            ds,
            store_dir,
            max_length=MAX_LENGTH,
            dtype="float32",
            chunk_rows=7,
            progress=False,
            allow_empty=True,
        )
    assert "max_length" not in str(e.value) and "texts_sha256" not in str(e.value)
    assert chunk_digests(store_dir) == before


# ---- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing file", "missing column", "empty file", "header only"])
def test_bad_input_exits_2_with_a_message(case, tmp_path, folder, capsys):
    data, extra, words = tmp_path / "data.csv", [], ["data.csv"]
    if case == "missing column":
        data.write_text("text\nhello\n")
        extra, words = ["--text-column", "review"], ["'review'", "available columns: text"]
    elif case == "empty file":
        data.write_text("")
        words = ["data.csv is empty"]
    elif case == "header only":
        data.write_text("text,label\n")
        words = ["has no rows"]
    else:
        words = ["file not found", "data.csv"]
    out = tmp_path / "out"
    assert main(extract_args(folder, data, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("spin-jax: error:")
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()


@pytest.mark.parametrize(
    "option,value,words",
    [
        ("--num-layers", "4", ["num_layers=4", "[0, 3]"]),
        ("--num-layers", "-1", ["num_layers=-1"]),
        ("--max-length", "0", ["max_length=0", "positive"]),
        ("--poolings", "mean,median", ["median"]),
    ],
)
def test_bad_options_exit_2_before_a_store_is_made(
    option, value, words, tmp_path, folder, csv_file, capsys
):
    args = extract_args(folder, csv_file, tmp_path / "out")
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("spin-jax: error:")
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "out").exists()


# ---- batching and compilation --------------------------------------------------------------


@pytest.mark.parametrize("multiple", [1, 8])
def test_plan_batches_covers_rows_in_few_shapes(multiple):
    rng = np.random.default_rng(multiple)
    lengths = np.concatenate([rng.integers(1, 600, 990), [1, 2, 16, 17, 512, 513, 599, 3]])
    max_length, budget = 512, 4096
    plan = plan_batches(lengths, max_length, budget, multiple)
    rows = np.concatenate([r for r, _, _ in plan])
    np.testing.assert_array_equal(np.sort(rows), np.arange(len(lengths)))
    shapes = {(blen, size) for _, blen, size in plan}
    assert len(shapes) <= len(extract_mod.BUCKETS)
    assert len(plan) > 2 * len(shapes)  # shapes repeat
    for r, blen, size in plan:
        assert 1 <= len(r) <= size and size % multiple == 0
        assert blen <= max_length
        assert (np.minimum(lengths[r], max_length) <= blen).all()
        assert size * blen <= max(budget, multiple * blen)
    # One batch size per padded length, so the number of shapes is the number of buckets.
    assert len(shapes) == len({blen for blen, _ in shapes})
    # Longest first, each batch padded to its longest row's bucket, and no empty row but in
    # the last batch: a short row fills a longer batch rather than leave a row empty.
    for r, blen, size in plan[:-1]:
        assert len(r) == size
        assert blen == extract_mod.bucket_length(int(lengths[r].max()), max_length)
    assert (np.diff(lengths[rows]) <= 0).all()


def test_plan_batches_few_long_rows_get_a_small_batch():
    """One long row among short ones is not padded out with a full batch of short rows."""
    lengths = np.array([1000] + [20] * 49)
    plan = plan_batches(lengths, 1024, 32768)
    assert [(blen, size, len(r)) for r, blen, size in plan] == [(1024, 1, 1), (32, 64, 49)]
    plan = plan_batches(np.array([300] + [40] * 7), 512, 32768)
    assert [(blen, size, len(r)) for r, blen, size in plan] == [(384, 1, 1), (64, 8, 7)]
    plan = plan_batches(np.array([300, 290, 280]), 512, 32768)  # similar lengths: one batch
    assert [(blen, size, len(r)) for r, blen, size in plan] == [(384, 4, 3)]


def test_compiles_once_per_shape(model):
    texts = make_texts(200, seed=2, max_words=60)
    budget = 256
    ids, _ = spin_jax.encode(model.tokenizer, texts, 64)
    backend = jax.default_backend()  # the plan extract runs here (CPU: finer buckets)
    plan = extract_mod.backend_plan(backend, np.array([len(i) for i in ids]), 64, budget)
    shapes = {(blen, size) for _, blen, size in plan}
    assert len(plan) > len(shapes) >= 3
    # The program extract runs (on GPU it carries compiler options: not _pooled_rows).
    program = extract_mod.pooled_program(None, extract_mod.default_mesh())
    program.clear_cache()
    feats = extract(
        model,
        texts,
        max_length=64,
        dtype="float32",
        token_budget=budget,
        progress=False,
        allow_empty=True,
    )
    assert feats.n_rows == 200
    assert 1 <= program._cache_size() <= len(shapes)


def test_a_later_split_pads_to_the_shapes_an_earlier_one_compiled(model):
    """A fit extracts train, then valid: where a compile costs more than padding (a tiny
    model: always), the shorter split runs at the train split's shape, compiling nothing."""
    from spin_jax import runner

    long, short = make_texts(40, seed=3, max_words=60), make_texts(40, seed=4, max_words=4)
    opts = dict(max_length=64, dtype="float32", progress=False, allow_empty=True)
    program = extract_mod.pooled_program(None, extract_mod.default_mesh())
    runner.SHAPES_RUN.clear()
    program.clear_cache()
    extract(model, long, placement="host", **opts)
    compiled = program._cache_size()
    want = extract(model, short, placement="host", **opts).read("hidden")
    assert program._cache_size() == compiled  # the long split's shape served
    runner.SHAPES_RUN.clear()  # forgotten: the short split plans a shape of its own
    got = extract(model, short, placement="host", **opts).read("hidden")
    assert program._cache_size() > compiled
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("selective", [False, True])
def test_program_writing_to_pinned_host_equals_device_program(model, selective):
    """The GPU path (outputs placed in pinned host memory by the program), run on CPU."""
    ids, mask = spin_jax.text.pad_batch([np.array([101, 7, 9, 102])] * 2, 16, 0)
    host = jax.sharding.SingleDeviceSharding(jax.devices()[0], memory_kind="pinned_host")
    args = (model.params, ids, mask)
    if selective:
        sel = parse_neurons(NEURONS, model.config)
        args += ({k: jax.numpy.asarray(v) for k, v in sel.indices().items()},)
    static = dict(config=model.config, k=2, poolings=(0, 1, 2), out_dtype=np.dtype(np.float32))
    want = extract_mod.pooled_program(None)(*args, **static)
    assert len(want) == (1 if selective else 2)
    got = extract_mod.pooled_program(host)(*args, **static)
    for g, w in zip(got, want, strict=True):
        assert g.sharding.memory_kind == "pinned_host"
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


# ---- 8 fake CPU devices == 1 device ----------------------------------------------------------

SHARDED = """
import sys
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import numpy as np
import spin_jax
from spin_jax.extraction import default_mesh, extract

folder, out, max_length = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = [line.rstrip("\\n") for line in open(sys.argv[4], encoding="utf-8")]
assert jax.device_count() == 8, jax.devices()
mesh = default_mesh()
assert mesh is not None and mesh.size == 8, mesh
feats = extract(spin_jax.load_model(folder), texts, max_length=max_length, dtype="float32",
                progress=False, allow_empty=True)
np.save(out + "/hidden.npy", feats.read("hidden"))
np.save(out + "/ffn.npy", feats.read("ffn"))
sel = extract(spin_jax.load_model(folder), texts, max_length=max_length, dtype="float32",
              progress=False, allow_empty=True, neurons=NEURONS)
np.save(out + "/columns.npy", sel.read("columns"))
# On the device: 20 rows on the first device, 16 split by rows over the 8 devices.
for n, sharded in ((20, False), (16, True)):
    dev = extract(spin_jax.load_model(folder), texts[:n], max_length=max_length,
                  dtype="float32", progress=False, allow_empty=True, placement="device")
    for name, x in dev.arrays.items():
        assert len(x.sharding.device_set) == (8 if sharded else 1), x.sharding
        assert x.sharding.is_fully_replicated != sharded, x.sharding
        np.save(out + f"/device-{n}-{name}.npy", np.asarray(dev.read(name)))
"""


def test_eight_devices_equal_one(tmp_path, folder, model):
    """Full and selective extraction; and kept on the device, row-sharded or on one device."""
    texts = make_texts(20, seed=3, max_words=30)
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    script = tmp_path / "sharded.py"
    script.write_text(textwrap.dedent(SHARDED).replace("NEURONS", repr(NEURONS)))
    run_python([script, folder, tmp_path, MAX_LENGTH, tmp_path / "texts.txt"])
    assert extract_mod.default_mesh() is None  # this process has one device
    kw = dict(max_length=MAX_LENGTH, dtype="float32", progress=False, allow_empty=True)
    one = extract(model, texts, **kw)
    for name in ("hidden", "ffn"):
        np.testing.assert_allclose(
            np.load(tmp_path / f"{name}.npy"), one.read(name), atol=TOL, rtol=0, err_msg=name
        )
    sel = extract(model, texts, **FP32, neurons=NEURONS)
    np.testing.assert_allclose(np.load(tmp_path / "columns.npy"), sel.read("columns"), atol=TOL)
    for n in (20, 16):
        rows = one if n == len(texts) else extract(model, texts[:n], **kw)
        for name in ("hidden", "ffn"):
            got = np.load(tmp_path / f"device-{n}-{name}.npy")
            np.testing.assert_allclose(got, rows.read(name), atol=TOL, rtol=0, err_msg=name)
