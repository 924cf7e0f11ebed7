"""PyTorch side of the peer benchmark suite: Pyro's TraceGraph_ELBO and Storchastic 0.3.7.

Run with the peers' virtual environment only (``bash benchmarks/setup_peers.sh`` makes it);
``benchmarks/peers.py`` runs it as a subprocess and merges its output::

    benchmarks/.venv-peers/bin/python benchmarks/torch_peers.py [--quick] [--only elbo,sbn]
        [--skip-scaling] [--inputs benchmarks/results/peers_inputs.npz]

Models, parameters and data come from the npz that ``peers.py`` writes (keys: chain_theta,
chain_x0; elbo_x_<N>, elbo_phi_<N> for every N used; rollout_theta; sbn_x, sbn_theta and
sbn_shape_<name> for name in V1, V2, W1, W2, b1, b2, c1, c2, the flat order of sbn_theta).
The models are those of the shared specification: 1 "chain" (Figure 1's graph 5), 2 "elbo"
(N Bernoulli latents with a data plate), 3 "rollout" (a T-step random-walk policy, one cost
per reward), 4 "sbn" (a two-layer sigmoid belief net on 64 binarised digits). Every gradient
is taken with respect to one flat float32 vector θ: of the expected cost (models 1 and 3) or
of the ELBO (models 2 and 4; the torch systems minimise −ELBO, so their gradient is negated).
They are defined, with the npz reader :class:`~torch_peers_models.Inputs`, in
``torch_peers_models.py``; this file holds the sizes, the timing, the rows of each system,
the scaling sweeps and ``main``.

How each system is batched, and why:

- Pyro ``TraceGraph_ELBO`` and ``JitTraceGraph_ELBO`` (models 2 and 4, a plate over points or
  images). A Pyro gradient is the gradient of the particle average on one shared parameter,
  so the one-sample estimates behind mean and variance come from ``num_particles=1`` calls in
  sequence, one estimate each. Throughput is timed separately on one call with
  ``num_particles=P, vectorize_particles=True``, counted as P estimates (it averages P).
  Pyro's argument validation is switched off (it is on by default and costs time per call).
- Storchastic (all four models; the plain ``ScoreFunction`` method). ``storch.backward``
  differentiates the plate-reduced surrogate, so a sample plate on one θ only yields the mean
  of its samples. As in ``storchastic_rows.py``, θ is instead an (N, ...) leaf whose first
  axis ``storch.denote_independent`` makes an independent plate "batch": copy i of θ
  receives its own one-sample estimate, N estimates per backward, and throughput is N / time
  per backward (graph construction included: Storchastic rebuilds it on every call). Plates
  get weight 1 (a sum instead of the default mean), so nothing needs rescaling. Data points
  (model 2) and images (model 4) form a second independent plate, so each latent is credited
  with the costs of its own point or image only. Terms the model keeps apart are separate
  cost nodes (f1 and f2; one per reward; the five log-density terms of the SBN), so that
  Storchastic's causal credit applies. log q is evaluated at detached parameters: its direct
  derivative has mean zero, and Pyro's surrogate and jax_scg's ``detach_log_prob=True`` drop
  it as well.

Statistics: per coordinate, the mean and variance (ddof=1, float64) of the n one-sample
estimates. Timings: ``time.perf_counter``, warm-up calls first, median over repeated calls;
torch keeps its default thread count, which is recorded. Storchastic's estimates come from
the timed calls themselves (its calls are slow at T = 64). Scaling: median seconds per
estimate vs T (rollout, Storchastic) and vs N (elbo, Pyro and Storchastic), with B(size) =
clip(2^20 // size, 1, 1024) estimates per call; a sweep stops before a size whose one call,
extrapolated from the last two sizes, would exceed the limit (60 s at full size), and after
a size whose call did; the stops are listed in ``meta["scaling_stopped"]``.

Prints ONE JSON object on stdout (meta, rows, scaling, failures); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from importlib.metadata import version

import numpy as np
import torch
from pyro.infer import JitTraceGraph_ELBO, TraceGraph_ELBO
from storchastic_models import reset_storch  # same environment, same directory
from torch_peers_models import (  # same environment, same directory
    Inputs,
    pyro_grad_fn,
    storch_chain,
    storch_elbo,
    storch_rollout,
    storch_sbn,
    unflatten,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_INPUTS = os.path.join(HERE, "results", "peers_inputs.npz")
MODELS = ("chain", "elbo", "rollout", "sbn")

PYRO = "Pyro TraceGraph_ELBO"
PYRO_JIT = "Pyro JitTraceGraph_ELBO"
STORCH = "Storchastic"
PYRO_SYSTEMS = ((PYRO, TraceGraph_ELBO), (PYRO_JIT, JitTraceGraph_ELBO))


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much to run. Storchastic rows: (copies per backward, timed calls) per model;
    Pyro rows: sequential one-particle calls and particles per vectorised call per model."""

    storch: dict
    pyro_sequential: dict
    pyro_particles: dict
    warmup: int  # untimed calls first (Storchastic: their estimates are kept)
    repeats: int  # timed Pyro vectorised calls
    rollout_t: int
    elbo_n: int
    scaling_t: tuple
    scaling_n: tuple
    scaling_limit_s: float


