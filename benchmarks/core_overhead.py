"""Overhead of ``scg.grad`` against hand-written DiCE surrogates with the same credit assignment.

Run from the repository root::

    python benchmarks/core_overhead.py            # full run, a few minutes on a laptop CPU
    python benchmarks/core_overhead.py --quick    # smoke test, tiny sizes (< 1 minute)

Part 1 compares, for three models (from ``models.py``),
``jax.jit(jax.vmap(scg.grad(model), in_axes=(None, 0)))``
with ``jax.jit(jax.vmap(jax.grad(handwritten), in_axes=(None, 0)))``, where ``handwritten`` is
the DiCE surrogate of the same model written by hand: same draws from the same keys, and every
cost multiplied by the magic box of exactly the log-probabilities that ``scg`` assigns to it.
The script first checks that the two gradient estimates are equal (to float rounding). It
reports the median runtime ratio (with the interquartile range of per-round ratios), the
compiled HLO op counts and FLOPs, and the trace+compile time ratio.

Part 2 measures how the rewrite scales with the number of sample sites: the time of
``jax.make_jaxpr(scg.grad(fn))`` (tracing plus the rewrite, no compilation) for programs with
10, 100 and 1000 sites, against ``jax.make_jaxpr(jax.grad(handwritten))``.

Results are printed as markdown and written to ``--out`` (default
``benchmarks/results/core_overhead_<platform>.md``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import hlo_stats  # noqa: E402
from models import (  # noqa: E402
    ROLLOUT_THETA,
    SCALING_PROGRAMS,
    bits_handwritten,
    bits_model,
    rollout_handwritten,
    rollout_handwritten_carried,
    rollout_model,
    small_sbn_handwritten,
    small_sbn_model,
    small_sbn_params,
)

import jax_scg as scg  # noqa: E402

# Targets (ratios are scg / hand-written).
RUNTIME_TARGET = 1.02
COMPILE_TARGET = 1.5
# A fitted log-log slope up to this counts as linear scaling of the rewrite.
LINEAR_SLOPE = 1.15


# ------------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One comparison: an scg model and its hand-written surrogate, at one batch size."""

    name: str
    model: Callable
    handwritten: Callable
    theta: object
    n_keys: int


def _bind(fn, **kwargs):
    """``fn`` with keyword arguments fixed, as a fresh function object of ``(theta, key)``."""
    return lambda theta, key: fn(theta, key, **kwargs)


def make_cases(quick: bool) -> list[Case]:
    """The three models of part 1 (smaller batches and rollouts with ``quick``)."""
    steps = 8 if quick else 64
    n_bits, n_roll, n_sbn = (256, 64, 64) if quick else (4096, 1024, 1024)
    rollout_theta = jnp.array(ROLLOUT_THETA)
    return [
        Case("a. vector Bernoulli (64 bits, 1 site)", bits_model, bits_handwritten,
             jnp.linspace(-0.5, 0.5, 64), n_bits),
        Case(f"b. scan rollout ({steps} steps), cumsum after scan",
             _bind(rollout_model, steps=steps), _bind(rollout_handwritten, steps=steps),
             rollout_theta, n_roll),
        Case(f"b'. scan rollout ({steps} steps), running sum in scan",
             _bind(rollout_model, steps=steps), _bind(rollout_handwritten_carried, steps=steps),
             rollout_theta, n_roll),
        Case("c. sigmoid belief net (16 + 8 units)", small_sbn_model, small_sbn_handwritten,
             small_sbn_params(jax.random.key(3)), n_sbn),
    ]  # fmt: skip


def batched(grad_fn: Callable) -> Callable:
    """``jax.vmap(grad_fn, in_axes=(None, 0))``: one gradient estimate per key."""
    return jax.vmap(grad_fn, in_axes=(None, 0))


def scg_system(model: Callable) -> Callable:
    """A fresh (un-jitted) batched ``scg.grad`` of ``model``."""
    return batched(scg.grad(lambda theta, key: model(theta, key)))


