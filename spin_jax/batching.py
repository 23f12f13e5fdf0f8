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


# What one more program costs, in padded tokens it would take to run instead: a compile's
# seconds (typical of a model's forward on the backend) times the backend's rate of
# arithmetic, over the model's FLOPs per token (runner.flops_per_token). Rough figures,
# used only to weigh a bucket's padding against its compile (benchmarks/RESULTS.md).
COMPILE_SECONDS = {"cpu": 1.0, "gpu": 2.0, "tpu": 10.0}
FLOPS_PER_SECOND = {"cpu": 5e10, "gpu": 2e14, "tpu": 1e14}


def compile_tokens(backend: str, flops_per_token: float) -> float:
    """Padded tokens that cost as much time as one compile on `backend` (0 if unknown)."""
    if backend not in COMPILE_SECONDS or flops_per_token <= 0:
        return 0.0
    return COMPILE_SECONDS[backend] * FLOPS_PER_SECOND[backend] / flops_per_token


def backend_plan(
    backend: str,
    lengths,
    max_length: int,
    token_budget: int,
    multiple: int = 1,
    compile_cost: float = 0.0,
):
    """plan_batches with `backend`'s (jax.default_backend()) buckets and batch limits.

    compile_cost: what one more program (shape) costs in padded tokens (compile_tokens);
    with it, neighbouring buckets are merged, and a bucket's last batch is kept at full size,
    wherever the padding that adds costs less than the compiles it saves. A small model on
    a GPU then runs one or two shapes where the grid alone would compile six."""
    grid, budget, rows = BUCKETS, token_budget, None
    if backend == "cpu":
        grid, budget, rows = CPU_BUCKETS, min(token_budget, CPU_TOKEN_BUDGET), CPU_ROWS

    def plan(buckets):
        return plan_batches(
            lengths, max_length, budget, multiple, buckets=buckets, max_rows=rows,
            compile_cost=compile_cost,
        )  # fmt: skip

    if compile_cost <= 0:
        return plan(grid)
    # The buckets' model pads each row to its own bucket, where batches also take shorter
    # rows: so the whole grid's plan is a candidate too, and the cheaper plan is run.
    plans = [plan(grid), plan(cheapest_buckets(lengths, max_length, grid, compile_cost))]
    return min(plans, key=lambda p: plan_cost(p, compile_cost))


def plan_cost(plan, compile_cost: float) -> float:
    """Padded tokens a plan runs, plus compile_cost per distinct shape."""
    shapes = {(blen, size) for _, blen, size in plan}
    return sum(blen * size for _, blen, size in plan) + compile_cost * len(shapes)


def cheapest_buckets(lengths, max_length: int, grid: tuple[int, ...], compile_cost: float):
    """The subset of `grid` that pads `lengths` at the least padded tokens plus
    compile_cost per bucket used (a dynamic programme over the buckets the rows reach)."""
    used, counts = np.unique([bucket_length(int(n), max_length, grid) for n in lengths],
                             return_counts=True)  # fmt: skip
    # best[j]: the cost of the rows of buckets 0..j-1, with bucket j-1 kept; prev: the choice.
    best, prev = [0.0] + [np.inf] * len(used), [0] * (len(used) + 1)
    for j in range(1, len(used) + 1):
        for i in range(j):
            cost = best[i] + used[j - 1] * counts[i:j].sum() + compile_cost
            if cost < best[j]:
                best[j], prev[j] = cost, i
    kept, j = [], len(used)
    while j > 0:
        kept.append(int(used[j - 1]))
        j = prev[j]
    return tuple(sorted(kept))


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
    compile_cost: float = 0.0,
):
    """[(row indices, padded length, batch size)] covering every row once.

    Rows are taken longest first. A batch is padded to the bucket of its longest row and
    holds token_budget // that length rows (rounded down to a multiple of `multiple`, the
    device count), so each bucket length has one batch size and shapes repeat. A batch is
    filled with the next shorter rows even where they belong to a lower bucket: padding a
    short row costs less than an empty row. Only the last batch can hold empty rows, and
    it, like a bucket too small to fill a batch before much shorter rows, gets a
    power-of-two size, unless the padding that saves is worth less than `compile_cost`
    (padded tokens per program) and the batch keeps its bucket's full size.
    `buckets`: the lengths to pad to; `max_rows`: a cap on the batch size.
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
                size = _smaller(size, n, blen, multiple, compile_cost)
            elif left < size:  # the last batch: a power of two, few shapes to compile
                size = _smaller(size, left, blen, multiple, compile_cost)
            sizes[blen] = size
        rows = order[start : start + sizes[blen]]
        plan.append((rows, blen, sizes[blen]))
        start += len(rows)
    return plan


def _smaller(size: int, n: int, blen: int, multiple: int, compile_cost: float) -> int:
    """A power-of-two batch size for n rows, if its saved padding pays for its compile."""
    small = min(size, round_up(_next_pow2(n), multiple))
    return small if (size - small) * blen > compile_cost else size


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())
