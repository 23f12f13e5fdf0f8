"""Batches of texts: length buckets, and the plan that covers every row in few shapes."""

from __future__ import annotations

import numpy as np

from spin_jax.devices import round_up

# Tokens per batch (padding included). Measured on an H100 with GPT2-XL, 32768 is faster
# than 16384 (fewer calls, so fewer per-layer weight copies: benchmarks/RESULTS.md) and costs
# ~0.4 GB of FFN activation per layer in bf16; lower it on small devices.
TOKEN_BUDGET = 32768
BUCKETS = (16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def bucket_length(n: int, max_length: int) -> int:
    for b in BUCKETS:
        if n <= b:
            return min(b, max_length)
    return max_length


def plan_batches(lengths: np.ndarray, max_length: int, token_budget: int, multiple: int = 1):
    """[(row indices, padded length, batch size)] covering every row once.

    Rows are taken longest first. A batch is padded to the bucket of its longest row and
    holds token_budget // that length rows (rounded down to a multiple of `multiple`, the
    device count), so each bucket length has one batch size and shapes repeat. A batch is
    filled with the next shorter rows even where they belong to a lower bucket: padding a
    short row costs less than an empty row. Only the last batch can hold empty rows, and
    it, like a bucket too small to fill a batch before much shorter rows, gets a
    power-of-two size.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    buckets = np.array([bucket_length(int(n), max_length) for n in lengths[order]], int)
    sizes: dict[int, int] = {}
    plan, start = [], 0
    while start < len(order):
        blen = int(buckets[start])
        if blen not in sizes:
            size = max(multiple, (token_budget // blen) // multiple * multiple)
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
