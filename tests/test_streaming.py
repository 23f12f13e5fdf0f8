"""Features larger than memory (spin_jax/streaming.py), forced at small scale by lowering the
budgets: over the device budget the probes stream chunks of layers from the host or from a
store; over the host budget extraction writes a store read memory-mapped. Each path fits the
classifier of the in-memory path, and each test checks that its path ran.

Synthetic features as in test_learner (L=4 blocks, 600/300/300 rows); the text tests use
the session's tiny random BERT.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

import spin_jax
from spin_jax import layer_probes, streaming
from spin_jax.classifier import SpinClassifier
from spin_jax.errors import SpinError
from spin_jax.extraction import InputError, extract
from spin_jax.learner import SpinOptions, fit_spin
from spin_jax.store import FeatureStore
from tests.test_extract import SPECS, FakeDevice  # SPECS: 140 bytes a row
from tests.test_learner import FAST, L, on_device, planted, reviews, splits

HEAD_INDEX = ("rep", "pool", "layer", "neuron")
HEAD_VALUES = ("mean", "std", "weights", "intercept")
# Streamed, each layer's probe is solved in a vmapped batch of one problem instead of all L:
# XLA may block a batched reduction differently by batch size, so the probes' statistics
# and weights may differ in the last float32 bits (2.4e-7 measured). Everything discrete
# (kept neurons, the grid's scores and neuron counts, the choice) must be equal.
ATOL = 1e-6


def write_store(path: Path, src, chunk_rows: int) -> FeatureStore:
    """The synthetic features `src` as a FeatureStore of several chunks of rows."""
    arrays = {name: (a.shape[1:], "float32") for name, a in src.arrays.items()}
    store = FeatureStore.create(
        path,
        manifest={"model": "synthetic"},
        n_rows=src.n_rows,
        chunk_rows=chunk_rows,
        arrays=arrays,
        labels=src.labels,
        label_names=src.label_names,
    )
    for i in range(store.n_chunks):
        start, stop = store.chunk_rows_range(i)
        store.write_chunk(i, {name: a[start:stop] for name, a in src.arrays.items()})
    return FeatureStore.open(path)


def assert_same_fit(got, want):
    """(head, report) pairs: the same classifier, grid and scores."""
    (head, report), (head_w, report_w) = got, want
    for field in HEAD_INDEX:
        np.testing.assert_array_equal(getattr(head, field), getattr(head_w, field))
    for field in HEAD_VALUES:
        np.testing.assert_allclose(getattr(head, field), getattr(head_w, field), atol=ATOL)
    assert head.num_layers == head_w.num_layers
    for key in ("chosen", "spin", "baselines", "integration_k", "metric"):
        assert report[key] == report_w[key], key
    assert [g["valid"] for g in report["grid"]] == [g["valid"] for g in report_w["grid"]]
    assert [g["n_neurons"] for g in report["grid"]] == [g["n_neurons"] for g in report_w["grid"]]
    for name, per in report["per_layer_probes"].items():
        np.testing.assert_allclose(per["valid"], report_w["per_layer_probes"][name]["valid"])


@pytest.fixture(scope="module")
def synthetic_splits():
    return splits(planted, ("neg", "pos"))


@pytest.fixture(scope="module")
def in_memory(synthetic_splits):
    """The in-memory path: features on the device, every layer's probe in one chunk."""
    dev = [on_device(s) for s in synthetic_splits]
    return fit_spin(*dev, SpinOptions(**FAST))


# ---- over the device budget: chunks of layers streamed to the device ----------------------


@pytest.mark.parametrize("where", ["host", "store"])
@pytest.mark.parametrize("ahead", [False, True])
def test_features_over_the_device_budget_stream_by_layers(
    where, ahead, synthetic_splits, in_memory, tmp_path, monkeypatch
):
    """The probes read one layer at a time (memory_bytes=1) from the host, or from a store of
    several chunks of rows read memory-mapped, each chunk's training read in turn or (ahead,
    as on an accelerator) in a thread while the one before it solves, its rows copied by
    several threads: the same classifier as the in-memory fit."""
    srcs = synthetic_splits
    if where == "store":
        srcs = [write_store(tmp_path / f"s{i}", s, 250) for i, s in enumerate(srcs)]
        assert srcs[0].n_chunks == 3
    monkeypatch.setitem(streaming.READ_AHEAD, jax.default_backend(), ahead)
    monkeypatch.setattr(layer_probes, "COPY_SPLIT_BYTES", 0)  # every copy split over threads
    chunks, readers = [], set()  # the layers of each probe chunk run; the threads that read
    run_chunk, read = layer_probes._probe_chunk, layer_probes._train_problems

    def counted(data, rep, pool, layers, X):
        chunks.append(len(layers))
        return run_chunk(data, rep, pool, layers, X)

    def reader(*args):
        name = threading.current_thread().name
        readers.add("ahead" if name.startswith("spin_jax-read") else name)
        return read(*args)

    monkeypatch.setattr(layer_probes, "_probe_chunk", counted)
    monkeypatch.setattr(layer_probes, "_train_problems", reader)
    got = fit_spin(*srcs, SpinOptions(**FAST, memory_bytes=1))
    # Each of the 6 probe groups (2 representations x 3 poolings) streamed a chunk of one
    # layer per layer: hidden's L + 1 (layer 0 is probed by default), ffn's L.
    assert chunks == [1] * (3 * (L + 1) + 3 * L)
    assert readers == ({"ahead"} if ahead else {"MainThread"})
    memory = got[1]["memory"]
    assert memory["probe_chunks"] == {"ffn": L, "hidden": L + 1}
    assert memory["features"] == {"train": where, "valid": where, "test": where}
    assert in_memory[1]["memory"]["probe_chunks"] == {"ffn": 1, "hidden": 1}
    assert in_memory[1]["memory"]["features"]["train"] == "device"
    assert_same_fit(got, in_memory)


