"""Why Pyro's JitTraceGraph_ELBO outran JAX on the sigmoid belief net on CPU (issue 15, item 2).

    python benchmarks/sbn_profile.py [--quick] [--no-torch] [--out PATH]
        [--parts speed,cores,flags,profile,hlo] [--systems hand,scg@32,...] [--ps 64,256]

The model is ``peer_models.sbn()`` (64 binarised digits, z2 (8) -> z1 (16) -> x (64), 2408
parameters); the torch side is ``torch_peers.sbn_model_guide`` under Pyro's
``JitTraceGraph_ELBO(num_particles=P, vectorize_particles=True)``, which returns ONE gradient,
the average of P one-sample estimates (counted as P estimates, as in ``peers.py``). The JAX
systems, P keys per call:

- ``hand``, ``scg``: ``jax.vmap(grad, in_axes=(None, 0))``, as ``peers.py`` times model 4: P
  separate estimates, a (P, 2408) output.
- ``hand-mean``, ``scg-mean``: ``jax.grad`` / ``scg.grad`` of the mean over the P keys of the
  ``vmap``-ed surrogate / loss: one (2408,) gradient, the average of the same P estimates:
  what Pyro's call returns.
- ``scg-nt``, ``scg-nt-mean``: the jax_scg loss with every ``z @ w.T + b`` written as one
  ``lax.dot_general`` contracting ``w``'s second axis (no transpose of ``w``).
- ``NAME@C``: per key, ``lax.map(grad, keys, batch_size=C)``; for the means, the mean over
  ``lax.map`` of chunks of C keys.

Every alternative is checked against ``hand`` on the same keys (per key, or against the mean
of the per-key estimates) before it is timed. Every configuration runs in its own worker
subprocess (XLA_FLAGS, GLIBC_TUNABLES, the PRNG implementation and the CPU affinity are
fixed when a process starts); this process only drives them over pipes. Timings are
interleaved: in each round every (worker, system, P) entry runs one batch of calls (about
``target_s``), the order rotating by one entry per round, with a short pause after each
batch (torch's OpenMP threads spin for a while after a parallel region). Ratios are between
medians measured in the same rounds, with the interquartile range of the per-round ratios;
the machine may be shared, so lone absolute times mean little. Each batch also records the
worker's user and system CPU time and minor page faults (``getrusage``). "1 core" rows pin
both sides to CPU 0 with ``taskset`` (XLA sizes its thread pool from the affinity mask;
torch also gets ``torch.set_num_threads(1)``).

Profiles: ``jax.profiler`` traces (one event per XLA thunk, attributed to the HLO instruction
it runs, in the entry computation or a while loop's body, classified by the opcodes it
contains) and ``torch.profiler`` (self time per aten op), both on 1 core. Compiled programs:
op counts, dots, XLA's cost analysis and the temporary buffer (``memory_analysis``).

The worker subprocesses and the classification of their profiles are in
``sbn_profile_workers.py``; the timing rounds and the tables of the report in
``sbn_profile_tables.py``.

Writes ``benchmarks/results/sbn_profile_cpu.md``; the hand-written analysis between the
:data:`ANALYSIS` markers of an existing report is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
from sbn_profile_tables import (
    Settings,
    Worker,
    flag_table,
    hlo_section,
    key_checks,
    profile_section,
    speed_table,
    table,
)
from sbn_profile_workers import PYRO_JIT, jax_worker, torch_worker

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_PYTHON = os.path.join(HERE, ".venv-peers", "bin", "python")
JAX_SYSTEMS = (
    "hand",
    "scg",
    "hand@32",
    "scg@32",
    "hand-mean",
    "scg-mean",
    "scg-nt-mean",
    "scg-nt-mean@32",
)

#: glibc keeps XLA's large temporary buffer instead of a fresh mmap (and page faults) per call.
NO_MMAP = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"
#: (label, environment, PRNG implementation): one JAX worker each, 2 threads.
FLAG_CONFIGS = tuple(
    (f"XLA_FLAGS={flag}", {"XLA_FLAGS": flag}, None)
    for flag in (
        "--xla_cpu_enable_fast_math=true",
        "--xla_cpu_multi_thread_eigen=false",
        "--xla_cpu_use_thunk_runtime=false",
        "--xla_cpu_use_xnnpack=false",
        "--xla_cpu_use_onednn=true",
        "--xla_cpu_prefer_vector_width=512",
    )
) + (
    (f"GLIBC_TUNABLES={NO_MMAP}", {"GLIBC_TUNABLES": NO_MMAP}, None),
    ("GLIBC_TUNABLES=glibc.malloc.hugetlb=1", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, None),
    ("jax_default_prng_impl=unsafe_rbg", {}, "unsafe_rbg"),
    ("jax_default_prng_impl=philox4x32", {}, "philox4x32"),
)


FULL = Settings(
    ps=(64, 256, 1024),
    flag_p=1024,
    flag_systems=("hand", "hand@32", "scg-mean"),
    pyro_p=256,
    repeats=15,
    target_s=0.15,
    flags=FLAG_CONFIGS,
    profile_p=256,
    profiles=(
        ("hand", 256),
        ("hand", 1024),
        ("hand@32", 1024),
        ("hand-mean", 256),
        ("scg-mean", 256),
        ("scg-nt-mean", 256),
        (PYRO_JIT, 256),
        (PYRO_JIT, 1024),
    ),
    profile_calls=10,
    moments_n=8192,
    systems=JAX_SYSTEMS,
)
QUICK = Settings(
    ps=(16,),
    flag_p=16,
    flag_systems=("hand",),
    pyro_p=16,
    repeats=2,
    target_s=0.01,
    flags=FLAG_CONFIGS[:1],
    profile_p=16,
    profiles=(("hand", 16), (PYRO_JIT, 16)),
    profile_calls=2,
    moments_n=32,
    systems=("hand",),
)


class Driver:
    def __init__(self, tmp: str, torch: bool):
        self.tmp, self.torch, self.workers = tmp, torch, []

    def jax(self, label, env=None, prng=None, cpus=None) -> Worker:
        argv = [sys.executable, __file__, "--worker", "jax"] + (["--prng", prng] if prng else [])
        return self._add(Worker(label, argv, {"XLA_FLAGS": "", **(env or {})}, cpus, self.tmp))

    def pyro(self, label, threads, cpus=None) -> Worker | None:
        if not self.torch:
            return None
        argv = [TORCH_PYTHON, __file__, "--worker", "torch", "--threads", str(threads)]
        env = {"SBN_PROFILE_INPUTS": os.path.join(self.tmp, "inputs.npz")}
        return self._add(Worker(label, argv, env, cpus, self.tmp))

    def _add(self, worker):
        self.workers.append(worker)
        return worker

    def close_worker(self, worker):
        worker.close()
        self.workers.remove(worker)

    def close(self):
        for w in self.workers:
            w.close()


def write_inputs(path: str) -> None:
    sys.path.insert(0, HERE)
    import peer_models

    np.savez(path, **peer_models.torch_inputs([256]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    parser.add_argument("--no-torch", action="store_true", help="skip the Pyro side")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "sbn_profile_cpu.md"))
    parser.add_argument(
        "--parts",
        default="speed,cores,flags,profile,hlo",
        help="comma-separated subset of speed,cores,flags,profile,hlo",
    )
    parser.add_argument("--systems", default=None, help="comma-separated JAX systems")
    parser.add_argument("--ps", default=None, help="comma-separated P, overrides the default")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--prng", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "jax":
        jax_worker(args.prng)
        return 0
    if args.worker == "torch":
        torch_worker(args.threads)
        return 0
    s = QUICK if args.quick else FULL
    if args.systems:
        s = dataclasses.replace(s, systems=tuple(args.systems.split(",")))
    if args.ps:
        s = dataclasses.replace(s, ps=tuple(int(p) for p in args.ps.split(",")))
    todo = set(args.parts.split(","))
    use_torch = not args.no_torch and os.path.exists(TORCH_PYTHON)
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="sbn_profile_")
    write_inputs(os.path.join(tmp, "inputs.npz"))
    driver = Driver(tmp, use_torch)
    parts = [header(args.quick, use_torch, s), kept_analysis(args.out)]
    try:  # these workers start (import) now, before anything is timed
        default, pyro2 = driver.jax("jax default"), driver.pyro("pyro 2 threads", 2)
        one_core = "cores" in todo or ("profile" in todo and not args.quick)
        jax1 = driver.jax("jax 1 core", cpus="0") if one_core else None
        pyro1 = driver.pyro("pyro 1 core", 1, cpus="0") if one_core else None
        for worker in driver.workers:
            worker.ask("ping")
        log("checks ...")
        checks = key_checks(default, tmp, s)
        parts += [
            "## Same estimates\n",
            table(["system", "compared", "max \\|Δ\\| / max \\|est\\|"], checks),
        ]
        if "speed" in todo:
            log("speed, default settings ...")
            parts += [
                "## Speed, default settings (2 threads each)\n",
                speed_table(default, pyro2, s),
            ]
        if "cores" in todo:
            log("speed, 1 core ...")
            parts += ["## Speed, 1 core each (taskset -c 0)\n", speed_table(jax1, pyro1, s)]
        if "flags" in todo:
            log("XLA flags ...")
            flags, prng_rows = flag_table(driver, default, pyro2, s)
            parts += [f"## XLA flags and PRNG implementations (2 threads, P={s.flag_p})\n", flags]
            if prng_rows:
                headers = [
                    "PRNG configuration",
                    "estimates",
                    "max \\|z\\| of the mean vs threefry [Bonferroni bound, 0.01]",
                ]
                parts.append(table(headers, prng_rows))
        if "profile" in todo:
            log("profiles ...")
            parts += ["## Profiles\n", profile_section(jax1 or default, pyro1 or pyro2, tmp, s)]
        if "hlo" in todo:
            log("HLO ...")
            parts += ["## Compiled programs\n", hlo_section(default, s)]
    finally:
        driver.close()
        shutil.rmtree(tmp, ignore_errors=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    parts.append(
        f"\nTotal run time {time.perf_counter() - start:.0f} s; load average at the end {load}.\n"
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(parts))
    print(f"wrote {args.out}")
    return 0


ANALYSIS = ("<!-- analysis: written by hand, kept when sbn_profile.py rewrites this file -->",
            "<!-- end of analysis -->")  # fmt: skip


def kept_analysis(path: str) -> str:
    """The hand-written analysis between the :data:`ANALYSIS` markers of an existing report."""
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        old = f.read()
    start, end = old.find(ANALYSIS[0]), old.find(ANALYSIS[1])
    return old[start : end + len(ANALYSIS[1])] + "\n" if 0 <= start < end else ""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def header(quick: bool, use_torch: bool, s: Settings) -> str:
    return "\n".join(
        [
            "# Sigmoid belief net: JAX against Pyro's JitTraceGraph_ELBO on CPU"
            + (" (--quick smoke run)" if quick else ""),
            "",
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- {platform.platform()}, {os.cpu_count()} CPU(s); "
            f"{s.repeats} interleaved rounds of about {s.target_s} s per entry; load average "
            f"(1, 5, 15 min) at the start {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
            + ("" if use_torch else "; Pyro not run"),
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
