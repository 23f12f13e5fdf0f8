"""Programs compiled ahead of their first call, side by side in worker threads.

A stage that knows the shapes it will run (extraction's batch buckets, the probes' layer
chunks, integration's lane batches) hands them here before its first call. XLA compiles
with the GIL released, so the programs compile at once on the host's cores, and beside the
device's work, instead of one after another at their first calls. A compiled program lands
in jit's own cache: the later call with arrays of the same shapes, dtypes and placement
compiles nothing (tests/test_ahead.py counts). A guess that does not match costs only
host time: the real call compiles as it would have.

Off by default: on one H200 the MiniLM-size learner (13600 + 3400 rows, cold) took 15.6
and 20.2 s with it against 19.2 and 16.7 s without, the parallel compiles each slower (their
seconds summed to 20-45 against 8-10) and integration's speculative batch sizes compiled
for nothing (benchmarks/RESULTS.md, session 14). SPIN_JAX_COMPILE_AHEAD=1 turns it on.
"""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import numpy as np

log = logging.getLogger("spin_jax")
ENV = "SPIN_JAX_COMPILE_AHEAD"
# Compiles side by side at most: XLA's compile of one program is mostly one thread, and a
# large one (a GPT2-XL forward) holds a few GB of host memory while it compiles.
MAX_WORKERS = 8


def enabled() -> bool:
    """Only when asked (SPIN_JAX_COMPILE_AHEAD=1). On a CPU backend it cannot pay: the
    host's cores run the programs (the demo's extraction took 6.4 s with its 6 programs
    compiled ahead against 5.6 s without, 2 cores); on a GPU it measured no gain (above)."""
    return os.environ.get(ENV, "").lower() in ("1", "true", "yes", "on")


@functools.cache
def _pool() -> ThreadPoolExecutor:
    workers = max(1, min(MAX_WORKERS, os.cpu_count() or 1))
    return ThreadPoolExecutor(workers, thread_name_prefix="spin_jax-compile")


def spec(x) -> jax.ShapeDtypeStruct:
    """The abstract value of an array (its shape, dtype and, if committed, sharding)."""
    sharding = getattr(x, "sharding", None) if getattr(x, "committed", False) else None
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _jitted(fn):
    """(the jitted function, static keywords) of fn, a jitted function or a partial of
    one, or of a function that names its jitted program in `.program`; None if none."""
    static = {}
    while isinstance(fn, functools.partial):
        static = {**fn.keywords, **static}
        fn = fn.func
    fn = getattr(fn, "program", fn)
    return (fn, static) if hasattr(fn, "lower") else None


def submit(fn, *args, **kwargs) -> Future | None:
    """Compiles `fn(*args, **kwargs)` in a worker thread (args may be ShapeDtypeStructs);
    None if compiling ahead is off or fn is not a jitted program."""
    if not enabled():  # first: `call` runs this at every lane step
        return None
    found = _jitted(fn)
    if found is None:
        return None
    jitted, static = found
    kwargs = {**static, **kwargs}
    key = _key(jitted, args, kwargs)
    if key not in _SUBMITTED:  # compiled (or compiling) already: jit's cache has it
        _SUBMITTED[key] = _pool().submit(_compile, jitted, args, kwargs)
    return _SUBMITTED[key]


_SUBMITTED: dict = {}


def _key(jitted, args, kwargs):
    """What jit's cache tells these arguments by: shapes, dtypes, a mesh's sharding (on one
    device an array compiles as its ShapeDtypeStruct does), and the static values."""
    leaves, tree = jax.tree.flatten((args, kwargs))
    return id(jitted), tree, tuple(_abstract(x) for x in leaves)


def _abstract(x):
    if not isinstance(x, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)):
        return x  # a static value (or a Python scalar, traced by its type)
    sharding = getattr(x, "sharding", None)
    mesh = str(sharding) if isinstance(sharding, jax.sharding.NamedSharding) else None
    return x.shape, str(x.dtype), mesh


def background(fn) -> Future | None:
    """Runs fn() in a worker thread (one that traces shapes and submits programs)."""
    if not enabled():
        return None
    future = _pool().submit(fn)
    future.add_done_callback(wait)  # a failure is logged, never raised
    return future


def _compile(jitted, args, kwargs) -> None:
    jitted.lower(*args, **kwargs).compile()  # kept by jit's cache, not here


def forget() -> None:
    """Waits for every compile started, then forgets them: after jax.clear_caches() a
    program submitted before is compiled again."""
    wait_all(list(_SUBMITTED.values()))
    _SUBMITTED.clear()


def wait(future: Future | None) -> None:
    """Blocks until a submitted compile is done. A compile that failed is only logged: the
    real call compiles again and raises what it raises, where the user sees it."""
    if future is None:
        return
    error = future.exception()
    if error is not None:
        log.debug("compile ahead failed (the call will compile): %r", error)


def call(fn, *args, **kwargs):
    """fn(*args, **kwargs) once its compile, if started ahead (or started now, if not), is
    done: the call itself then compiles nothing, and never races a worker for it."""
    wait(submit(fn, *args, **kwargs))
    return fn(*args, **kwargs)


def submit_all(calls) -> list[Future | None]:
    """submit(fn, *args, **kwargs) for each (fn, args, kwargs) of calls."""
    return [submit(fn, *args, **kwargs) for fn, args, kwargs in calls]


def wait_all(futures) -> None:
    for f in futures:
        wait(f)
