"""XLA compile time of unrolled programs: ``jit(scg.grad(f))`` against hand-written DiCE.

The program is a Python loop of N Bernoulli sites in a chain with a cost per site
(``models.chain_program``); the baseline is ``jax.grad`` of its hand-written DiCE
surrogate (a running sum of log-probabilities, each cost times ``magic_box`` of it). Both are
lowered first; only ``lowered.compile()`` is timed, on fresh functions, the two systems
interleaved (order rotating), medians and the median per-round ratio reported.
"""

from __future__ import annotations

import sys
import time

import harness
import hlo_stats
import jax
import jax.numpy as jnp
import numpy as np
from models import chain_program
from rewrite_time import report_header

import jax_scg as scg


def lowered(n: int, system: str):
    fn = chain_program(n, True, system == "hand")
    grad = scg.grad(fn) if system == "scg" else jax.grad(fn)
    return jax.jit(grad).lower(jnp.array([0.2, -0.4]), jax.random.key(0))


def compile_times(n: int, repeats: int):
    """Seconds of ``compile()`` per system and round, and each system's HLO op count."""
    systems = ["scg", "hand"]
    times, ops = {s: np.empty(repeats) for s in systems}, {}
    for r in range(repeats):
        for system in systems[r % 2 :] + systems[: r % 2]:
            low = lowered(n, system)
            start = time.perf_counter()
            compiled = low.compile()
            times[system][r] = time.perf_counter() - start
            ops[system] = hlo_stats.hlo_op_count(compiled.as_text())
    return times, ops


def main(argv=None) -> int:
    parser = harness.arg_parser(__doc__)
    parser.add_argument(
        "--max-sites", type=int, default=100, help="largest size run (200, 400: ~4x per doubling)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved rounds up to 100 sites (above: 1)"
    )
    parser.add_argument("--sites", default=None, help="comma-separated sizes (default: all)")
    args = parser.parse_args(argv)
    out = args.out or harness.results_path("compile_time")
    sizes, repeats = ([10, 25], 1) if args.quick else ([10, 25, 50, 100, 200, 400], args.repeats)
    sizes = [n for n in sizes if n <= args.max_sites]
    if args.sites:
        sizes = [int(n) for n in args.sites.split(",")]
    compile_times(min(sizes[0], 10), 1)  # warm shared caches
    rows = []
    for n in sizes:
        rounds = repeats if n <= 100 else 1  # 200 sites: minutes per compile
        t, ops = compile_times(n, rounds)
        ratio = np.median(t["scg"] / t["hand"])
        q25, q75 = np.percentile(t["scg"] / t["hand"], [25, 75])
        rows.append(
            [
                n,
                f"{np.median(t['scg']) * 1e3:.0f}",
                f"{np.median(t['hand']) * 1e3:.0f}",
                harness.ratio_cell(ratio, q25, q75),
                f"{ops['scg']} / {ops['hand']}",
                rounds,
            ]
        )
        print(f"  {n} sites: scg / hand {ratio:.2f}", flush=True)
    text = [
        report_header("XLA compile time of unrolled programs", args.quick, repeats),
        __doc__.split("\n", 2)[2],
        harness.print_table(
            [
                "sites",
                "scg compile ms",
                "hand compile ms",
                "scg / hand [IQR]",
                "HLO ops scg / hand",
                "rounds",
            ],
            rows,
            title="Compile time, chain of N Bernoulli sites, a cost per site (Python loop)",
        ),
    ]
    harness.write_report(out, "\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
