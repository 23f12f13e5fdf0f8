"""Devices and meshes: the one place that knows how work is spread over local devices.

Extraction splits each batch by rows over a 1-D mesh ("data"); the learner spreads
independent problems (layers, masks) over the same mesh. With one device every helper is the
identity (no mesh, no sharding).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def n_devices() -> int:
    return jax.device_count()


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def default_mesh():
    """A 1-D mesh "data" over every device, or None with one device."""
    devices = jax.devices()
    if len(devices) == 1:
        return None
    return jax.sharding.Mesh(np.array(devices), ("data",))


def mesh_put(mesh, x):
    """x split by rows (axis 0) over the mesh; one device: on it."""
    if mesh is None:
        return jnp.asarray(x)
    spec = jax.sharding.PartitionSpec("data", *([None] * (x.ndim - 1)))
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))


def replicate(mesh, params):
    if mesh is None:
        return params
    return jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def shard_problems(x: jax.Array) -> jax.Array:
    """Spreads independent problems (axis 0) over all devices; one device: unchanged."""
    mesh = default_mesh()
    if mesh is None or x.shape[0] % mesh.size:
        return x
    return mesh_put(mesh, x)


def host_sharding(mesh):
    """Pinned host memory, split like the batch, where extraction's results go (GPU, TPU).

    A copy into pinned memory is a DMA; through pageable memory an H100 copied GPT2-XL's
    pooled features at ~1.4 GB/s (benchmarks/RESULTS.md). None on CPU or where the
    backend has no pinned host memory.
    """
    if jax.default_backend() == "cpu":
        return None
    device = jax.devices()[0]
    if "pinned_host" not in {m.kind for m in device.addressable_memories()}:
        return None
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(device, memory_kind="pinned_host")
    spec = jax.sharding.PartitionSpec("data")
    return jax.sharding.NamedSharding(mesh, spec, memory_kind="pinned_host")


def device_memory_free() -> int | None:
    """Bytes the first local device has left, or None where it reports no statistics."""
    stats = jax.local_devices()[0].memory_stats()
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def device_sharding(mesh, n_rows: int):
    """Where DeviceFeatures' arrays live: split by rows over the mesh's "data" axis when the
    rows divide evenly among its devices, else (and with one device) on the first device."""
    if mesh is not None and n_rows % mesh.size == 0:
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


# Compiler options for the learner's programs on a GPU (`solver_jit`): without XLA's
# Triton GEMMs. The learner's products are thin (a few columns per lane), Triton's
# autotuning dominated their compiles and its kernels stepped slower: on an H200, the
# learner alone on MiniLM-shaped device features (13.6k + 3.4k rows, the default recipe)
# took 17.9 s (9.0 s of compiles) against 35.5 s (22.9 s) with them (benchmarks/RESULTS.md).
GPU_SOLVER_OPTIONS: dict = {"xla_gpu_enable_triton_gemm": False}


def solver_jit(fun=None, **jit_kwargs):
    """jax.jit for the learner's programs, with `GPU_SOLVER_OPTIONS` when the default
    backend is a GPU (decided at the first call, not at import, which would start JAX)."""
    if fun is None:
        return functools.partial(solver_jit, **jit_kwargs)
    by_backend = {}

    @functools.wraps(fun)
    def call(*args, **kwargs):
        # Inside another program's trace: traced into it, as XLA would inline a nested jit
        # anyway (and jax refuses compiler options on one). A call made there with only
        # concrete arguments would miss this test; none is.
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
            return fun(*args, **kwargs)
        return jitted()(*args, **kwargs)

    def jitted():
        backend = jax.default_backend()
        if backend not in by_backend:
            options = (GPU_SOLVER_OPTIONS or None) if backend == "gpu" else None
            by_backend[backend] = jax.jit(fun, compiler_options=options, **jit_kwargs)
        return by_backend[backend]

    call.lower = lambda *args, **kwargs: jitted().lower(*args, **kwargs)  # ahead.py's use
    call.clear_cache = lambda: [jitted.clear_cache() for jitted in by_backend.values()]
    call._cache_size = lambda: sum(jitted._cache_size() for jitted in by_backend.values())
    return call