def hand_system(handwritten: Callable) -> Callable:
    """A fresh (un-jitted) batched ``jax.grad`` of the hand-written surrogate."""
    return batched(jax.grad(lambda theta, key: handwritten(theta, key)))


def _assert_tree_close(actual, desired, what: str):
    """Asserts two pytrees of gradients are equal to float32 rounding (relative to scale)."""
    for a, d in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(desired)):
        a, d = np.asarray(a, np.float64), np.asarray(d, np.float64)
        scale = max(float(np.max(np.abs(d))), 1e-3)
        np.testing.assert_allclose(a, d, rtol=1e-4, atol=1e-5 * scale, err_msg=what)


def check_same_estimates(case: Case, n: int = 4):
    """Checks that scg and the hand-written surrogate give the same value and gradient.

    Per key (``n`` keys, one key per call, jitted): the objective's value, both surrogates'
    values and both gradients. Raises ``AssertionError`` otherwise.
    """
    value_fn = jax.jit(case.model)
    scg_value = jax.jit(scg.value_and_grad(case.model))
    hand_value = jax.jit(jax.value_and_grad(case.handwritten))
    for key in jax.random.split(jax.random.key(11), n):
        value = value_fn(case.theta, key)
        v_scg, g_scg = scg_value(case.theta, key)
        v_hand, g_hand = hand_value(case.theta, key)
        np.testing.assert_allclose(v_scg, value, rtol=1e-5, err_msg=case.name)
        np.testing.assert_allclose(v_hand, value, rtol=1e-5, err_msg=case.name)
        _assert_tree_close(g_scg, g_hand, f"{case.name}: scg.grad != hand-written")


def _count(x: float) -> str:
    return harness.fmt(x, ",.0f", "n/a")


def _met(ok: bool) -> str:
    return harness.met(ok, "yes", "**no**")


@dataclasses.dataclass(frozen=True)
class CaseResult:
    name: str
    n_keys: int
    timing: dict
    stats: dict
    compile_s: dict


def run_case(case: Case, repeats: int, compile_repeats: int, target_s: float) -> CaseResult:
    """Measures one case: compiled stats, interleaved runtime and trace+compile time."""
    keys = jax.random.split(jax.random.key(0), case.n_keys)
    args = (case.theta, keys)
    makers = {
        "scg": lambda: scg_system(case.model),
        "hand": lambda: hand_system(case.handwritten),
    }
    jitted = {name: jax.jit(make()) for name, make in makers.items()}
    # The batched, jitted estimates must agree too (same keys, same draws).
    _assert_tree_close(jitted["scg"](*args), jitted["hand"](*args), f"{case.name} (batched)")
    stats = {name: hlo_stats.compiled_stats(fn, *args) for name, fn in jitted.items()}
    times = harness.time_interleaved(jitted, args, repeats=repeats, target_s=target_s)
    timing = harness.summarize(times, baseline="hand")
    compile_s = {
        name: harness.trace_compile_time(make, *args, repeats=compile_repeats)
        for name, make in makers.items()
    }
    return CaseResult(case.name, case.n_keys, timing, stats, compile_s)


def overhead_rows(results: list[CaseResult]) -> list[list[str]]:
    """One table row per case: ratios, with whether each target is met."""
    rows = []
    for r in results:
        t, s, c = r.timing["scg"], r.stats, r.compile_s
        same_program = s["scg"].fingerprint == s["hand"].fingerprint
        ops_equal = s["scg"].op_count == s["hand"].op_count
        flops_equal = s["scg"].flops == s["hand"].flops
        compile_ratio = c["scg"] / c["hand"]
        rows.append(
            [
                r.name,
                r.n_keys,
                harness.timing_ratio(t, ".3f"),
                _met(t.ratio <= RUNTIME_TARGET),
                f"{s['scg'].op_count} / {s['hand'].op_count}",
                f"{_count(s['scg'].flops)} / {_count(s['hand'].flops)}",
                _met(ops_equal and flops_equal),
                "yes" if same_program else "no",
                f"{compile_ratio:.3f}",
                _met(compile_ratio <= COMPILE_TARGET),
            ]
        )
    return rows


