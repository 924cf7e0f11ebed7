"""Peer benchmark suite: jax_scg against hand-written JAX, NumPyro, Pyro and Storchastic.

Run from the repository root, in an environment with ``pip install -e ".[peers,plots]"``::

    python benchmarks/peers.py                     # full run: benchmarks/RESULTS.md + plots
    python benchmarks/peers.py --quick --no-torch --out tmp/RESULTS.md --plots tmp   # smoke

``bash benchmarks/run_peers.sh`` makes the PyTorch environment first and then runs this.

Four models (``benchmarks/peer_models.py``): 1 "chain" (Figure 1's graph 5), 2 "elbo" (N
Bernoulli latents with a data plate), 3 "rollout" (a T-step ``lax.scan`` policy), 4 "sbn" (a
sigmoid belief net on 64 binarised digits). For each model and system: the Monte Carlo mean
of one-sample gradient estimates against the exact gradient (models 1-3) or against
jax_scg's mean (model 4), in standard errors with a Bonferroni threshold; the variance of one
estimate and its ratio to jax_scg's; estimates per second of ``jit(vmap(grad))`` over a batch
of keys, the JAX systems timed in interleaved rounds (``harness.time_interleaved``); trace +
compile time and compiled HLO op counts of the JAX systems. Then the scaling of the time per
estimate with T (rollout) and N (elbo), with fitted log-log slopes.

The JAX systems run here. The PyTorch systems (Pyro's ``TraceGraph_ELBO`` and
``JitTraceGraph_ELBO``, Storchastic) run in ``benchmarks/.venv-peers`` (made by
``bash benchmarks/setup_peers.sh``) as the subprocess ``benchmarks/torch_peers.py``, which
reads the models' data and parameters from ``peers_inputs.npz`` (written here) and prints one
JSON object that is merged into the same tables. Without that environment the report says
how to make it and has the JAX rows only.

The rows, their statistics, the tables, the targets and the sections of the report are in
``peers_report.py``; the plots in ``peers_plots.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import harness  # noqa: E402
import hlo_stats  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import peer_models  # noqa: E402
from harness import Moments, estimate  # noqa: E402
from peers_plots import write_plots  # noqa: E402
from peers_report import (  # noqa: E402
    ALPHA,
    HAND,
    NOTES,
    REFERENCE,
    SLOPE_FROM,
    ModelResult,
    Row,
    TorchOutcome,
    batch_for,
    failures_section,
    header,
    model_section,
    rows_from_torch,
    scaling_table,
    target_rows,
)

MAIN_SIZES = {"chain": None, "elbo": 256, "rollout": 64, "sbn": 64}
TORCH_PYTHON = os.path.join(HERE, ".venv-peers", "bin", "python")
TORCH_SCRIPT = os.path.join(HERE, "torch_peers.py")
MISSING_VENV = (
    "The PyTorch peers (Pyro TraceGraph_ELBO, Pyro JitTraceGraph_ELBO, Storchastic) were not "
    "run: benchmarks/.venv-peers does not exist. Make it with `bash benchmarks/setup_peers.sh` "
    "(or run everything with `bash benchmarks/run_peers.sh`), then run this again."
)


# ------------------------------------------------------------------------------------------
# Sizes


@dataclasses.dataclass(frozen=True)
class Config:
    """How much to run.

    Attributes:
      estimates: model -> one-sample estimates behind each row's mean and variance (a
        multiple of the batch).
      batch: model -> keys per jitted call (estimates, timing, op counts, compile time).
      repeats: interleaved timing rounds per model.
      compile_repeats: timed trace+compile rounds per system (0: the first compile only).
      target_s: duration of one timed batch of calls.
      scaling_t: rollout lengths of the T sweep.
      scaling_n: data sizes of the N sweep.
      scaling_repeats: interleaved timing rounds per scaling size.
      torch_timeout_s: limit on the torch subprocess.
    """

    estimates: dict
    batch: dict
    repeats: int
    compile_repeats: int
    target_s: float
    scaling_t: tuple
    scaling_n: tuple
    scaling_repeats: int
    torch_timeout_s: float


FULL = Config(
    estimates={"chain": 100 * 1024, "elbo": 100 * 1024, "rollout": 100 * 1024, "sbn": 20 * 1024},
    batch={"chain": 1024, "elbo": 1024, "rollout": 1024, "sbn": 1024},
    repeats=15,
    compile_repeats=3,
    target_s=0.05,
    scaling_t=(16, 32, 64, 128, 256, 512, 1024),
    scaling_n=(64, 256, 1024, 4096, 16384, 65536),
    scaling_repeats=7,
    torch_timeout_s=3600.0,
)
QUICK = Config(
    estimates={"chain": 2048, "elbo": 2048, "rollout": 2048, "sbn": 512},
    batch={"chain": 1024, "elbo": 1024, "rollout": 1024, "sbn": 256},
    repeats=3,
    compile_repeats=0,
    target_s=0.005,
    scaling_t=(16, 32),  # as torch_peers.py --quick
    scaling_n=(64, 1024),
    scaling_repeats=3,
    torch_timeout_s=600.0,
)


# One GPU run inside benchmarks/gpu_check.sh (its peers step has 170 s): the rollout at 2^20
# keys per call (a million estimates), the other models at 2^14-2^16; no PyTorch peers.
GPU = Config(
    estimates={"chain": 2**18, "elbo": 2**16, "rollout": 2**21, "sbn": 2**15},
    batch={"chain": 2**16, "elbo": 2**14, "rollout": 2**20, "sbn": 2**13},
    repeats=7,
    compile_repeats=1,
    target_s=0.05,
    scaling_t=(16, 64, 256, 1024),
    scaling_n=(256, 4096, 65536),
    scaling_repeats=5,
    torch_timeout_s=0.0,
)


# ------------------------------------------------------------------------------------------
# The JAX side: statistics, timing, op counts, compile time


def batched(make: Callable[[], Callable]) -> Callable:
    """A fresh ``jax.vmap(grad, in_axes=(None, 0))`` of ``make()``: one estimate per key."""
    return jax.vmap(make(), in_axes=(None, 0))


def estimate_difference(a, b) -> float:
    """max |a − b| relative to max(1, max |b|), for two batches of estimates."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


