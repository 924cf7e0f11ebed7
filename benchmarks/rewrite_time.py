"""Rewrite time on large programs: trace + rewrite + lowering of ``jit(scg.grad(f))``.

Times ``jax.jit(scg.grad(f)).lower(theta, key)`` (tracing the program, jax_scg's analysis
passes, tracing the surrogate's gradient, lowering to StableHLO; no XLA compilation) against
the same for two baselines of the same program, built fresh every time (no tracing cache):

* **plain**: ``jax.jit(jax.grad(f_plain)).lower(...)``, where ``f_plain`` is the program with
  every ``scg.sample`` replaced by a plain draw: ``lax.stop_gradient(dist.sample(key))`` for a
  discrete site (tokens), the reparameterised ``dist.sample(key)`` for a Normal one.
* **DiCE**: ``jax.jit(jax.grad(f_dice)).lower(...)``, the hand-written DiCE surrogate of the
  same program (the tokens' log-probabilities in a running sum, each cost multiplied by
  ``magic_box`` of the log-probabilities before it). For the MLP (pathwise Normal sites) it
  is the plain program.

Three programs (from ``models_large.py``), at sizes from 10^2 to 10^5 equations (counted in the
traced program, sub-programs included):

1. ``lm_scan``: a small transformer language model (2 heads, width 32, vocabulary 16)
   sampling 64 tokens in ``lax.scan``, a reward per token plus an entropy bonus; size grows
   with the number of layers.
2. ``lm_unrolled``: the same model, its sampling loop unrolled in Python; size grows with
   the number of tokens.
3. ``mlp``: a deep MLP (width 16) with a Normal site after every layer; size grows with depth.

Ratios are medians of interleaved repeats measured in this run. A per-pass profile
(``cProfile`` of one ``scg.grad`` lowering) splits jax_scg's time between its passes.
"""

from __future__ import annotations

import cProfile
import dataclasses
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable

import harness
import jax
import numpy as np
from jax.extend import core as jex_core
from models_large import (
    TOKENS,
    lm_params,
    lm_scan,
    lm_unrolled,
    mlp,
    mlp_params,
    plain_draw,
    program_grad,
)

SYSTEMS = ("scg", "plain", "dice")


@dataclasses.dataclass(frozen=True)
class Program:
    """One benchmark program family: ``program(params, key, draw, dice)`` and its sizes."""

    name: str
    program: Callable
    make_params: Callable[[int], dict]  # size -> parameters
    size_label: str  # what the size counts


PROGRAMS = {
    "lm_scan": Program("lm_scan", lm_scan, lambda n: lm_params(n, TOKENS), "layers"),
    "lm_unrolled": Program("lm_unrolled", lm_unrolled, lambda n: lm_params(2, n), "tokens"),
    "mlp": Program("mlp", mlp, mlp_params, "layers"),
}


def count_eqns(jaxpr) -> int:
    """Equations of a jaxpr, those of its sub-programs (scan bodies, jit calls) included."""
    return sum(
        1 + sum(count_eqns(sub) for sub in jex_core.jaxprs_in_params(eqn.params))
        for eqn in jaxpr.eqns
    )


def program_eqns(program: Program, params) -> int:
    """Equations of the program with plain draws (the program ``jax.grad`` traces)."""
    fn = lambda p, k: program.program(p, k, plain_draw)
    return count_eqns(jax.make_jaxpr(fn)(params, jax.random.key(0)).jaxpr)


def lower_times(program: Program, params, systems, repeats: int) -> dict[str, np.ndarray]:
    """Seconds of ``jax.jit(fresh fn).lower(params, key)`` per system, interleaved: in each
    round every system runs once, the order rotating from round to round."""
    key = jax.random.key(0)
    times = {s: np.empty(repeats) for s in systems}
    for r in range(repeats):
        order = systems[r % len(systems) :] + systems[: r % len(systems)]
        for system in order:
            fn = jax.jit(program_grad(program.program, system))
            start = time.perf_counter()
            fn.lower(params, key)
            times[system][r] = time.perf_counter() - start
    return times


# ------------------------------------------------------------------------------------------
# Per-pass profile