def absolute_rows(results: list[CaseResult]) -> list[list[str]]:
    """Medians and IQRs (this run's absolute numbers, for reading the ratios)."""
    rows = []
    for r in results:
        for name in ("scg", "hand"):
            t = r.timing[name]
            rows.append(
                [
                    r.name,
                    name,
                    f"{t.median_s * 1e3:.3f}",
                    f"{t.iqr_s * 1e3:.3f}",
                    f"{r.compile_s[name] * 1e3:.0f}",
                    _count(r.stats[name].transcendentals),
                ]
            )
    return rows


def opcode_diff_rows(results: list[CaseResult]) -> list[list[str]]:
    """Opcodes whose counts differ between scg and hand-written, per case."""
    rows = []
    for r in results:
        a, b = r.stats["scg"].opcodes, r.stats["hand"].opcodes
        diff = {op: (a[op], b[op]) for op in sorted(set(a) | set(b)) if a[op] != b[op]}
        text = ", ".join(f"{op} {x}/{y}" for op, (x, y) in diff.items()) or "none"
        rows.append([r.name, text])
    return rows


# ------------------------------------------------------------------------------------------
# Part 2: rewrite-time scaling


def rewrite_time(make_program: Callable[[], Callable], transform: Callable, repeats: int):
    """Times ``jax.make_jaxpr(transform(program))`` on fresh programs (no cache hits).

    Returns:
      (median seconds, number of top-level equations of the resulting jaxpr).
    """
    theta, key = jnp.array([0.2, -0.4]), jax.random.key(0)
    times, eqns = [], 0
    for _ in range(repeats):
        fn = transform(make_program())
        start = time.perf_counter()
        jaxpr = jax.make_jaxpr(fn)(theta, key)
        times.append(time.perf_counter() - start)
        eqns = len(jaxpr.jaxpr.eqns)
    return float(np.median(times)), eqns


def check_scaling_program(make: Callable, n: int):
    """The scg and hand-written versions of a scaling program give the same gradient."""
    theta, key = jnp.array([0.2, -0.4]), jax.random.key(5)
    g_scg = jax.jit(scg.grad(make(n, False)))(theta, key)
    g_hand = jax.jit(jax.grad(make(n, True)))(theta, key)
    _assert_tree_close(g_scg, g_hand, f"scaling program with {n} sites")


@dataclasses.dataclass(frozen=True)
class ScalingPoint:
    """One program size: measured times and jaxpr sizes, or a skip with an estimate.

    Attributes:
      n: the number of sites.
      scg_s: seconds of ``make_jaxpr(scg.grad(fn))``; None when skipped.
      hand_s: seconds of ``make_jaxpr(jax.grad(handwritten))``; None when skipped.
      scg_eqns: top-level equations of the scg gradient's jaxpr.
      hand_eqns: top-level equations of the hand-written gradient's jaxpr.
      estimate_s: for a skipped size, the scg time extrapolated from the two previous sizes
        with their fitted log-log slope (not measured).
    """

    n: int
    scg_s: float | None = None
    hand_s: float | None = None
    scg_eqns: int = 0
    hand_eqns: int = 0
    estimate_s: float | None = None


def _extrapolate(points: list[ScalingPoint], n: int) -> float | None:
    """The scg time at ``n`` predicted by the log-log line through the last two points."""
    done = [p for p in points if p.scg_s is not None]
    if len(done) < 2:
        return None
    a, b = done[-2], done[-1]
    slope = harness.loglog_slope([a.n, b.n], [a.scg_s, b.scg_s])
    return b.scg_s * (n / b.n) ** max(slope, 1.0)


