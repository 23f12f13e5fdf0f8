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
    known: frozenset = frozenset(),
):
    """plan_batches with `backend`'s (jax.default_backend()) buckets and batch limits.

    compile_cost: what one more program (shape) costs in padded tokens (compile_tokens);
    with it, neighbouring buckets are merged, and a bucket's last batch is kept at full size,
    wherever the padding that adds costs less than the compiles it saves. A small model on
    a GPU then runs one or two shapes where the grid alone would compile six. `known`:
    (padded length, batch size) shapes already compiled, which cost nothing (a fit's valid
    split then pads to the train split's lengths)."""
    grid, budget, rows = BUCKETS, token_budget, None
    if backend == "cpu":
        grid, budget, rows = CPU_BUCKETS, min(token_budget, CPU_TOKEN_BUDGET), CPU_ROWS

    def plan(buckets):
        return plan_batches(
            lengths, max_length, budget, multiple, buckets=buckets, max_rows=rows,
            compile_cost=compile_cost,
        )  # fmt: skip

    if compile_cost <= 0 or len(lengths) == 0:
        return plan(grid)
    # Known lengths are free only at the size a full batch of them has in this plan.
    free = {b for b, size in known if size == _full_size(b, budget, multiple, rows)}
    cheap = cheapest_buckets(lengths, max_length, grid, compile_cost, free)
    # The buckets' model pads each row to its own bucket, where batches also take shorter
    # rows: so the whole grid's plan is a candidate too, and the cheaper plan is run.
    return min([plan(grid), plan(cheap)], key=lambda p: plan_cost(p, compile_cost, known))


def plan_cost(plan, compile_cost: float, known=frozenset()) -> float:
    """Padded tokens a plan runs, plus compile_cost per distinct shape not yet `known`."""
    shapes = {(blen, size) for _, blen, size in plan} - set(known)
    return sum(blen * size for _, blen, size in plan) + compile_cost * len(shapes)


def _full_size(blen: int, token_budget: int, multiple: int, max_rows: int | None) -> int:
    """The rows of a full batch padded to blen (plan_batches' batch size)."""
    size = max(multiple, (token_budget // blen) // multiple * multiple)
    if max_rows is not None:
        size = max(multiple, min(size, max_rows // multiple * multiple))
    return size


def cheapest_buckets(
    lengths, max_length: int, grid: tuple[int, ...], compile_cost: float, free=frozenset()
):
    """The bucket lengths that pad `lengths` at the least padded tokens plus compile_cost
    per bucket used (a dynamic programme over the buckets the rows reach); lengths in
    `free` (compiled already) cost no compile and may serve rows of shorter buckets."""
    reached = [bucket_length(int(n), max_length, grid) for n in lengths]
    top = max(reached)
    extra = {b for b in free if min(reached) < b <= max_length}
    cands = np.array(sorted(set(reached) | extra))
    counts = np.array([np.count_nonzero(np.equal(reached, b)) for b in cands])
    # best[j]: the cost of the rows of cands[:j], with cands[j-1] kept; prev: the choice.
    best, prev = [0.0] + [np.inf] * len(cands), [0] * (len(cands) + 1)
    for j in range(1, len(cands) + 1):
        compile_j = 0.0 if int(cands[j - 1]) in free else compile_cost
        for i in range(j):
            cost = best[i] + cands[j - 1] * counts[i:j].sum() + compile_j
            if cost < best[j]:
                best[j], prev[j] = cost, i
    ends = [j for j in range(1, len(cands) + 1) if cands[j - 1] >= top]  # covers every row
    j = min(ends, key=lambda j: best[j])
    kept = []
    while j > 0:
        kept.append(int(cands[j - 1]))
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
            size = _full_size(blen, token_budget, multiple, max_rows)
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
