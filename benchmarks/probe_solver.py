"""How fast does spin_jax fit every SPIN probe of GPT2-XL, against scikit-learn's saga?

The problem: one L1 logistic probe per (layer, pooling, feature kind) of a GPT2-XL-shaped
model: (48 + 1) hidden-state layers of width 1600 and 48 FFN layers of width 6400, three
poolings each (291 probes), on N train rows plus a validation split, over a grid of
scikit-learn C values (default: probes.PAPER_C_GRID). The features are synthetic, generated
on the device chunk by chunk (bf16 storage): a low-rank correlated part, noise, per-feature
offset and scale, and a class-dependent shift on a few planted features whose strength grows
with depth, so validation accuracies differ between probes.

  spin_jax   probes.fit_many_standardized over a chunk of problems (every lam at once on
             bf16 standardised features by default; --warm-start and --solver-dtype float32
             give the older variants; one jitted program), then validation accuracy of
             every lam. The chunk is
             the largest divisor of the group size that fits the memory budget, so each
             feature width compiles once. "compile s" is the AOT lower+compile of those
             programs; "steady s" the solve+evaluate time of all chunks, synchronised with
             block_until_ready (feature generation, which stands in for extraction, excluded).
  sklearn    LogisticRegression(solver="saga", L1) on the same standardised features (float32,
             host), one fit per (probe, C), joblib n_jobs=-1 over all of them. Only a random
             sample of probes is fitted; the full time is extrapolated from the summed
             per-fit seconds / CPU cores * (all probes / sampled probes): ideal parallel
             scaling, which favours sklearn.

Both pick the best C per probe by validation accuracy; accuracies are compared on the sampled
probes. The objective gap (ours - sklearn) / sklearn is the training objective of probes.py
in float64 on the sampled (probe, C) pairs: negative means our optimum is lower.

    python benchmarks/probe_solver.py              # full GPT2-XL size, needs a GPU
    python benchmarks/probe_solver.py --quick      # tiny, CPU, under a minute
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from spin_jax import probes

N_LATENT = 8  # rank of the correlated part of the synthetic features
N_SIGNAL = 16  # planted informative features per probe


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--hidden", type=int, default=1600)
    p.add_argument("--ffn", type=int, default=6400)
    p.add_argument("--poolings", type=int, default=3)
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-valid", type=int, default=5000)
    p.add_argument("--n-classes", type=int, default=2)
    p.add_argument("--c-grid", type=str, default=",".join(map(str, probes.PAPER_C_GRID)))
    p.add_argument("--max-iter", type=int, default=1000, help="FISTA iterations per lam")
    p.add_argument("--tol", type=float, default=1e-5, help="FISTA relative-change tolerance")
    p.add_argument("--warm-start", action="store_true", help="solve lams in turn (probes.py)")
    p.add_argument(
        "--solver-dtype",
        default="bfloat16",
        choices=("bfloat16", "float32"),
        help="dtype of the standardised features the solver reads",
    )
    p.add_argument("--sk-sample", type=int, default=6, help="probes fitted by sklearn (0: none)")
    p.add_argument("--sk-tol", type=float, default=1e-4)
    p.add_argument("--sk-max-iter", type=int, default=100)
    p.add_argument("--mem-gb", type=float, default=None, help="device memory for a chunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU smoke test")
    args = p.parse_args(argv)
    if args.quick:  # tiny defaults; flags given explicitly still win
        p.set_defaults(layers=2, hidden=48, ffn=192, n_train=1000, n_valid=300, sk_sample=2)
        args = p.parse_args(argv)
    return args


# ----------------------------------------------------------------------------- problems


def problem_groups(args) -> list[tuple[str, int, int]]:
    """(kind, feature width, number of probes): hidden states include the embeddings."""
    return [
        ("hidden", args.hidden, (args.layers + 1) * args.poolings),
        ("ffn", args.ffn, args.layers * args.poolings),
    ]


def chunk_size(n_problems: int, n_feat: int, n_rows: int, budget_bytes: float) -> int:
    """Largest divisor of n_problems whose chunk fits the budget (equal chunks: one compile).

    Per problem: bf16 features (2 B) plus the fp32 standardised copy and the solver's fp32
    working copy of the train rows, and an fp32 upcast of the validation rows: ~12 B/entry.
    """
    fit = max(1, int(budget_bytes // (12 * n_rows * n_feat)))
    return max(d for d in range(1, n_problems + 1) if n_problems % d == 0 and d <= fit)


def memory_budget(args) -> float:
    if args.mem_gb is not None:
        return args.mem_gb * 2**30
    # 40% of the device: generating a chunk briefly holds fp32 features before the bf16 cast.
    stats = jax.devices()[0].memory_stats() or {}
    return 0.4 * stats.get("bytes_limit", 8 * 2**30)


@partial(jax.jit, static_argnames=("n_classes", "n_feat"))
def make_features(key, y, strength, n_classes: int, n_feat: int):
    """Synthetic pooled activations [N, F] bf16 for one probe, labels y [N]."""
    k_z, k_a, k_noise, k_idx, k_mu, k_scale = jax.random.split(key, 6)
    n = y.shape[0]
    z = jax.random.normal(k_z, (n, N_LATENT))
    a = jax.random.normal(k_a, (N_LATENT, n_feat)) * 2.0 / np.sqrt(N_LATENT)
    x = z @ a + jax.random.normal(k_noise, (n, n_feat))
    idx = jax.random.choice(k_idx, n_feat, (N_SIGNAL,), replace=False)
    class_means = jax.random.normal(k_mu, (n_classes, N_SIGNAL)) * strength
    x = x.at[:, idx].add(class_means[y])
    # Activations are neither centred nor unit scale: standardisation has work to do.
    scale = jnp.exp(jax.random.normal(k_scale, (n_feat,)))
    return (x * scale + 3.0 * scale).astype(jnp.bfloat16)


def make_chunk(key, y_all, strengths, n_classes, n_feat, first: int):
    """Features [G, N_train + N_valid, F] of problems first .. first + G - 1."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(len(strengths)))
    gen = jax.vmap(lambda k, s: make_features(k, y_all, s, n_classes, n_feat))
    return gen(keys, strengths)