def run_scaling(sizes: list[int], repeats: int, budget_s: float):
    """Rewrite (trace) times of every scaling program at every size.

    A size is skipped when the scg time extrapolated from the previous sizes exceeds
    ``budget_s``; the estimate is reported as such.

    Returns:
      Program name -> list of :class:`ScalingPoint`.
    """
    results = {}
    for name, make in SCALING_PROGRAMS.items():
        check_scaling_program(make, sizes[0])
        rewrite_time(lambda make=make: make(sizes[0], False), scg.grad, 1)  # warm caches
        rewrite_time(lambda make=make: make(sizes[0], True), jax.grad, 1)
        points = []
        for n in sizes:
            estimate = _extrapolate(points, n)
            if estimate is not None and estimate > budget_s:
                points.append(ScalingPoint(n, estimate_s=estimate))
                print(f"  {name}: n={n} skipped, estimated {estimate:.0f}s", flush=True)
                continue
            reps = repeats if n < 1000 else 1
            t_scg, e_scg = rewrite_time(lambda n=n, make=make: make(n, False), scg.grad, reps)
            t_hand, e_hand = rewrite_time(lambda n=n, make=make: make(n, True), jax.grad, reps)
            points.append(ScalingPoint(n, t_scg, t_hand, e_scg, e_hand))
            print(f"  {name}: n={n} scg {t_scg:.3f}s hand {t_hand:.3f}s", flush=True)
        results[name] = points
    return results


def scaling_rows(results) -> list[list[str]]:
    rows = []
    for name, points in results.items():
        for p in points:
            if p.scg_s is None:
                est = f"skipped: over budget, ~{p.estimate_s:.0f} s extrapolated"
                rows.append([name, p.n, est, "", "", "", "", ""])
                continue
            rows.append(
                [
                    name,
                    p.n,
                    f"{p.scg_s * 1e3:.1f}",
                    f"{p.scg_s / p.n * 1e3:.2f}",
                    f"{p.hand_s * 1e3:.1f}",
                    f"{p.hand_s / p.n * 1e3:.2f}",
                    f"{p.scg_s / p.hand_s:.3f}",
                    f"{p.scg_eqns} / {p.hand_eqns}",
                ]
            )
    return rows


