"""The extraction program: the forward with pooling (or a neuron gather) inside, jitted,
optionally data-parallel over a mesh, its outputs on their way to pinned host memory."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from spin_jax.columns import take
from spin_jax.devices import host_sharding
from spin_jax.models import forward_program

STATIC = ("config", "k", "poolings", "out_dtype", "options")  # _pooled_fn's static arguments


def _pooled_fn(params, ids, mask, cols=None, *, config, k, poolings, out_dtype, options=()):
    """Pooled features in the storage dtype: (hidden [B, L+1, P, D], ffn [B, L, P, F]), or,
    given `cols` (NeuronSelection.indices() on the device), (columns [B, P, M],).

    The first k blocks run, `poolings` (indices into POOLINGS) are kept, `options` are the
    family's forward options as sorted (name, value) pairs. The columns are gathered here,
    inside the program, so only they leave the device.
    """
    f = forward_program(config, params, ids, mask, num_layers=k, pooled=True, **dict(options))
    sel = jnp.asarray(poolings)
    hidden, ffn = f.hidden[:, :, sel], f.ffn[:, :, sel]  # [L+1, B, P, D], [L, B, P, F]
    if cols is not None:
        return (take(hidden, ffn, cols).astype(out_dtype),)
    return jnp.moveaxis(hidden, 1, 0).astype(out_dtype), jnp.moveaxis(ffn, 1, 0).astype(out_dtype)


_pooled_rows = jax.jit(_pooled_fn, static_argnames=STATIC)


def data_parallel(fn, mesh):
    """`fn(params, ids, mask, aux, **static)` run per device on its rows of the batch
    (shard_map over "data"); params and aux (gather indices, heads) are replicated.

    Rows are independent, so no device needs another's; and a kernel inside the forward
    (the GPU pooling kernel) sees only its device's rows instead of an all-gathered batch.
    """
    P = jax.sharding.PartitionSpec

    def run(params, ids, mask, aux=None, **static):
        return jax.shard_map(
            functools.partial(fn, **static),
            mesh=mesh,
            in_specs=(P(), P("data"), P("data"), P()),
            out_specs=P("data"),
            check_vma=False,
        )(params, ids, mask, aux)

    return run


def compiler_options() -> dict | None:
    """XLA options for the extraction program, on GPU (benchmarks/RESULTS.md, H100):
    cuBLAS rather than XLA's Triton emitter for its matmuls (GPT2-XL forward: 94.4 -> 88.6
    ms per 42 x 384 batch); and no dot merging, which fused the q, k and v matmuls (they
    share an input) into one whose output was then copied apart (-2.4% per batch)."""
    if jax.default_backend() == "gpu":
        return {"xla_gpu_enable_triton_gemm": False, "xla_gpu_dot_merger_threshold_mb": 0}
    return None


@functools.cache
def pooled_program(out_sharding=None, mesh=None):
    """The extraction program: `_pooled_rows`, data-parallel over `mesh` when one is given,
    with its outputs placed in `out_sharding` when one is given."""
    options = compiler_options()
    if out_sharding is None and mesh is None and options is None:
        return _pooled_rows
    fn = _pooled_fn if mesh is None else data_parallel(_pooled_fn, mesh)
    return jax.jit(fn, static_argnames=STATIC, out_shardings=out_sharding, compiler_options=options)


HOST_COPIES = ("put", "program", "async")


def pooled_dispatcher(mesh=None, host_copy: str = "put"):
    """dispatch(params, ids, mask[, cols], config=, k=, poolings=, out_dtype=, options=)
    -> the program's outputs ((hidden, ffn), or (columns,)) on their way to the host,
    unwaited.

    host_copy (where pinned host memory exists; else "async"):
      "put"      the program's outputs stay on the device, then a device_put into pinned
                 host memory: a DMA on the copy stream that overlaps the next batch.
      "program"  the program writes its outputs to pinned host memory itself, at its end.
      "async"    copy_to_host_async: the runtime copies through pageable memory.
    """
    if host_copy not in HOST_COPIES:
        raise ValueError(f"host_copy={host_copy!r}: choose one of {HOST_COPIES}.")
    host = host_sharding(mesh)
    mode = host_copy if host is not None else "async"
    program = pooled_program(host if mode == "program" else None, mesh)

    def dispatch(*args, **static):
        out = program(*args, **static)
        if mode == "put":
            return jax.device_put(out, host)
        if mode == "async":
            for x in out:  # start the device-to-host copy as soon as the batch is done
                x.copy_to_host_async()
        return out

    dispatch.program = program  # what ahead.py compiles
    return dispatch
