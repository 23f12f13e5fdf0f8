"""spin_jax.store: round trips, sliced reads, crash-safe resume and refusals."""

import json

import ml_dtypes
import numpy as np
import pytest

from spin_jax import store as store_lib
from spin_jax.store import (
    FeatureStore,
    StoreError,
    StoreMismatchError,
    sha256_file,
    write_json_atomic,
)

# Prime sizes so a wrong axis shows up as a shape error: L+1 = 3 layers, P = 2, D = 5, F = 7.
N, CHUNK = 11, 4  # three chunks: 4, 4 and 3 rows
ARRAYS = {"hidden": ((3, 2, 5), "float32"), "ffn": ((2, 2, 7), "bfloat16")}
IDENTITY = {"model": "tiny-bert", "config_hash": "abc123", "max_length": 13, "layers": [0, 1, 2]}


def full_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "hidden": rng.standard_normal((N, 3, 2, 5)).astype(np.float32),
        "ffn": rng.standard_normal((N, 2, 2, 7)).astype(ml_dtypes.bfloat16),
    }


def create(path, identity=IDENTITY, **kwargs):
    kwargs = {"n_rows": N, "chunk_rows": CHUNK, "arrays": ARRAYS, **kwargs}
    return FeatureStore.create(path, manifest=identity, **kwargs)


def write(store, data, chunks):
    for i in chunks:
        start, stop = store.chunk_rows_range(i)
        store.write_chunk(i, {k: v[start:stop] for k, v in data.items()})


def file_hashes(path):
    return {p.name: sha256_file(p) for p in sorted(path.glob("*.npy"))}


def test_round_trip_fp32_and_bf16(tmp_path):
    data = full_arrays()
    labels = np.array([0, 1, 2] * 3 + [0, 1])
    store = create(tmp_path / "s", labels=labels, label_names=["a", "b", "c"])
    assert store.missing_chunks() == [0, 1, 2] and not store.complete
    assert [store.chunk_rows_range(i) for i in range(3)] == [(0, 4), (4, 8), (8, 11)]
    write(store, data, range(3))
    assert store.complete
    opened = FeatureStore.open(tmp_path / "s", verify=True)
    np.testing.assert_array_equal(opened.read("hidden"), data["hidden"])
    ffn = opened.read("ffn", dtype=None)
    assert ffn.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(ffn.view(np.uint16), data["ffn"].view(np.uint16))
    np.testing.assert_array_equal(opened.read("ffn"), data["ffn"].astype(np.float32))
    np.testing.assert_array_equal(opened.labels, labels)
    assert opened.label_names == ("a", "b", "c") and opened.n_rows == N
    assert opened.manifest["model"] == "tiny-bert" and opened.manifest["n_chunks"] == 3
    assert opened.manifest["arrays"]["ffn"]["storage_dtype"] == "uint16"
    # Plain .npy files that load without pickle.
    raw = np.load(tmp_path / "s" / "ffn-00002.npy", allow_pickle=False)
    assert raw.dtype == np.uint16 and raw.shape == (3, 2, 2, 7)


def test_selections_equal_numpy_slicing(tmp_path):
    data = full_arrays(seed=1)
    store = create(tmp_path / "s")
    write(store, data, range(3))
    full = data["hidden"]
    rows = np.array([10, 0, 5, 4, 3, 10])  # unsorted, repeated, across chunk boundaries
    layers, poolings, neurons = [2, 0], [1], np.array([4, 1, 3])
    got = store.read("hidden", rows=rows, layers=layers, poolings=poolings, neurons=neurons)
    np.testing.assert_array_equal(got, full[np.ix_(rows, layers, poolings, neurons)])
    np.testing.assert_array_equal(store.read("hidden", layers=[-1]), full[:, [-1]])
    np.testing.assert_array_equal(store.read("hidden", poolings=[0]), full[:, :, [0]])
    np.testing.assert_array_equal(store.read("hidden", neurons=[0, 4]), full[..., [0, 4]])
    np.testing.assert_array_equal(store.read("hidden", rows=[7]), full[[7]])
    assert store.read("hidden", rows=[]).shape == (0, 3, 2, 5)
    with pytest.raises(StoreError, match="layers index out of range.*0 to 2"):
        store.read("hidden", layers=[3])
    with pytest.raises(StoreError, match="no array 'mlp'.*hidden, ffn"):
        store.read("mlp")