#: (model name, size, batch) -> {system: jitted batched gradient}, shared by the main tables
#: and the scaling sweeps so that a program of the same shape is compiled once.
_JITTED: dict[tuple, dict[str, Callable]] = {}


def jitted_systems(model: peer_models.PeerModel, keys) -> tuple[dict[str, Callable], dict]:
    """Every JAX system of ``model`` jitted and compiled for ``keys``; with the seconds of
    each first ``lower(...).compile()`` (None where it was compiled before)."""
    cache_key = (model.name, model.size, keys.shape[0])
    if cache_key in _JITTED:
        return _JITTED[cache_key], dict.fromkeys(_JITTED[cache_key])
    jitted, seconds = {}, {}
    for system, make in model.systems().items():
        fn = jax.jit(batched(make))
        start = time.perf_counter()
        fn.lower(model.theta, keys).compile()  # later calls with these shapes reuse it
        seconds[system] = time.perf_counter() - start
        jitted[system] = fn
    _JITTED[cache_key] = jitted
    return jitted, seconds


def compile_seconds(make: Callable, args, repeats: int, first: float | None) -> float | None:
    """``harness.trace_compile_time`` of a fresh batched system; with ``repeats`` = 0 (quick
    runs) the first compile's seconds instead, caches cold."""
    if repeats == 0:
        return first
    return harness.trace_compile_time(lambda: batched(make), *args, repeats=repeats)


