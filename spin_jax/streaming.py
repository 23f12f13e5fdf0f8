"""Features larger than memory: where a fit's pooled features live, and the chunks in which
the learner streams them to the device.

Extraction without a folder keeps the features where they fit, by their size against two
budgets (`placement_of`):

  device  DeviceFeatures, when they take at most `device_budget` bytes (default: a quarter
          of the device's free memory; GPU/TPU only, the CPU "device" is the host);
  host    MemoryFeatures, when they take at most `host_budget` bytes (default: half of the
          host memory available when the extraction starts);
  store   a FeatureStore written to `spill_dir` (SpinClassifier: a temporary folder, or its
          `work_dir`), read back memory-mapped, so only what a stage reads is in RAM.

The learner reads all three the same way, never the whole array: the probes a chunk of
layers at a time (`layer_chunks`: at most `SpinOptions.memory_bytes` of device memory a
chunk), integration only its candidate columns, gathered group by group (one representation,
pooling and layer at a time) into an [N, M] matrix much smaller than the features. So
features larger than the device pass through it chunk by chunk, and features larger than the
host are read from disk; the results are those of the in-memory path (tests/test_streaming.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import jax
import numpy as np

from spin_jax.devices import default_mesh, device_memory_free, n_devices, round_up
from spin_jax.errors import SpinError
from spin_jax.features import DeviceFeatures, MemoryFeatures
from spin_jax.progress import stage
from spin_jax.store import DTYPES, FeatureStore

log = logging.getLogger("spin_jax")
# The default budgets, as shares of what is free when an extraction starts: the device's
# quarter leaves room for the probes' standardised copies and the model; the host's half
# for the other splits and whatever else the process holds.
DEVICE_SHARE = 4
HOST_SHARE = 2
# Probe chunk bytes per (row, feature) of one layer: the fp32 read, its standardised copy
# and the solver's per-row work (layer_probes._probe_chunk); 4 more on a CPU, the solver's
# transposed copy of X (probes.transposed), or where chunks are read ahead, the next one.
PROBE_BYTES_PER_ELEMENT = 12

# On an accelerator the probes read the next chunk of layers (the host's copies and the
# transfer) in a thread while the device solves this one (layer_probes._reads_ahead): on
# one H200, GPT2-XL's probes spent 30 of their 48 s reading and copying, one chunk after
# another (benchmarks/RESULTS.md, session 20). On a CPU the cores that would copy are the
# ones that solve.
READ_AHEAD = {"cpu": False}


def reads_ahead() -> bool:
    return READ_AHEAD.get(jax.default_backend(), True)


def probe_bytes_per_element() -> int:
    cpu = jax.default_backend() == "cpu"
    return PROBE_BYTES_PER_ELEMENT + (4 if cpu or reads_ahead() else 0)


def features_bytes(specs, n_rows: int) -> int:
    """Bytes of the arrays {name: (feature shape, dtype name)} over n_rows rows."""
    return int(sum(n_rows * np.prod(s) * DTYPES[d].itemsize for s, d in specs.values()))


def host_memory_available() -> int | None:
    """Bytes of host memory available now (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e7 else f"{int(n)} bytes"


def placement_of(
    placement: str, specs, n_rows: int, *, device_budget=None, host_budget=None
) -> str:
    """ "device", "host" or "store" for features of `specs` over n_rows rows.

    "auto": the device on an accelerator (one process) when each device's share takes at
    most device_budget (default: under a quarter of its free memory), else the host when
    they take at most host_budget (default: half the available memory), else a store.
    An explicit "device" or "host" is kept, but refused when the features exceed that
    budget (given, or else all the free memory): one line naming the sizes and the fix.
    """
    total = features_bytes(specs, n_rows)
    mesh = default_mesh()
    share = total / mesh.size if mesh is not None and n_rows % mesh.size == 0 else total
    if placement == "device":
        _check_fits("device", share, device_budget or device_memory_free())
        return placement
    if placement == "host":
        _check_fits("host", total, host_budget or host_memory_available())
        return placement
    if _on_device(share, device_budget):
        return "device"
    host = host_limit(host_budget)
    return "host" if host is None or total <= host else "store"


def host_limit(host_budget: int | None) -> int | None:
    """The host budget: as given, else half the available memory (None: unknown)."""
    if host_budget is not None:
        return host_budget
    free = host_memory_available()
    return None if free is None else free // HOST_SHARE


def _on_device(share: float, budget: int | None) -> bool:
    if jax.default_backend() == "cpu" or jax.process_count() > 1:
        return False
    if budget is not None:
        return share <= budget
    free = device_memory_free()
    return free is not None and share < free / DEVICE_SHARE


def _check_fits(where: str, need: float, have: int | None) -> None:
    if have is not None and need > have:
        raise SpinError(
            f"the features take {_gb(need)}, more than the {_gb(have)} of {where} memory "
            f"they may use: extract with placement='auto' (the host, or a feature store "
            f"read memory-mapped), or into a folder (out=)."
        )


def announce_store(what: str, total: int, host_budget, folder) -> None:
    """The one line saying that features go to disk instead of RAM (stderr)."""
    stage(
        f"{what}: features take {_gb(total)}, over the host budget of "
        f"{_gb(host_limit(host_budget) or 0)}: "
        f"writing them to a feature store in {folder}, read memory-mapped"
    )


def require_spill_dir(spill_dir, total: int, host_budget) -> Path:
    if spill_dir is None:
        raise SpinError(
            f"the features take {_gb(total)}, over the host budget of "
            f"{_gb(host_limit(host_budget) or 0)}: pass "
            "out=FOLDER (or spill_dir=) to write them to a feature store read memory-mapped, "
            "or a larger host_budget."
        )
    return Path(spill_dir)


def budgets(device_budget=None, host_budget=None) -> dict:
    """The two budgets as extract's options, checked: positive whole bytes, or None."""
    out = {"device_budget": device_budget, "host_budget": host_budget}
    for name, value in out.items():
        bad = not isinstance(value, int) or isinstance(value, bool) or value < 1
        if value is not None and bad:
            raise SpinError(f"{name}={value!r}: pass a positive whole number of bytes, or None.")
    return out


@contextlib.contextmanager
def spill_folder(work_dir):
    """Where a fit without a work_dir writes features over the host budget: a temporary
    folder (under $TMPDIR), removed with everything in it when the fit ends."""
    if work_dir is not None:
        yield None  # a fit with a work_dir writes every split to a store there
        return
    with tempfile.TemporaryDirectory(prefix="spin-jax-features-") as tmp:
        yield Path(tmp)


# ---- the learner's chunks ----------------------------------------------------------------


def layer_chunks(memory_bytes: int, n_rows: int, n_features: int, first: int, last: int):
    """The block layers first..last in chunks of at most memory_bytes of probe work
    (`probe_bytes_per_element` per row and feature), whole problems per device."""
    chunk = max(1, memory_bytes // max(1, probe_bytes_per_element() * n_rows * n_features))
    chunk = round_up(chunk, n_devices())
    return [np.arange(s, min(s + chunk, last + 1)) for s in range(first, last + 1, chunk)]


def kind_of(src) -> str:
    """ "device", "host" or "store": where a feature source keeps its arrays."""
    src = getattr(src, "_src", src)  # sources._Relabelled
    kinds = ((DeviceFeatures, "device"), (MemoryFeatures, "host"), (FeatureStore, "store"))
    return next((k for t, k in kinds if isinstance(src, t)), type(src).__name__)


def memory_record(data, reps) -> dict:
    """report.json's "memory": where each split's features were, and the probe chunks of
    layers each representation streamed to the device under memory_bytes."""
    splits = (("train", data.train), ("valid", data.valid), ("test", data.test))
    chunks = {
        rep: len(
            layer_chunks(
                data.opts.memory_bytes,
                data.train.n_rows,
                data.train.shape(rep)[-1],
                data.opts.first_layer(rep),
                data.n_layers,
            )
        )
        for rep in reps
    }
    return {
        "features": {name: kind_of(src) for name, src in splits if src is not None},
        "memory_bytes": data.opts.memory_bytes,
        "probe_chunks": chunks,
    }