def _passes() -> dict[str, tuple]:
    """Pass name -> the functions whose cumulative time it is (file, first line, name)."""
    import inspect

    from jax_scg._src import discontinuities, interpreter, jaxpr, keys, primitive, surrogate

    def where(fn):
        code = inspect.unwrap(fn).__code__
        return (code.co_filename, code.co_firstlineno, code.co_name)

    return {
        "trace program": (where(surrogate._trace),),
        "of which sites": (where(primitive.sample),),
        "of which scope+jumps": (
            where(jaxpr.scope_from_jaxpr),
            where(discontinuities.mark_discontinuous_sites),
        ),
        "keys": (where(keys.check_keys),),
        "analysis": (
            where(interpreter.Analysis.__init__),
            where(interpreter.Analysis.mark_costs),
            where(interpreter.Analysis.demand),
        ),
        "emit surrogate": (where(interpreter.Evaluation.__init__),),
    }


def pass_profile(program: Program, params) -> dict[str, float]:
    """Cumulative seconds per pass in one profiled ``scg.grad`` lowering; ``total`` is the
    profiled lowering, ``jax (autodiff + lowering)`` what no pass accounts for."""
    fn = jax.jit(program_grad(program.program, "scg"))
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    fn.lower(params, jax.random.key(0))
    profile.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    out = {name: sum(stats[f][3] for f in fns if f in stats) for name, fns in _passes().items()}
    top = ("trace program", "keys", "analysis", "emit surrogate")
    out["jax (autodiff + lowering)"] = total - sum(out[n] for n in top)
    out["total"] = total
    return out


# ------------------------------------------------------------------------------------------
# Main


@dataclasses.dataclass(frozen=True)
class Point:
    program: str
    size: int
    eqns: int
    times: dict  # system -> seconds per repeat
    profile: dict

    def median(self, system) -> float:
        return float(np.median(self.times[system]))

    def ratio(self, baseline) -> float:
        return float(np.median(self.times["scg"] / self.times[baseline]))


def systems_of(name: str) -> list[str]:
    return ["scg", "plain"] if name == "mlp" else list(SYSTEMS)  # the MLP's DiCE is plain


def run(sizes: dict, repeats: int) -> list[Point]:
    points = []
    for name, program_sizes in sizes.items():
        program = PROGRAMS[name]
        lower_times(program, program.make_params(program_sizes[0]), systems_of(name), 1)  # warm
        for size in program_sizes:
            params = program.make_params(size)
            eqns = program_eqns(program, params)
            times = lower_times(program, params, systems_of(name), repeats)
            point = Point(name, size, eqns, times, pass_profile(program, params))
            print(
                f"  {name} {program.size_label}={size}: {eqns} eqns, "
                f"scg {point.median('scg'):.2f} s,"
                f" scg/plain {point.ratio('plain'):.2f}",
                flush=True,
            )
            points.append(point)
    return points


def _ratio_cell(p: Point, baseline: str) -> str:
    if baseline not in p.times:
        return "= plain"
    q25, q75 = np.percentile(p.times["scg"] / p.times[baseline], [25, 75])
    return harness.ratio_cell(p.ratio(baseline), q25, q75)


def table_rows(points) -> list[list]:
    return [
        [
            p.program,
            f"{PROGRAMS[p.program].size_label} {p.size}",
            p.eqns,
            f"{p.median('scg') * 1e3:.0f}",
            f"{p.median('plain') * 1e3:.0f}",
            _ratio_cell(p, "plain"),
            _ratio_cell(p, "dice"),
        ]
        for p in points
    ]


PROFILE_COLUMNS = (
    "trace program",
    "of which sites",
    "of which scope+jumps",
    "keys",
    "analysis",
    "emit surrogate",
    "jax (autodiff + lowering)",
)


def profile_rows(points) -> list[list]:
    return [
        [p.program, p.eqns]
        + [f"{100 * p.profile[c] / p.profile['total']:.0f}%" for c in PROFILE_COLUMNS]
        for p in points
    ]


def slope_rows(points, low=1e3, high=1.2e5) -> list[list]:  # 4400 layers: 1.01e5
    rows = []
    for name in dict.fromkeys(p.program for p in points):
        fit = [p for p in points if p.program == name and low <= p.eqns <= high]
        if len(fit) < 2:
            rows.append([name, "n/a (fewer than 2 sizes in range)", "", "", ""])
            continue
        eqns = [p.eqns for p in fit]
        slopes = [
            harness.loglog_slope(eqns, [p.median(s) for p in fit])
            for s in SYSTEMS
            if s in fit[0].times
        ]
        cells = [f"{x:.2f}" for x in slopes] + (["= plain"] if len(slopes) == 2 else [])
        rows.append([name, f"{min(eqns)}-{max(eqns)}", *cells])
    return rows