def layer_strengths(n_problems: int, poolings: int) -> np.ndarray:
    """Planted signal strength per problem (layer-major): weak at the bottom, strong on top."""
    depth = np.repeat(np.arange(n_problems // poolings), poolings) / max(n_problems // poolings, 1)
    return (0.1 + 0.4 * depth).astype(np.float32)


# ----------------------------------------------------------------------------- spin_jax


@partial(jax.jit, static_argnames=("n_classes", "max_iter", "warm_start", "dtype"))
def solve_chunk(X, y_train, y_valid, lams, n_classes, max_iter, tol, warm_start, dtype):
    """Fit every problem of the chunk at every lam; validation accuracy [G, R] of each fit."""
    n_train = y_train.shape[0]
    X_train, X_valid = X[:, :n_train].astype(dtype), X[:, n_train:]
    fit, mean, std = probes.fit_many_standardized(
        X_train, y_train, n_classes, lams, max_iter=max_iter, tol=tol, warm_start=warm_start
    )

    def valid_acc(X_valid, weights, intercept, mean, std):
        w_raw, b_raw = probes.unstandardize(weights, intercept, mean, std)
        return probes.accuracy(y_valid, probes.predict(X_valid, w_raw, b_raw))

    acc = jax.vmap(valid_acc)(X_valid, fit.weights, fit.intercept, mean, std)
    return fit, mean, std, acc


def run_spin_jax(args, y_train, y_valid, lams, sample: set[int]):
    """Time all probes; return timings, per-probe results and the sampled probes' data."""
    key = jax.random.key(args.seed)
    y_all = jnp.concatenate([y_train, y_valid])
    n_rows, budget = len(y_all), memory_budget(args)
    out = dict(compile_s=0.0, steady_s=0.0, gen_s=0.0, acc=[], n_iter=[], converged=[])
    host = {}  # sampled probe -> (standardised train X, valid X, weights, intercept)
    offset = 0
    for kind, n_feat, n_problems in problem_groups(args):
        g = chunk_size(n_problems, n_feat, n_rows, budget)
        strengths = layer_strengths(n_problems, args.poolings)
        compiled = None
        for first in range(0, n_problems, g):
            t = time.perf_counter()
            s = jnp.asarray(strengths[first : first + g])
            X = make_chunk(key, y_all, s, args.n_classes, n_feat, offset + first)
            X.block_until_ready()
            out["gen_s"] += time.perf_counter() - t
            call = (X, y_train, y_valid, lams, args.n_classes, args.max_iter, args.tol)
            call += (args.warm_start, jnp.dtype(args.solver_dtype))
            if compiled is None:
                t = time.perf_counter()
                compiled = solve_chunk.lower(*call).compile()
                out["compile_s"] += time.perf_counter() - t
                print(f"  {kind}: {n_problems} probes of width {n_feat}, chunks of {g}")
            t = time.perf_counter()
            fit, mean, std, acc = jax.block_until_ready(
                compiled(X, y_train, y_valid, lams, args.tol)
            )
            out["steady_s"] += time.perf_counter() - t
            out["acc"].append(np.asarray(acc))
            out["n_iter"].append(np.asarray(fit.n_iter))
            out["converged"].append(np.asarray(fit.converged))
            for i in range(g):
                if offset + first + i in sample:
                    host[offset + first + i] = sampled_probe(args, X[i], fit, mean, std, i)
        offset += n_problems
    for name in ("acc", "n_iter", "converged"):
        out[name] = np.concatenate(out[name])
    return out, host


def sampled_probe(args, X, fit, mean, std, i):
    """Host copies of one probe: standardised train and valid X (fp32), our fits."""
    Xs = np.asarray(probes.standardize(X.astype(jnp.float32), mean[i], std[i]))
    return (
        Xs[: args.n_train],
        Xs[args.n_train :],
        np.asarray(fit.weights[i]),
        np.asarray(fit.intercept[i]),
    )


# ----------------------------------------------------------------------------- sklearn


def sklearn_fit(X, y, X_valid, y_valid, C, tol, max_iter):
    """One saga L1 fit: (coef [K, F], intercept [K], valid accuracy, n_iter, seconds)."""
    import warnings

    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    # scikit-learn 1.8 replaced penalty="l1" by l1_ratio=1.
    version = tuple(int(p) for p in sklearn.__version__.split(".")[:2])
    kind = {"l1_ratio": 1.0} if version >= (1, 8) else {"penalty": "l1"}
    clf = LogisticRegression(solver="saga", C=C, tol=tol, max_iter=max_iter, **kind)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    seconds = time.perf_counter() - t
    acc = float(np.mean(clf.predict(X_valid) == y_valid))
    return clf.coef_, clf.intercept_, acc, int(clf.n_iter_.max()), seconds


def run_sklearn(args, host, y_train, y_valid, c_grid):
    """Fit every sampled (probe, C) with joblib over all cores."""
    from joblib import Parallel, delayed

    tasks = [(p, c) for p in sorted(host) for c in c_grid]
    t = time.perf_counter()
    results = Parallel(n_jobs=-1)(
        delayed(sklearn_fit)(
            host[p][0], y_train, host[p][1], y_valid, c, args.sk_tol, args.sk_max_iter
        )
        for p, c in tasks
    )
    wall = time.perf_counter() - t
    return dict(zip(tasks, results, strict=True)), wall


def objective_np(X, y, W, b, lam):
    """probes.py's objective in float64: mean logistic loss + lam * ||W||_1, W [F, K]."""
    z = X.astype(np.float64) @ W.astype(np.float64) + b
    if W.shape[1] == 1:
        loss = np.logaddexp(0.0, z[:, 0]) - y * z[:, 0]
    else:
        zmax = z.max(1)
        loss = zmax + np.log(np.exp(z - zmax[:, None]).sum(1)) - z[np.arange(len(y)), y]
    return loss.mean() + lam * np.abs(W).sum()


# ----------------------------------------------------------------------------- report


def compare(args, ours, host, sk, c_grid, lams, y_train):
    """Best-C validation accuracy of both on the sampled probes, and the objective gap."""
    acc_ours, acc_sk, gaps = [], [], []
    for p in sorted(host):
        Xs, _, weights, intercept = host[p]
        acc_ours.append(ours["acc"][p].max())
        acc_sk.append(max(sk[(p, c)][2] for c in c_grid))
        for r, c in enumerate(c_grid):
            coef, b_sk = sk[(p, c)][:2]
            lam = float(lams[r])
            obj = objective_np(Xs, y_train, weights[r], intercept[r], lam)
            obj_sk = objective_np(Xs, y_train, coef.T, b_sk, lam)
            gaps.append((obj - obj_sk) / obj_sk)
    return np.mean(acc_ours), np.mean(acc_sk), np.mean(gaps), np.max(gaps)


def main(argv=None) -> None:
    args = parse_args(argv)
    from joblib import cpu_count

    c_grid = sorted(float(c) for c in args.c_grid.split(","))
    lams = probes.lams_from_c(c_grid, args.n_train)  # largest lam = smallest C first
    n_probes = sum(n for *_, n in problem_groups(args))
    rng = np.random.default_rng(args.seed)
    sample = set(rng.choice(n_probes, min(args.sk_sample, n_probes), replace=False).tolist())
    y_train = jnp.asarray(rng.integers(0, args.n_classes, args.n_train), jnp.int32)
    y_valid = jnp.asarray(rng.integers(0, args.n_classes, args.n_valid), jnp.int32)
    device = jax.devices()[0]
    print(f"{n_probes} probes x {len(c_grid)} C values on {device.device_kind}")

    ours, host = run_spin_jax(args, y_train, y_valid, lams, sample)
    print()
    print(f"command: python {' '.join([sys.argv[0], *sys.argv[1:]])}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"device: {device.device_kind} ({device.platform}); sklearn: {cpu_count()} CPU cores")
    print(f"jax {jax.__version__}, C grid {c_grid}, N train {args.n_train}, valid {args.n_valid}")
    path = "warm-started path" if args.warm_start else "all lams at once"
    print(f"spin_jax solver: {args.solver_dtype} features, {path}, tol {args.tol}")
    print(
        f"spin_jax: {ours['steady_s']:.1f} s steady, {ours['compile_s']:.1f} s compile; "
        f"mean valid acc over all probes {ours['acc'].max(-1).mean():.4f}, "
        f"mean FISTA iterations per lam {ours['n_iter'].mean():.0f}, "
        f"converged {ours['converged'].mean():.1%}, feature generation {ours['gen_s']:.1f} s"
    )
    if host:
        report_sklearn(args, ours, host, y_train, y_valid, c_grid, lams, n_probes, device)


def report_sklearn(args, ours, host, y_train, y_valid, c_grid, lams, n_probes, device):
    from joblib import cpu_count

    sk, sk_wall = run_sklearn(args, host, np.asarray(y_train), np.asarray(y_valid), c_grid)
    cores = cpu_count()
    sk_seconds = sum(r[4] for r in sk.values())
    sk_total = sk_seconds / cores * n_probes / len(host)
    acc_ours, acc_sk, gap_mean, gap_max = compare(
        args, ours, host, sk, c_grid, lams, np.asarray(y_train)
    )
    print()
    print("| solver | probes fitted | compile s | total s | valid acc (sampled) |")
    print("|---|---|---|---|---|")
    print(
        f"| spin_jax FISTA ({device.device_kind}) | {n_probes} | {ours['compile_s']:.1f} "
        f"| {ours['steady_s']:.1f} | {acc_ours:.4f} |"
    )
    print(
        f"| sklearn saga ({cores} cores, extrapolated) | {len(host)} of {n_probes} | - "
        f"| {sk_total:.1f} | {acc_sk:.4f} |"
    )
    print()
    print(f"speedup (steady state): {sk_total / ours['steady_s']:.1f}x")
    print(
        f"sklearn sample: {len(sk)} fits, wall {sk_wall:.1f} s, summed fit time "
        f"{sk_seconds:.1f} s, max saga epochs {max(r[3] for r in sk.values())}"
    )
    print(f"objective gap (ours - sklearn) / sklearn: mean {gap_mean:.2e}, max {gap_max:.2e}")


if __name__ == "__main__":
    main()
