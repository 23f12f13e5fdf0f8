"""Batches of texts: length buckets, and the plan that covers every row in few shapes."""

from __future__ import annotations

import numpy as np

from spin_jax.devices import round_up

# Tokens per batch (padding included). Measured on an H100 with GPT2-XL, 32768 is faster
# than 16384 (fewer calls, so fewer per-layer weight copies: benchmarks/RESULTS.md) and costs
# ~0.4 GB of FFN activation per layer in bf16; lower it on small devices. On CPU a batch
# holds at most CPU_TOKEN_BUDGET tokens whatever the budget (backend_plan).
TOKEN_BUDGET = 32768
BUCKETS = (16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
# On CPU: lengths at most 1/4 apart (steps of 16 to 128, 32 to 256, 64 to 512, ...) and
# batches of at most CPU_ROWS rows and CPU_TOKEN_BUDGET tokens, so that a batch is padded
# close to its longest row (rows sorted by length, as torch users batch them). A CPU gains
# little from large batches (a call's overhead is ms against ~0.1 s of compute for 32 x 112
# tokens of the MiniLM) and pays for every padded token. Each length has one batch size, so a
# run compiles at most one program per length it uses (benchmarks/RESULTS.md, CPU).
CPU_BUCKETS = (
    *range(16, 128, 16), *range(128, 256, 32), *range(256, 512, 64), *range(512, 1024, 128),
    *range(1024, 2049, 256),
)  # fmt: skip
CPU_TOKEN_BUDGET = 8192
CPU_ROWS = 32


def backend_plan(backend: str, lengths, max_length: int, token_budget: int, multiple: int = 1):
    """plan_batches with `backend`'s (jax.default_backend()) buckets and batch limits."""
    if backend != "cpu":
        return plan_batches(lengths, max_length, token_budget, multiple)
    budget = min(token_budget, CPU_TOKEN_BUDGET)
    return plan_batches(
        lengths, max_length, budget, multiple, buckets=CPU_BUCKETS, max_rows=CPU_ROWS
    )


def bucket_length(n: int, max_length: int, buckets: tuple[int, ...] = BUCKETS) -> int:
    for b in buckets:
        if n <= b:
            return min(b, max_length)
    return max_length


def plan_batches(
    lengths: np.ndarray,
    max_length: int,
    token_budget: int,
    multiple: int = 1,
    buckets: tuple[int, ...] = BUCKETS,
    max_rows: int | None = None,
):
    """[(row indices, padded length, batch size)] covering every row once.

    Rows are taken longest first. A batch is padded to the bucket of its longest row and
    holds token_budget // that length rows (rounded down to a multiple of `multiple`, the
    device count), so each bucket length has one batch size and shapes repeat. A batch is
    filled with the next shorter rows even where they belong to a lower bucket: padding a
    short row costs less than an empty row. Only the last batch can hold empty rows, and
    it, like a bucket too small to fill a batch before much shorter rows, gets a
    power-of-two size. `buckets`: the lengths to pad to; `max_rows`: a cap on the batch size.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    padded = [bucket_length(int(n), max_length, buckets) for n in lengths[order]]
    buckets = np.array(padded, int)
    sizes: dict[int, int] = {}
    plan, start = [], 0
    while start < len(order):
        blen = int(buckets[start])
        if blen not in sizes:
            size = max(multiple, (token_budget // blen) // multiple * multiple)
            if max_rows is not None:
                size = max(multiple, min(size, max_rows // multiple * multiple))
            n = int(np.count_nonzero(buckets[start:] == blen))
            left = len(order) - start
            if n < min(size, left) and 2 * buckets[start + n] <= blen:
                # Too few rows of this length to fill a batch, and the next rows are less
                # than half as long: a power-of-two batch of its own, rather than pad many
                # short rows out to this length.
                size = min(size, round_up(_next_pow2(n), multiple))
            elif left < size:  # the last batch: a power of two, few shapes to compile
                size = min(size, round_up(_next_pow2(left), multiple))
            sizes[blen] = size
        rows = order[start : start + sizes[blen]]
        plan.append((rows, blen, sizes[blen]))
        start += len(rows)
    return plan


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())