NOTES = """\
`jax.jit(fn).lower(params, key)` of a freshly built gradient function (no tracing cache):
tracing, jax_scg's passes, the gradient's trace and lowering to StableHLO; no XLA
compilation. Baselines: **plain** is `jax.grad` of the program with each `scg.sample`
replaced by a plain draw (`stop_gradient(dist.sample(key))` for the tokens, the
reparameterised `dist.sample(key)` for the MLP's Normal sites); **DiCE** is `jax.grad` of the
hand-written DiCE surrogate of the same program (for the MLP, whose sites are pathwise, it is
the plain program). Equations: the plain program's jaxpr, sub-programs included. Ratios:
median over rounds of scg / baseline in the same round (systems interleaved, order rotating),
[interquartile range]. Profile: shares of one `cProfile`d `scg.grad` lowering (cumulative
time of each pass's functions; cProfile inflates Python-heavy code, so read them as shares).
"""


def report_header(title: str, quick: bool, repeats: int) -> str:
    """The header of this report and ``compile_time.py``'s."""
    return harness.report_header(
        title,
        quick,
        f"jax {jax.__version__}, device {harness.device_description()}, "
        f"{platform.platform()}, {os.cpu_count()} CPU(s), {repeats} interleaved round(s)",
    )


def main(argv=None) -> int:
    parser = harness.arg_parser(__doc__)
    parser.add_argument("--plot", default=None, help="scaling plot (png)")
    parser.add_argument(
        "--sizes",
        default=None,
        help='e.g. "lm_scan=1,16 mlp=4,40": these programs at these sizes (default: all)',
    )
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds")
    args = parser.parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    out = args.out or harness.results_path("rewrite_time")
    plot = args.plot or (
        None if args.quick else os.path.join(here, "results", "rewrite_time_scaling.png")
    )
    if args.quick:
        sizes, repeats = {"lm_scan": [1], "lm_unrolled": [2], "mlp": [4, 16]}, 1
    else:
        sizes = {
            "lm_scan": [1, 16, 48],
            "lm_unrolled": [4, 16, 48],
            "mlp": [4, 40, 400, 1600, 4400],
        }
        repeats = 3
    if args.sizes:
        sizes = {
            name: [int(n) for n in numbers.split(",")]
            for name, numbers in (item.split("=") for item in args.sizes.split())
        }
    repeats = args.repeats or repeats
    points = run(sizes, repeats)
    text = [report_header("Rewrite time on large programs", args.quick, repeats), NOTES]
    text.append(
        harness.print_table(
            [
                "program",
                "size",
                "equations",
                "scg ms",
                "plain ms",
                "scg / plain [IQR]",
                "scg / DiCE [IQR]",
            ],
            table_rows(points),
            title="Lowering time, jit(scg.grad(f)) vs jit(jax.grad(baseline))",
        )
    )
    text.append(
        harness.print_table(
            ["program", "equations", *PROFILE_COLUMNS],
            profile_rows(points),
            title="Where scg.grad's lowering time goes (share of one profiled lowering)",
        )
    )
    text.append(
        harness.print_table(
            ["program", "equations fitted", "slope scg", "slope plain", "slope DiCE"],
            slope_rows(points),
            title="Least-squares log-log slope of time vs equations, 10^3-10^5",
        )
    )
    harness.write_report(out, "\n".join(text))
    if plot:
        save_plot(points, plot)
    return 0


def save_plot(points, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(p.program for p in points):
        ps = [p for p in points if p.program == name]
        line = ax.loglog(
            [p.eqns for p in ps], [p.median("scg") for p in ps], "o-", label=f"{name} scg"
        )
        ax.loglog(
            [p.eqns for p in ps],
            [p.median("plain") for p in ps],
            "s--",
            color=line[0].get_color(),
            alpha=0.6,
            label=f"{name} plain",
        )
    ax.set_xlabel("equations")
    ax.set_ylabel("trace + rewrite + lowering [s]")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