def test_resume_after_crash_matches_uninterrupted_run(tmp_path, monkeypatch):
    data = full_arrays(seed=2)
    reference = create(tmp_path / "ref")
    write(reference, data, range(3))

    store = create(tmp_path / "s")
    write(store, data, [0])
    # Crash in chunk 1 after "hidden" is in place, before "ffn" is renamed into place.
    real_replace = store_lib.os.replace

    def crash_on_ffn(src, dst):
        if "ffn-00001" in str(dst):
            raise KeyboardInterrupt("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(store_lib.os, "replace", crash_on_ffn)
    with pytest.raises(KeyboardInterrupt):
        write(store, data, [1])
    monkeypatch.setattr(store_lib.os, "replace", real_replace)
    assert (tmp_path / "s" / "hidden-00001.npy").exists()
    assert list((tmp_path / "s").glob(".ffn-00001.npy.tmp-*"))  # the half-written temp file

    resumed = create(tmp_path / "s")  # same identity: opened for resume
    assert resumed.missing_chunks() == [1, 2]
    assert not list((tmp_path / "s").glob(".*.tmp-*"))  # temp files swept
    write(resumed, data, resumed.missing_chunks())
    assert resumed.complete
    assert file_hashes(tmp_path / "s") == file_hashes(tmp_path / "ref")
    assert len(file_hashes(tmp_path / "s")) == 6


def test_half_written_chunk_is_not_done(tmp_path):
    data = full_arrays()
    store = create(tmp_path / "s")
    write(store, data, [0, 1])
    # A chunk file on disk without its progress record (crash before progress.json was
    # rewritten) and a truncated temp file: neither makes chunk 2 done.
    np.save(tmp_path / "s" / "hidden-00002.npy", data["hidden"][8:])
    (tmp_path / "s" / ".ffn-00002.npy.tmp-999").write_bytes(b"\x93NUMPY trunc")
    assert create(tmp_path / "s").missing_chunks() == [2]
    with pytest.raises(StoreError, match=r"incomplete: 1 of 3 chunks missing \(2\).*resume"):
        FeatureStore.open(tmp_path / "s")
    # A done chunk whose file vanished is missing again.
    (tmp_path / "s" / "ffn-00000.npy").unlink()
    assert create(tmp_path / "s").missing_chunks() == [0, 2]


def test_mismatched_manifest_refused(tmp_path):
    create(tmp_path / "s")
    changed = {**IDENTITY, "max_length": 64}
    with pytest.raises(StoreMismatchError) as err:
        create(tmp_path / "s", identity=changed)
    message = str(err.value)
    assert "max_length: stored 13, new 64" in message
    assert "config_hash" not in message  # only the keys that differ
    assert "another output folder" in message
    with pytest.raises(StoreMismatchError, match="chunk_rows: stored 4, new 5"):
        create(tmp_path / "s", chunk_rows=5)
    with pytest.raises(StoreMismatchError, match="labels_sha256"):
        create(tmp_path / "s", labels=np.zeros(N, np.int64))
    with pytest.raises(StoreMismatchError, match="neurons: stored null"):
        create(tmp_path / "s", identity={**IDENTITY, "neurons": [1, 2]})


def test_open_refusals(tmp_path):
    with pytest.raises(StoreError, match="folder does not exist.*extract"):
        FeatureStore.open(tmp_path / "absent")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="no manifest.json"):
        FeatureStore.open(tmp_path / "plain")
    store = create(tmp_path / "s")
    write(store, full_arrays(), [0])
    with pytest.raises(StoreError, match="incomplete: 2 of 3 chunks missing.*same extract"):
        FeatureStore.open(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text('{"model": "tiny', "utf-8")
    with pytest.raises(StoreError, match="manifest.json is not valid JSON.*Delete"):
        FeatureStore.open(tmp_path / "s")
    with pytest.raises(StoreError, match="not valid JSON"):
        create(tmp_path / "s")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a feature store.*another output folder"):
        create(tmp_path / "other")


def test_tampered_file_detected_by_verify(tmp_path):
    store = create(tmp_path / "s")
    write(store, full_arrays(), range(3))
    file = tmp_path / "s" / "hidden-00001.npy"
    raw = bytearray(file.read_bytes())
    raw[-1] ^= 0xFF  # flip the bits of one value; the header and shape stay valid
    file.write_bytes(bytes(raw))
    FeatureStore.open(tmp_path / "s")  # without verify the change goes unnoticed
    with pytest.raises(StoreError, match="hidden-00001.npy \\(chunk 1\\) does not match"):
        FeatureStore.open(tmp_path / "s", verify=True)


def test_write_chunk_validates(tmp_path):
    store = create(tmp_path / "s")
    data = {k: v[:4] for k, v in full_arrays().items()}
    with pytest.raises(StoreError, match=r"'hidden' has shape \(3, 3, 2, 5\).*\(4, 3, 2, 5\)"):
        store.write_chunk(0, {**data, "hidden": data["hidden"][:3]})
    with pytest.raises(StoreError, match="'ffn' has dtype float32; the store holds bfloat16"):
        store.write_chunk(0, {**data, "ffn": data["ffn"].astype(np.float32)})
    with pytest.raises(StoreError, match="Pass exactly those"):
        store.write_chunk(0, {"hidden": data["hidden"]})
    with pytest.raises(StoreError, match="chunk 3 out of range"):
        store.write_chunk(3, data)
    assert store.missing_chunks() == [0, 1, 2]
    with pytest.raises(StoreError, match="'created' is reserved"):
        create(tmp_path / "t", identity={"created": "yesterday"})
    with pytest.raises(StoreError, match="disagrees with the n_rows=11 argument"):
        create(tmp_path / "t", identity={"n_rows": 12})
    with pytest.raises(StoreError, match="dtype 'int8'"):
        create(tmp_path / "t", arrays={"x": ((2,), "int8")})


def test_write_json_atomic_and_sha256(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": [1, 2]})
    write_json_atomic(path, {"a": [3]})
    assert json.loads(path.read_text()) == {"a": [3]}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left
    (tmp_path / "abc").write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(tmp_path / "abc") == expected


def test_sliced_read_does_not_load_whole_chunks(tmp_path):
    import tracemalloc

    rows, width = 64, 4096  # 64 x 2 x 4096 fp32 = 2 MiB per array, in one chunk
    store = FeatureStore.create(
        tmp_path / "s",
        manifest={},
        n_rows=rows,
        chunk_rows=rows,
        arrays={"ffn": ((2, 1, width), "float32")},
    )
    data = np.arange(rows * 2 * width, dtype=np.float32).reshape(rows, 2, 1, width)
    store.write_chunk(0, {"ffn": data})
    tracemalloc.start()
    got = store.read("ffn", layers=[1], neurons=[5, 7])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(got, data[:, [1]][..., [5, 7]])
    assert peak < data.nbytes // 20  # the result is 512 bytes; a whole chunk is 2 MiB