def slope_rows(results) -> list[list[str]]:
    """Fitted log-log slopes: over all measured sizes, over the last two, and of jaxpr size."""
    rows = []
    for name, points in results.items():
        done = [p for p in points if p.scg_s is not None]
        if len(done) < 2:
            rows.append([name, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"])
            continue
        ns = [p.n for p in done]
        slope_scg = harness.loglog_slope(ns, [p.scg_s for p in done])
        tail_scg = harness.loglog_slope(ns[-2:], [p.scg_s for p in done[-2:]])
        rows.append(
            [
                name,
                f"{ns[0]}-{ns[-1]}",
                f"{slope_scg:.2f}",
                f"{tail_scg:.2f}",
                f"{harness.loglog_slope(ns, [p.hand_s for p in done]):.2f}",
                f"{harness.loglog_slope(ns[-2:], [p.scg_eqns for p in done[-2:]]):.2f} / "
                f"{harness.loglog_slope(ns[-2:], [p.hand_eqns for p in done[-2:]]):.2f}",
                "linear" if max(slope_scg, tail_scg) <= LINEAR_SLOPE else "**superlinear**",
            ]
        )
    return rows


# ------------------------------------------------------------------------------------------
# Main


NOTES = """\
Ratios are scg / hand-written, measured side by side in this run. Runtime: median seconds per
call of the jitted, vmapped gradient, the two systems timed in alternating rounds; the
bracket is the interquartile range of the per-round ratios. HLO ops: instructions in every
computation of the optimised HLO module except parameter, constant, tuple and
get-tuple-element (same rule for both). FLOPs: XLA `cost_analysis()`. Trace+compile: median
wall time of `jax.jit(fresh fn).lower(...).compile()`. Targets: runtime <= 1.02, ops and FLOPs
equal, trace+compile <= 1.5. The gradient estimates of both systems were checked equal (same
keys) before timing. "same HLO": the two optimised HLO modules are identical up to
instruction names and metadata.
"""


SCALING_NOTES = """\
Part 2 times `jax.make_jaxpr(scg.grad(fn))` (tracing, the rewrite and the gradient's trace; no
compilation) against `jax.make_jaxpr(jax.grad(handwritten))` for the same program, each on a
freshly built function (median of 3; one run at 1000 sites). The hand-written surrogates keep
a running sum of log-probabilities, so a chain's cost i gets `magic_box(lp_1 + ... + lp_i)`
from one addition. "jaxpr eqns" counts the top-level equations of each gradient's jaxpr. A
size is skipped, and its time extrapolated, when the previous sizes predict more than the
time budget. A fitted slope (over all sizes, or over the last two) above {linear} is reported
as superlinear.
"""


def main(argv=None) -> int:
    args = harness.arg_parser(__doc__).parse_args(argv)
    out = args.out or harness.results_path("core_overhead")
    repeats, compile_repeats, target_s = (5, 1, 0.005) if args.quick else (150, 5, 0.04)
    sizes = [4, 16] if args.quick else [10, 100, 300, 1000]
    scaling_repeats, budget_s = (1, 20.0) if args.quick else (3, 60.0)

    text = [harness.environment_header("jax_scg core overhead", args.quick)]
    print(text[0], flush=True)
    cases = make_cases(args.quick)
    for case in cases:
        check_same_estimates(case, n=2 if args.quick else 4)
    print("checked: scg.grad equals the hand-written surrogate's gradient on every model\n")

    results = []
    for case in cases:
        print(f"timing {case.name} ...", flush=True)
        results.append(run_case(case, repeats, compile_repeats, target_s))

    text.append(NOTES)
    text.append(
        harness.print_table(
            [
                "model",
                "keys",
                "runtime ratio [IQR]",
                "<= 1.02",
                "HLO ops scg / hand",
                "FLOPs scg / hand",
                "equal",
                "same HLO",
                "trace+compile ratio",
                "<= 1.5",
            ],
            overhead_rows(results),
            title="Part 1: scg.grad vs hand-written DiCE (jit + vmap over keys)",
        )
    )
    text.append(
        harness.print_table(
            ["model", "system", "median ms", "IQR ms", "trace+compile ms", "transcendentals"],
            absolute_rows(results),
            title="Part 1: absolute numbers (this machine, this run)",
        )
    )
    text.append(
        harness.print_table(
            ["model", "opcodes that differ (scg/hand)"],
            opcode_diff_rows(results),
            title="Part 1: compiled opcode differences",
        )
    )

    print("rewrite-time scaling ...", flush=True)
    scaling = run_scaling(sizes, scaling_repeats, budget_s)
    text.append(SCALING_NOTES.format(linear=LINEAR_SLOPE))
    text.append(
        harness.print_table(
            [
                "program",
                "sites",
                "scg ms",
                "scg ms/site",
                "hand ms",
                "hand ms/site",
                "ratio",
                "jaxpr eqns scg / hand",
            ],
            scaling_rows(scaling),
            title="Part 2: trace + rewrite time, jax.make_jaxpr(scg.grad(fn)) vs "
            "jax.make_jaxpr(jax.grad(handwritten))",
        )
    )
    text.append(
        harness.print_table(
            [
                "program",
                "sites",
                "slope scg",
                "slope scg, last two sizes",
                "slope hand",
                "jaxpr eqns slope scg / hand, last two sizes",
                "scg verdict",
            ],
            slope_rows(scaling),
            title="Part 2: fitted slope of log(time) vs log(sites) (1 = linear, 2 = quadratic)",
        )
    )

    harness.write_report(out, "\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