def run_model(model: peer_models.PeerModel, cfg: Config, seed: int) -> ModelResult:
    """Statistics, interleaved timing, op counts and trace+compile time of one model.

    One compiled program per system serves all of them: the estimates are drawn in calls of
    ``cfg.batch`` keys (a multiple of it in all), the same shape that is timed and counted.
    """
    name, theta, batch = model.name, model.theta, cfg.batch[model.name]
    keys = jax.random.split(jax.random.key(seed + 1000), batch)
    args = (theta, keys)
    jitted, first_compile = jitted_systems(model, keys)
    same = estimate_difference(jitted[HAND](*args), jitted[REFERENCE](*args))
    print(f"  {name}: hand-written vs jax_scg, max relative difference {same:.2g}", flush=True)
    moments = {}
    for i, (system, fn) in enumerate(jitted.items()):
        start = time.perf_counter()
        moments[system] = estimate(fn, theta, cfg.estimates[name], seed + i, batch)
        print(f"  {name} | {system}: {cfg.estimates[name]} estimates in "
              f"{time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
    times = harness.time_interleaved(
        jitted, args, repeats=cfg.repeats, warmup=1, target_s=cfg.target_s
    )
    timing = harness.summarize(times, baseline=HAND)
    rows = []
    for system, make in model.systems().items():
        m: Moments = moments[system]
        rows.append(
            Row(name, system, m.n, m.mean, m.var,
                estimates_per_s=batch / timing[system].median_s, batch=batch,
                compile_s=compile_seconds(make, args, cfg.compile_repeats, first_compile[system]),
                hlo_ops=hlo_stats.compiled_stats(jitted[system], *args).op_count)
        )  # fmt: skip
    return ModelResult(model, rows, model.exact_grad(), timing, same)


def scaling_point(model: peer_models.PeerModel, axis: str, cfg: Config) -> list[dict]:
    """Seconds per estimate of every JAX system of ``model`` at its size (interleaved)."""
    batch = batch_for(model.size)
    keys = jax.random.split(jax.random.key(7), batch)
    jitted, _ = jitted_systems(model, keys)
    times = harness.time_interleaved(
        jitted, (model.theta, keys), repeats=cfg.scaling_repeats, warmup=1, target_s=cfg.target_s
    )
    return [
        {
            "axis": axis,
            "model": model.name,
            "system": system,
            "size": model.size,
            "seconds_per_estimate": float(np.median(t)) / batch,
            "batch": batch,
        }
        for system, t in times.items()
    ]


def run_scaling(cfg: Config) -> list[dict]:
    """The T sweep (rollout) and the N sweep (elbo) of the JAX systems."""
    points = []
    for axis, name, sizes in (("T", "rollout", cfg.scaling_t), ("N", "elbo", cfg.scaling_n)):
        for size in sizes:
            start = time.perf_counter()
            points += scaling_point(peer_models.make(name, size), axis, cfg)
            print(f"  scaling {axis} = {size}: {time.perf_counter() - start:.1f} s", flush=True)
    return points


# ------------------------------------------------------------------------------------------
# The torch side


def empty_torch_result() -> dict:
    return {"meta": {}, "rows": [], "scaling": [], "failures": []}


def run_torch(inputs: str, quick: bool, timeout_s: float) -> TorchOutcome:
    """Runs ``torch_peers.py`` in the peers' venv; its progress goes to this stderr."""
    if not os.path.exists(TORCH_PYTHON):
        print(MISSING_VENV, flush=True)
        return TorchOutcome(empty_torch_result(), MISSING_VENV)
    if not os.path.exists(TORCH_SCRIPT):
        status = "The PyTorch peers were not run: benchmarks/torch_peers.py is missing."
        print(status, flush=True)
        return TorchOutcome(empty_torch_result(), status)
    command = [TORCH_PYTHON, TORCH_SCRIPT, "--inputs", inputs] + (["--quick"] if quick else [])
    print("running the torch side:", " ".join(command), flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return TorchOutcome(empty_torch_result(), f"torch_peers.py ran over {timeout_s:.0f} s")
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        status = f"torch_peers.py failed with exit status {proc.returncode} (see its stderr)"
        return TorchOutcome(empty_torch_result(), status, seconds)
    try:
        result = parse_torch_output(proc.stdout)
    except ValueError as exc:
        return TorchOutcome(empty_torch_result(), f"torch_peers.py output unreadable: {exc}")
    return TorchOutcome(result, "run", seconds)


def parse_torch_output(stdout: str) -> dict:
    """The JSON object on the last non-empty line of the torch side's stdout."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty output")
    result = json.loads(lines[-1])
    for key, default in empty_torch_result().items():
        result.setdefault(key, default)
    return result


# ------------------------------------------------------------------------------------------
# Report


def build_report(
    quick: bool,
    cfg: Config,
    results: Sequence[ModelResult],
    jax_points: Sequence[dict],
    torch: TorchOutcome,
) -> tuple[str, dict, list[dict]]:
    """The markdown report; also returns all rows by model and all scaling points."""
    rows = {r.model.name: list(r.rows) for r in results}
    for row in rows_from_torch(torch.result):
        rows.setdefault(row.model, []).append(row)
    points = list(jax_points) + list(torch.result.get("scaling", []))
    compile_how = (
        "the seconds of the first `lower(...).compile()` of each system, caches cold (--quick)"
        if cfg.compile_repeats == 0
        else f"median wall time of `jax.jit(fresh fn).lower(...).compile()` over "
        f"{cfg.compile_repeats} fresh functions (`harness.trace_compile_time`)"
    )
    notes = NOTES.format(
        alpha=ALPHA,
        batch=cfg.batch["elbo"],
        sbn_batch=cfg.batch["sbn"],
        repeats=cfg.repeats,
        compile=compile_how,
    )
    parts = [header(quick, torch), notes]
    if torch.status != "run":
        parts.append(f"**{torch.status}**\n")
    parts.append("## Models\n")
    parts += [model_section(r, rows[r.model.name]) for r in results]
    parts.append("## Targets\n")
    parts.append(
        harness.markdown_table(
            ["target", "model", "measured", "met / missed"], target_rows(results, rows, points)
        )
    )
    parts.append("## Scaling\n")
    parts.append(
        "Time per estimate (median over interleaved rounds) against the rollout length T "
        "and the number of data points N, with B(size) = clip(2^20 // size, 1, 1024) keys "
        f"per call; slopes fitted in log-log over the sizes ≥ {SLOPE_FROM} (else the upper "
        "half). Plots: `peers_throughput.png`, `peers_scaling_T.png`, `peers_scaling_N.png`, "
        "`peers_variance.png`.\n"
    )
    for axis, title in (("T", "rollout: µs per estimate vs T"),
                        ("N", "elbo: µs per estimate vs N")):  # fmt: skip
        headers, table = scaling_table(points, axis)
        parts.append(harness.markdown_table(headers, table, title=title))
    parts.append(failures_section(torch))
    return "\n".join(parts), rows, points


# ------------------------------------------------------------------------------------------
# Main


KEPT = "<!-- The sections below are written by other benchmarks; peers.py keeps them. -->"


def kept_sections(path: str) -> str:
    """The part of an existing report from the ``KEPT`` marker on (other benchmarks' results)."""
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        old = f.read()
    return "\n" + old[old.index(KEPT) :] if KEPT in old else ""


def parse_args(argv=None):
    parser = harness.arg_parser(__doc__, "markdown report (default RESULTS.md)")
    parser.add_argument("--plots", default=None, help="directory of the PNGs and the npz")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers")
    parser.add_argument(
        "--gpu", action="store_true", help="GPU sizes (up to 2^20 keys per call), JAX rows only"
    )
    parser.add_argument(
        "--torch-json", default=None, help="merge this saved torch_peers.py output, not a new run"
    )
    return parser.parse_args(argv)


def output_paths(args) -> tuple[str, str]:
    """(report path, directory of plots and inputs); --quick never writes the committed ones."""
    out, plots = args.out, args.plots
    if args.quick and out is None:
        out = os.path.join(tempfile.mkdtemp(prefix="peers_quick_"), "RESULTS.md")
    out = out or os.path.join(HERE, "RESULTS.md")
    if plots is None:
        plots = (
            os.path.dirname(os.path.abspath(out)) if args.quick else os.path.join(HERE, "results")
        )
    os.makedirs(plots, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    return out, plots


def write_inputs(path: str, cfg: Config):
    """The npz of data and parameters the torch side reads (every N of both configurations)."""
    sizes = {MAIN_SIZES["elbo"], *FULL.scaling_n, *QUICK.scaling_n, *cfg.scaling_n}
    np.savez_compressed(path, **peer_models.torch_inputs(sizes, MAIN_SIZES["sbn"]))


def torch_side(args, inputs: str, cfg: Config, plots: str) -> TorchOutcome:
    """The torch result: loaded (--torch-json), skipped (--no-torch) or run now."""
    if args.torch_json:
        with open(args.torch_json) as f:
            return TorchOutcome(parse_torch_output(f.read()), "run")
    if args.no_torch:
        return TorchOutcome(empty_torch_result(), "The PyTorch peers were skipped (--no-torch).")
    outcome = run_torch(inputs, args.quick, cfg.torch_timeout_s)
    if outcome.status == "run":
        with open(os.path.join(plots, "peers_torch.json"), "w") as f:
            json.dump(outcome.result, f)
    return outcome


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = QUICK if args.quick else GPU if args.gpu else FULL
    args.no_torch = args.no_torch or args.gpu
    out, plots = output_paths(args)
    inputs = os.path.join(plots, "peers_inputs.npz")
    write_inputs(inputs, cfg)
    print(f"wrote {inputs}", flush=True)
    start = time.perf_counter()
    results = []
    for seed, name in enumerate(peer_models.MODELS):
        model_start = time.perf_counter()
        results.append(run_model(peer_models.make(name, MAIN_SIZES[name]), cfg, 10 * seed))
        print(f"  {name} done in {time.perf_counter() - model_start:.1f} s", flush=True)
    jax_points = run_scaling(cfg)
    print(f"JAX side done in {time.perf_counter() - start:.0f} s", flush=True)
    torch = torch_side(args, inputs, cfg, plots)
    text, rows, points = build_report(args.quick, cfg, results, jax_points, torch)
    for path in write_plots(rows, points, plots):
        print(f"wrote {path}", flush=True)
    text += kept_sections(out)
    print(text, flush=True)
    harness.write_report(out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