FULL = Sizes(
    storch={"chain": (10_000, 20), "elbo": (1_000, 20), "rollout": (10_000, 3), "sbn": (500, 10)},
    pyro_sequential={"elbo": 2_000, "sbn": 1_000},
    pyro_particles={"elbo": 1_024, "sbn": 256},
    warmup=1,
    repeats=15,
    rollout_t=64,
    elbo_n=256,
    scaling_t=(16, 32, 64, 128, 256, 512, 1024),
    scaling_n=(64, 256, 1024, 4096, 16384, 65536),
    scaling_limit_s=60.0,
)
QUICK = Sizes(
    storch={"chain": (2_000, 2), "elbo": (500, 2), "rollout": (1_000, 1), "sbn": (100, 2)},
    pyro_sequential={"elbo": 200, "sbn": 50},
    pyro_particles={"elbo": 256, "sbn": 64},
    warmup=1,
    repeats=3,
    rollout_t=64,
    elbo_n=256,
    scaling_t=(16, 32),
    scaling_n=(64, 1024),
    scaling_limit_s=2.0,
)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def batch_for(size: int) -> int:
    """B(size) = clip(2^20 // size, 1, 1024) estimates per call, as on the JAX side."""
    return int(min(max(2**20 // size, 1), 1024))


# --------------------------------------------------------------------------- timing, rows


@dataclasses.dataclass
class Timing:
    median_s: float
    calls: int
    setup_s: float  # first call minus the median call


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def timed_calls(fn: Callable[[], np.ndarray], warmup: int, calls: int):
    """``warmup`` untimed then ``calls`` timed calls of ``fn``; all outputs stacked, Timing."""
    outputs, times = [], []
    for _ in range(warmup + calls):
        out, seconds = timed(fn)
        outputs.append(out)
        times.append(seconds)
    median = float(np.median(times[warmup:]))
    return np.concatenate(outputs), Timing(median, calls, max(times[0] - median, 0.0))


def make_row(model, system, estimates, timing: Timing, batch: int, note: str) -> dict:
    estimates = np.asarray(estimates, np.float64)
    return {
        "model": model,
        "system": system,
        "n": int(len(estimates)),
        "mean": estimates.mean(0).tolist(),
        "var": estimates.var(0, ddof=1).tolist(),
        "estimates_per_s": batch / timing.median_s,
        "batch": int(batch),
        "seconds_per_call_median": timing.median_s,
        "calls_timed": timing.calls,
        "setup_s": timing.setup_s,
        "note": note,
    }


def storch_row(model, draw: Callable[[int], np.ndarray], sizes: Sizes, seed, note) -> dict:
    """Estimates from the timed calls themselves (plus the warm-up calls' estimates)."""
    copies, calls = sizes.storch[model]
    torch.manual_seed(seed)
    estimates, timing = timed_calls(lambda: draw(copies), sizes.warmup, calls)
    note = (
        f"plain ScoreFunction; {copies} copies of θ as an independent plate (weight 1) per "
        f"storch.backward, one estimate per copy; n includes the {sizes.warmup} warm-up "
        f"call(s)' estimates; {note}"
    )
    return make_row(model, STORCH, estimates, timing, copies, note)


def pyro_row(model, system, elbo_cls, problem, sizes: Sizes, seed) -> dict:
    n, particles = sizes.pyro_sequential[model], sizes.pyro_particles[model]
    torch.manual_seed(seed)
    one = pyro_grad_fn(problem, elbo_cls, 1)
    estimates, sequential = timed_calls(one, sizes.warmup, n)
    estimates = estimates[sizes.warmup :]
    _, vectorised = timed_calls(
        pyro_grad_fn(problem, elbo_cls, particles), sizes.warmup, sizes.repeats
    )
    jit = " (includes the torch.jit trace)" if elbo_cls is JitTraceGraph_ELBO else ""
    note = (
        f"mean/var from {n} sequential num_particles=1 calls ({sequential.median_s * 1e3:.3g} ms "
        f"per call median, first-call overhead {sequential.setup_s:.3g} s); throughput from "
        f"num_particles={particles}, vectorize_particles=True, counted as {particles} "
        f"estimates; setup_s: that ELBO's first-call overhead{jit}; validation off"
    )
    return make_row(model, system, estimates, vectorised, particles, note)


# --------------------------------------------------------------------------- jobs per model


Job = tuple[str, Callable[[], dict]]  # (system, thunk -> row)


def chain_jobs(inputs: Inputs, sizes: Sizes) -> Iterator[Job]:
    theta, x0 = inputs.tensor("chain_theta"), float(np.reshape(inputs.arrays["chain_x0"], ()))
    draw = lambda c: storch_chain(theta, x0, c)
    yield STORCH, lambda: storch_row("chain", draw, sizes, 1, "costs f1, f2 as two cost nodes")


def elbo_jobs(inputs: Inputs, sizes: Sizes) -> Iterator[Job]:
    problem = inputs.elbo_problem(sizes.elbo_n)
    for seed, (system, cls) in enumerate(PYRO_SYSTEMS, start=10):
        yield system, lambda s=system, c=cls, k=seed: pyro_row("elbo", s, c, problem, sizes, k)
    draw = lambda c: storch_elbo(problem.data, problem.theta, c)
    note = (
        f"the {sizes.elbo_n} points a second independent plate (weight 1), one cost per point; "
        "log q at detached φ"
    )
    yield STORCH, lambda: storch_row("elbo", draw, sizes, 12, note)


def rollout_jobs(inputs: Inputs, sizes: Sizes) -> Iterator[Job]:
    theta, steps = inputs.tensor("rollout_theta"), sizes.rollout_t
    draw = lambda c: storch_rollout(theta, steps, c)
    note = f"T = {steps}, one cost node per reward (Storchastic's credit gives reward-to-go)"
    yield STORCH, lambda: storch_row("rollout", draw, sizes, 3, note)


def sbn_jobs(inputs: Inputs, sizes: Sizes) -> Iterator[Job]:
    problem = inputs.sbn_problem()
    for seed, (system, cls) in enumerate(PYRO_SYSTEMS, start=20):
        yield system, lambda s=system, c=cls, k=seed: pyro_row("sbn", s, c, problem, sizes, k)
    params = unflatten(problem.theta, inputs.sbn_shapes())
    draw = lambda c: storch_sbn(params, problem.data, c)
    note = (
        f"the {len(problem.data)} images a second independent plate (weight 1); log p(z2), "
        "log p(z1|z2), log p(x|z1), log q(z1|x), log q(z2|z1) as five cost nodes; log q at "
        "detached parameters"
    )
    yield STORCH, lambda: storch_row("sbn", draw, sizes, 23, note)


JOBS = {"chain": chain_jobs, "elbo": elbo_jobs, "rollout": rollout_jobs, "sbn": sbn_jobs}


# --------------------------------------------------------------------------- scaling


@dataclasses.dataclass
class Sweep:
    axis: str
    model: str
    system: str
    make_call: Callable[[int, int], Callable[[], object]]  # (size, batch) -> one call


def measure_size(call, limit_s: float, warmup: int) -> tuple[float, float]:
    """(median seconds per call, first call's seconds); a slow first call is the measurement."""
    _, first = timed(call)
    if first > limit_s / 4:
        return first, first
    repeats = 3 if first > limit_s / 40 else 7
    _, timing = timed_calls(call, max(warmup - 1, 0), repeats)
    return timing.median_s, first


def extrapolate(history: list[tuple[int, float]], size: int) -> float:
    """Seconds per call at ``size`` on the power law through the last two (size, seconds)."""
    (s0, t0), (s1, t1) = history[-2:]
    return t1 * (size / s1) ** (math.log(t1 / t0) / math.log(s1 / s0))


def run_sweep(sweep: Sweep, sizes_list, limit_s, warmup, failures, stopped) -> list[dict]:
    """Scaling rows of one sweep; where and why it stopped early is appended to ``stopped``."""
    rows, history = [], []

    def stop(size, reason):
        stopped.append(
            {"model": sweep.model, "system": sweep.system, "size": size, "reason": reason}
        )
        log(f"    stopped at {sweep.axis}={size}: {reason}")

    for size in sizes_list:
        if len(history) >= 2 and extrapolate(history, size) > limit_s:
            stop(size, f"not run: one call extrapolated to {extrapolate(history, size):.0f} s")
            break
        batch = batch_for(size)
        try:
            median, first = measure_size(sweep.make_call(size, batch), limit_s, warmup)
        except Exception as exc:  # noqa: BLE001 - keep the sizes measured so far
            reset_storch()
            record_failure(failures, sweep.model, f"{sweep.system} (scaling, size {size})", exc)
            break
        history.append((size, median))
        rows.append(
            {
                "axis": sweep.axis,
                "model": sweep.model,
                "system": sweep.system,
                "size": size,
                "seconds_per_estimate": median / batch,
                "batch": batch,
            }
        )
        log(f"    {sweep.axis}={size}: {median / batch * 1e6:.3g} µs / estimate, batch {batch}")
        if max(first, median) > limit_s:
            stop(size, f"measured, but one call took more than {limit_s:.0f} s")
            break
    return rows


def sweeps(inputs: Inputs, sizes: Sizes, models) -> Iterator[tuple[Sweep, tuple]]:
    if "rollout" in models:
        theta = inputs.tensor("rollout_theta")
        call = lambda t, b: lambda: storch_rollout(theta, t, b)
        yield Sweep("T", "rollout", STORCH, call), sizes.scaling_t
    if "elbo" in models:
        for system, cls in PYRO_SYSTEMS:
            call = lambda n, b, c=cls: pyro_grad_fn(inputs.elbo_problem(n), c, b)
            yield Sweep("N", "elbo", system, call), sizes.scaling_n

        def storch_call(points, batch):
            problem = inputs.elbo_problem(points)
            return lambda: storch_elbo(problem.data, problem.theta, batch)

        yield Sweep("N", "elbo", STORCH, storch_call), sizes.scaling_n


# --------------------------------------------------------------------------- main


def record_failure(failures, model, system, exc):
    failures.append({"model": model, "system": system, "error": f"{type(exc).__name__}: {exc}"})
    log(f"    FAILED: {type(exc).__name__}: {exc}")
    log("".join(traceback.format_exception(exc)[-4:]))


def attempt(failures, model, system, thunk):
    """thunk(), or None with the error recorded in ``failures``."""
    log(f"  {model} | {system} ...")
    start = time.perf_counter()
    reset_storch()
    try:
        result = thunk()
    except Exception as exc:  # noqa: BLE001 - record it and go on
        reset_storch()
        record_failure(failures, model, system, exc)
        return None
    log(f"    done in {time.perf_counter() - start:.1f} s")
    return result


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", default=DEFAULT_INPUTS, help="the npz written by peers.py")
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--only", default=",".join(MODELS), help="comma-separated model names")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args(argv)
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = sorted(set(args.only) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    if not os.path.exists(args.inputs):
        parser.error(f"{args.inputs} does not exist: benchmarks/peers.py writes it")
    return args


def meta(args, sizes: Sizes) -> dict:
    return {
        "torch": torch.__version__,
        "pyro": version("pyro-ppl"),
        "storchastic": version("storchastic"),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "quick": args.quick,
        "inputs": os.path.abspath(args.inputs),
        "rollout_T": sizes.rollout_t,
        "elbo_N": sizes.elbo_n,
        "scaling_limit_s": sizes.scaling_limit_s,
        "scaling_stopped": [],
    }


def main(argv=None):
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    with np.load(args.inputs) as npz:
        inputs = Inputs({k: npz[k] for k in npz.files})
    start = time.perf_counter()
    result = {"meta": meta(args, sizes), "rows": [], "scaling": [], "failures": []}
    failures = result["failures"]
    for model in args.only:
        for system, thunk in JOBS[model](inputs, sizes):
            row = attempt(failures, model, system, thunk)
            if row is not None:
                result["rows"].append(row)
    if not args.skip_scaling:
        stopped = result["meta"]["scaling_stopped"]
        for sweep, sizes_list in sweeps(inputs, sizes, args.only):
            thunk = functools.partial(
                run_sweep, sweep, sizes_list, sizes.scaling_limit_s, sizes.warmup, failures, stopped
            )
            rows = attempt(failures, sweep.model, f"{sweep.system} (scaling)", thunk)
            result["scaling"] += rows or []
    result["meta"]["total_s"] = round(time.perf_counter() - start, 1)
    log(f"total {result['meta']['total_s']} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