def test_layer_chunks_cover_every_layer_once(monkeypatch):
    per_layer = streaming.probe_bytes_per_element() * 600 * 20
    for budget in (1, per_layer * 2, per_layer * 3, 1 << 40):
        chunks = streaming.layer_chunks(budget, 600, 20, 1, L)
        np.testing.assert_array_equal(np.concatenate(chunks), np.arange(1, L + 1))
        assert all(len(c) <= max(1, budget // per_layer) for c in chunks)
    assert len(streaming.layer_chunks(per_layer * 3, 600, 20, 0, L)) == 2  # 0..2, 3..4
    # 4 bytes more a row and feature: on a CPU the solve's transposed copy of X, on an
    # accelerator the chunk read ahead (where it is not, only the 12)
    for backend, ahead, want in (("cpu", False, 16), ("gpu", True, 16), ("gpu", False, 12)):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        monkeypatch.setitem(streaming.READ_AHEAD, backend, ahead)
        assert streaming.probe_bytes_per_element() == want, (backend, ahead)


# ---- where extraction keeps the features --------------------------------------------------

@pytest.mark.parametrize(
    "backend,budgets,want",
    [
        ("gpu", {}, "device"),  # 980 bytes: under a quarter of the free 1 GiB
        ("gpu", {"device_budget": 980}, "device"),
        ("gpu", {"device_budget": 979}, "host"),
        ("gpu", {"device_budget": 979, "host_budget": 980}, "host"),
        ("gpu", {"device_budget": 979, "host_budget": 979}, "store"),
        ("cpu", {"device_budget": 1 << 40, "host_budget": 979}, "store"),  # CPU: no device
        ("cpu", {}, "host"),
    ],
)
def test_auto_placement_by_budgets(monkeypatch, backend, budgets, want):
    """7 rows of SPECS take 980 bytes."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    stats = {"bytes_limit": 1 << 30, "bytes_in_use": 0}
    monkeypatch.setattr(jax, "local_devices", lambda: [FakeDevice(stats)])
    assert streaming.placement_of("auto", SPECS, 7, **budgets) == want


def test_explicit_placements_over_their_budget_are_refused(monkeypatch):
    with pytest.raises(SpinError, match=r"980 bytes, more than the 979 bytes of device memory"):
        streaming.placement_of("device", SPECS, 7, device_budget=979)
    with pytest.raises(SpinError, match=r"of host memory .*placement='auto'"):
        streaming.placement_of("host", SPECS, 7, host_budget=979)
    assert streaming.placement_of("host", SPECS, 7, host_budget=980) == "host"
    monkeypatch.setattr(jax, "local_devices", lambda: [FakeDevice({"bytes_limit": 979})])
    with pytest.raises(SpinError, match="device memory"):  # over the device's free memory
        streaming.placement_of("device", SPECS, 7)


@pytest.mark.parametrize("value", [0, -5, 1.5, True, "1GB"])
def test_bad_budgets_are_refused_before_any_work(value):
    with pytest.raises(SpinError, match="host_budget=.*positive whole number"):
        SpinClassifier("never-loaded", host_budget=value)  # refused before the model loads
    with pytest.raises(InputError, match="device_budget=.*positive whole number"):
        spin_jax.extraction.ExtractOptions(device_budget=value)


# ---- over the host budget: a feature store read memory-mapped -----------------------------


@pytest.fixture(scope="module")
def model(folder):
    return spin_jax.load_model(str(folder))


KW = dict(dtype="float32", progress=False)


def test_extraction_over_the_host_budget_writes_a_store(model, tmp_path, capsys):
    texts = reviews(30, 3)[0]
    want = extract(model, texts, placement="host", **KW)
    # device_budget=1 too: on an accelerator "auto" would keep them on the device first.
    over = dict(device_budget=1, host_budget=1)
    got = extract(model, texts, spill_dir=tmp_path / "spill", **over, **KW)
    assert isinstance(got, FeatureStore) and (tmp_path / "spill" / "manifest.json").exists()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"spin-jax: 30 texts: features take .*, over the host budget of 1 bytes: writing "
        r"them to a feature store in .*spill, read memory-mapped",
        line,
    ), line
    for name in ("hidden", "ffn"):  # one chunk of rows: the very batches of the host path
        np.testing.assert_array_equal(got.read(name), want.read(name))
    with pytest.raises(SpinError, match=r"over the host budget of 1 bytes: pass out=FOLDER"):
        extract(model, texts, **over, **KW)


def test_fit_over_the_host_budget_reads_a_store_and_equals_in_memory(model, capsys):
    """SpinClassifier.fit without a work_dir: every split over host_budget=1 goes to a
    store in a temporary folder, removed after the fit; the classifier is the in-memory one."""
    data = {"train": reviews(60, 0), "test": reviews(40, 2)}
    kw = dict(feature_dtype="float32", **FAST)
    want = SpinClassifier(model, **kw).fit(*data["train"], test=data["test"])
    capsys.readouterr()
    over = dict(device_budget=1, host_budget=1)  # on a GPU the device budget comes first
    got = SpinClassifier(model, **over, **kw).fit(*data["train"], test=data["test"])
    lines = [s for s in capsys.readouterr().err.splitlines() if "feature store" in s]
    assert len(lines) == 3  # train, valid, test: one line each
    folders = [Path(re.search(r"feature store in (.*), read", s).group(1)) for s in lines]
    assert [f.name for f in folders] == ["features-train", "features-valid", "features-test"]
    assert not any(f.parent.exists() for f in folders)  # the temporary folder is gone
    assert got.report["memory"]["features"] == {"train": "store", "valid": "store", "test": "store"}
    assert want.report["memory"]["features"]["train"] in ("host", "device")
    # The same features read from disk: the same classifier, exactly.
    for field in HEAD_INDEX + HEAD_VALUES:
        np.testing.assert_array_equal(getattr(got.head, field), getattr(want.head, field))
    for key in ("chosen", "spin", "baselines", "grid", "per_layer_probes"):
        assert got.report[key] == want.report[key], key
    texts = data["test"][0]
    np.testing.assert_array_equal(got.predict_proba(texts), want.predict_proba(texts))


def test_a_read_of_consecutive_layers_is_a_view_equal_to_the_gather():
    """MemoryFeatures reads runs of consecutive indices (the probes' chunks of layers) as a
    view: the same values as a gather, and read-only, so no caller writes the features."""
    from spin_jax.features import MemoryFeatures

    x = np.arange(5 * 4 * 3 * 6, dtype=np.float32).reshape(5, 4, 3, 6)
    src = MemoryFeatures({"hidden": x}, np.zeros(5, np.int64), ("a", "b"), {})
    cases = [
        dict(layers=[1, 2], poolings=[2]), dict(rows=[1, 2, 3], layers=[0, 1, 2, 3]),
        dict(layers=[3, 1]), dict(layers=[0, 2], poolings=[1]), dict(neurons=[-2, -1]),
    ]  # fmt: skip
    for sel in cases:
        rows = np.arange(5) if sel.get("rows") is None else np.asarray(sel["rows"])
        names = ("layers", "poolings", "neurons")
        axes = [np.arange(n) if sel.get(k) is None else np.asarray(sel[k]) % n
                for k, n in zip(names, x.shape[1:], strict=True)]  # fmt: skip
        want = x[np.ix_(rows, *axes)]
        got = src.read("hidden", dtype=None, **sel)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(src.read("hidden", **sel), want)  # float32: a copy
    view = src.read("hidden", layers=[1, 2], poolings=[2], dtype=None)
    assert np.shares_memory(view, x) and not view.flags.writeable
    assert not np.shares_memory(src.read("hidden", layers=[1, 2], poolings=[2]), x)


def test_the_probes_copy_of_a_chunk_split_over_threads_equals_one_copy(monkeypatch):
    """layer_probes.transposed_copy: [N, g, F] views as [g, N, F], whole or a block of rows
    a thread (rows that do not divide evenly among them included)."""
    x = np.arange(7 * 3 * 2 * 5, dtype=np.float32).reshape(7, 3, 2, 5)
    want = np.ascontiguousarray(x[:, :, 1].swapaxes(0, 1))
    for split in (1 << 30, 0):
        monkeypatch.setattr(layer_probes, "COPY_SPLIT_BYTES", split)
        monkeypatch.setattr(layer_probes, "COPY_THREADS", 3)
        layer_probes._copy_pool.cache_clear()
        got = layer_probes.transposed_copy(x[:, :, 1])
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
    layer_probes._copy_pool.cache_clear()
