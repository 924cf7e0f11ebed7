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
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from statistics import NormalDist

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import harness  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import peer_models  # noqa: E402
from harness import Moments, estimate, fmt, met, micro  # noqa: E402

REFERENCE = "jax_scg"
HAND = "hand-written JAX"
NUMPYRO = "NumPyro TraceGraph_ELBO"
TORCH_SYSTEMS = ("Pyro TraceGraph_ELBO", "Pyro JitTraceGraph_ELBO", "Storchastic")
SYSTEM_ORDER = (HAND, REFERENCE, NUMPYRO, *TORCH_SYSTEMS)
#: Family-wise error rate of the unbiasedness check (Bonferroni over coordinates).
ALPHA = 0.01
RUNTIME_TARGET = 1.02  # median runtime jax_scg / hand-written
SLOPE_TOLERANCE = 0.15  # |slope - 1| for "slope ≈ 1"
SLOPE_FROM = 256  # slopes are fitted over the sizes >= this (or the upper half)
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


def batch_for(size: int) -> int:
    """B(size) = clip(2^20 // size, 1, 1024) keys per call in the scaling sweeps."""
    return int(min(max(2**20 // size, 1), 1024))


# ------------------------------------------------------------------------------------------
# Rows and their statistics


@dataclasses.dataclass
class Row:
    """One system's results on one model (a JAX system measured here, or a torch row).

    Attributes:
      model: "chain", "elbo", "rollout" or "sbn".
      system: the system's name.
      n: the number of one-sample estimates behind ``mean`` and ``var``.
      mean: per-coordinate mean of the estimates (float64).
      var: per-coordinate variance of one estimate, ddof = 1 (float64).
      estimates_per_s: throughput; None if not measured.
      batch: estimates per timed call.
      compile_s: trace + compile seconds (JAX systems).
      setup_s: first-call overhead in seconds (torch systems).
      hlo_ops: compiled HLO op count (JAX systems).
      note: how the row was produced (torch systems).
    """

    model: str
    system: str
    n: int
    mean: np.ndarray
    var: np.ndarray
    estimates_per_s: float | None = None
    batch: int | None = None
    compile_s: float | None = None
    setup_s: float | None = None
    hlo_ops: int | None = None
    note: str = ""

    @property
    def variance(self) -> float:
        """The variance of one estimate: the mean over coordinates of ``var``."""
        return float(np.mean(self.var))

    @property
    def se(self) -> np.ndarray:
        """Per-coordinate standard error of ``mean``."""
        return np.sqrt(self.var / self.n)


def rows_from_torch(result: dict) -> list[Row]:
    """The rows of the torch side's JSON object as :class:`Row` objects."""
    return [
        Row(
            model=r["model"],
            system=r["system"],
            n=int(r["n"]),
            mean=np.asarray(r["mean"], np.float64),
            var=np.asarray(r["var"], np.float64),
            estimates_per_s=r.get("estimates_per_s"),
            batch=r.get("batch"),
            setup_s=r.get("setup_s"),
            note=r.get("note", ""),
        )
        for r in result.get("rows", [])
    ]


def bonferroni_threshold(coordinates: int, alpha: float = ALPHA) -> float:
    """The |z| that one of ``coordinates`` two-sided tests exceeds with probability alpha / d."""
    return NormalDist().inv_cdf(1.0 - alpha / (2.0 * coordinates))


def max_z_vs_exact(row: Row, exact: np.ndarray) -> float:
    """max over coordinates of |mean − exact| / SE (SE floored at float32 rounding)."""
    floor = 1e-6 * (1.0 + np.abs(exact))
    return float(np.max(np.abs(row.mean - exact) / np.maximum(row.se, floor)))


def max_z_between(row: Row, other: Row) -> float:
    """max over coordinates of |mean − mean_other| / sqrt(SE² + SE_other²)."""
    se = np.sqrt(row.se**2 + other.se**2)
    floor = 1e-6 * (1.0 + np.abs(other.mean))
    return float(np.max(np.abs(row.mean - other.mean) / np.maximum(se, floor)))


@dataclasses.dataclass(frozen=True)
class RowStats:
    """The derived numbers of one row.

    Attributes:
      max_z: max |z| against the exact gradient, or against jax_scg's mean (no exact
        gradient); None for jax_scg itself in the latter case.
      threshold: the Bonferroni threshold for the model's number of coordinates.
      variance_ratio: variance / jax_scg's variance (None without a jax_scg row).
      speed_ratio: estimates/s / jax_scg's estimates/s (None if either is missing).
    """

    max_z: float | None
    threshold: float
    variance_ratio: float | None
    speed_ratio: float | None


def row_stats(row: Row, reference: Row | None, exact: np.ndarray | None) -> RowStats:
    """Unbiasedness, variance ratio and speed ratio of ``row`` (reference: jax_scg's row)."""
    threshold = bonferroni_threshold(row.mean.size)
    if exact is not None:
        z = max_z_vs_exact(row, exact)
    elif reference is not None and row is not reference:
        z = max_z_between(row, reference)
    else:
        z = None
    variance_ratio = speed_ratio = None
    if reference is not None:
        variance_ratio = row.variance / reference.variance
        if row.estimates_per_s and reference.estimates_per_s:
            speed_ratio = row.estimates_per_s / reference.estimates_per_s
    return RowStats(z, threshold, variance_ratio, speed_ratio)


def sort_rows(rows: Sequence[Row]) -> list[Row]:
    """Rows in the order of :data:`SYSTEM_ORDER` (unknown systems last, by name)."""
    rank = {name: i for i, name in enumerate(SYSTEM_ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r.system, len(rank)), r.system))


def find_row(rows: Sequence[Row], system: str) -> Row | None:
    return next((r for r in rows if r.system == system), None)


# ------------------------------------------------------------------------------------------
# Formatting


MODEL_HEADERS = [
    "system",
    "n",
    "max |z| [threshold]",
    "variance",
    "variance / jax_scg",
    "estimates/s",
    "speed / jax_scg",
    "trace+compile s",
    "HLO ops",
]


def model_table_rows(rows: Sequence[Row], exact: np.ndarray | None) -> list[list[str]]:
    """The cells of one model's table (``MODEL_HEADERS``), jax_scg's row the reference."""
    reference = find_row(rows, REFERENCE)
    out = []
    for row in sort_rows(rows):
        s = row_stats(row, reference, exact)
        flag = "" if s.max_z is None or s.max_z <= s.threshold else " **biased?**"
        z = "reference" if s.max_z is None else f"{s.max_z:.2f}{flag}"
        if row.compile_s is not None:
            compile_cell = f"{row.compile_s:.2f}"
        elif row.setup_s is not None:
            compile_cell = f"setup {row.setup_s:.2f}"
        else:
            compile_cell = "–"
        out.append(
            [
                row.system,
                f"{row.n:,}",
                f"{z} [{s.threshold:.2f}]",
                fmt(row.variance, ".4g"),
                fmt(s.variance_ratio, ".3f"),
                fmt(row.estimates_per_s, ",.0f"),
                fmt(s.speed_ratio, ".3g"),
                compile_cell,
                fmt(row.hlo_ops, "d"),
            ]
        )
    return out


# ------------------------------------------------------------------------------------------
# The JAX side: statistics, timing, op counts, compile time


@dataclasses.dataclass
class ModelResult:
    """Everything measured for one model on the JAX side.

    Attributes:
      model: the model.
      rows: one :class:`Row` per JAX system.
      exact: the exact gradient (float64), or None.
      timing: system -> :class:`harness.TimingSummary` (baseline: hand-written).
      same_estimates: max |hand − jax_scg| / max(1, max |jax_scg|) over a batch of keys.
    """

    model: peer_models.PeerModel
    rows: list[Row]
    exact: np.ndarray | None
    timing: dict
    same_estimates: float


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
                hlo_ops=harness.compiled_stats(jitted[system], *args).op_count)
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


@dataclasses.dataclass
class TorchOutcome:
    """The torch side's JSON object (empty if not run) and what happened."""

    result: dict
    status: str
    seconds: float | None = None


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
# Scaling tables


def fitted_slope(sizes: Sequence[int], seconds: Sequence[float]) -> tuple[float, str] | None:
    """log-log slope over the sizes >= SLOPE_FROM (if 2+), else the upper half; with range."""
    pairs = sorted(zip(sizes, seconds))
    chosen = [p for p in pairs if p[0] >= SLOPE_FROM]
    if len(chosen) < 2:
        chosen = pairs[len(pairs) // 2 :] if len(pairs) >= 4 else pairs
    if len(chosen) < 2:
        return None
    xs, ys = zip(*chosen)
    return harness.loglog_slope(xs, ys), f"{xs[0]}–{xs[-1]}"


def scaling_series(points: Sequence[dict], axis: str) -> dict[str, dict[int, float]]:
    """System -> {size: seconds per estimate} for one axis, systems in table order."""
    series: dict[str, dict[int, float]] = {}
    for p in points:
        if p["axis"] == axis:
            series.setdefault(p["system"], {})[int(p["size"])] = float(p["seconds_per_estimate"])
    rank = {name: i for i, name in enumerate(SYSTEM_ORDER)}
    return dict(sorted(series.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def scaling_table(points: Sequence[dict], axis: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: µs per estimate per size and system, then the fitted slopes."""
    series = scaling_series(points, axis)
    systems = list(series)
    sizes = sorted({s for values in series.values() for s in values})
    headers = [axis, "keys per call B"] + [f"{s} µs/estimate" for s in systems]
    rows = [[size, batch_for(size)] + [micro(series[s].get(size)) for s in systems]
            for size in sizes]  # fmt: skip
    slopes = []
    for system in systems:
        fit = fitted_slope(list(series[system]), list(series[system].values()))
        slopes.append("n/a" if fit is None else f"{fit[0]:.2f} ({fit[1]})")
    rows.append(["log-log slope (sizes)", ""] + slopes)
    return headers, rows


# ------------------------------------------------------------------------------------------
# Targets


def target_rows(results: Sequence[ModelResult], rows: dict, points: Sequence[dict]) -> list:
    """[target, model, measured, met/missed] for every target of the specification."""
    out = []
    for r in results:
        name = r.model.name
        scg_row, hand_row = find_row(rows[name], REFERENCE), find_row(rows[name], HAND)
        out.append(
            ["hand-written == jax_scg key by key (1e-5)", name, f"{r.same_estimates:.1e}",
             met(r.same_estimates <= 1e-5)]
        )  # fmt: skip
        out.append(
            ["HLO ops jax_scg == hand-written", name, f"{scg_row.hlo_ops} / {hand_row.hlo_ops}",
             met(scg_row.hlo_ops == hand_row.hlo_ops)]
        )  # fmt: skip
        t = r.timing[REFERENCE]
        out.append(
            [f"median runtime jax_scg / hand-written ≤ {RUNTIME_TARGET}", name,
             f"{t.ratio:.3f} [IQR {t.paired_q25:.3f}, {t.paired_q75:.3f}]",
             met(t.ratio <= RUNTIME_TARGET)]
        )  # fmt: skip
        out.append(unbiased_target(name, rows[name], r.exact))
    for name in ("elbo", "sbn"):
        model_rows = rows.get(name, [])
        scg_row, numpyro_row = find_row(model_rows, REFERENCE), find_row(model_rows, NUMPYRO)
        if scg_row is None or numpyro_row is None:
            continue
        speed = scg_row.estimates_per_s / numpyro_row.estimates_per_s
        variance = scg_row.variance / numpyro_row.variance
        out.append(["estimates/s jax_scg ≥ NumPyro", name, f"ratio {speed:.3f}", met(speed >= 1)])
        out.append(
            ["variance jax_scg ≤ NumPyro", name, f"ratio {variance:.3f}", met(variance <= 1)]
        )
    for axis, name in (("T", "rollout"), ("N", "elbo")):
        for system, values in scaling_series(points, axis).items():
            fit = fitted_slope(list(values), list(values.values()))
            if fit is None:
                continue
            ok = abs(fit[0] - 1.0) <= SLOPE_TOLERANCE
            out.append(
                [f"time per estimate vs {axis}: slope ≈ 1 (±{SLOPE_TOLERANCE})",
                 f"{name}, {system}", f"{fit[0]:.2f} over {fit[1]}", met(ok)]
            )  # fmt: skip
    return out


def unbiased_target(name: str, rows: Sequence[Row], exact) -> list:
    """Every system's max |z| within the Bonferroni threshold."""
    reference = find_row(rows, REFERENCE)
    worst = []
    for row in rows:
        s = row_stats(row, reference, exact)
        if s.max_z is not None:
            worst.append((s.max_z / s.threshold, row.system, s.max_z, s.threshold))
    if not worst:
        return ["unbiased (max |z| ≤ Bonferroni threshold)", name, "n/a", "n/a"]
    ratio, system, z, threshold = max(worst)
    against = "exact" if exact is not None else "jax_scg's mean"
    return [
        f"unbiased: every system's max |z| vs {against} ≤ threshold",
        name,
        f"worst {z:.2f} ({system}; threshold {threshold:.2f})",
        met(ratio <= 1),
    ]


# ------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grouped_bars(values: dict, ylabel: str, title: str, path: str, line: float | None = None):
    """Bars of ``values[model][system]`` grouped by model, log scale; saved as a PNG."""
    plt = _pyplot()
    models = list(values)
    systems = [s for s in SYSTEM_ORDER if any(s in values[m] for m in models)]
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, system in enumerate(systems):
        xs = [j + (i - (len(systems) - 1) / 2) * width for j, m in enumerate(models)
              if values[m].get(system)]  # fmt: skip
        ys = [values[m][system] for m in models if values[m].get(system)]
        ax.bar(xs, ys, width, label=system)
    if line is not None:
        ax.axhline(line, color="black", linewidth=0.8)
    ax.set_xticks(range(len(models)), models)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scaling_plot(points: Sequence[dict], axis: str, xlabel: str, title: str, path: str):
    """Log-log lines of seconds per estimate against size, one per system."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = scaling_series(points, axis)
    for system, values in series.items():
        sizes = sorted(values)
        ax.loglog(sizes, [values[s] for s in sizes], marker="o", label=system)
    ax.set_xticks(sorted({s for values in series.values() for s in values}))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("seconds per estimate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(rows: dict, points: Sequence[dict], directory: str) -> list[str]:
    """The four PNGs of the report in ``directory``; returns their paths."""
    speed = {m: {r.system: r.estimates_per_s for r in rs} for m, rs in rows.items()}
    ratio = {}
    for m, rs in rows.items():
        reference = find_row(rs, REFERENCE)
        ratio[m] = {r.system: r.variance / reference.variance for r in rs} if reference else {}
    paths = [os.path.join(directory, f"peers_{n}.png")
             for n in ("throughput", "scaling_T", "scaling_N", "variance")]  # fmt: skip
    grouped_bars(speed, "estimates / s", "Throughput (jit(vmap) or batched)", paths[0])
    scaling_plot(points, "T", "rollout length T", "rollout: time per estimate", paths[1])
    scaling_plot(points, "N", "data points N", "elbo: time per estimate", paths[2])
    grouped_bars(ratio, "variance / jax_scg's", "Variance of one estimate", paths[3], line=1.0)
    return paths


# ------------------------------------------------------------------------------------------
# Report


def header(quick: bool, torch: TorchOutcome) -> str:
    import jaxlib
    import numpyro

    meta = torch.result.get("meta", {})
    device = jax.devices()[0]
    torch_versions = (
        f"torch {meta.get('torch')}, pyro-ppl {meta.get('pyro')}, storchastic "
        f"{meta.get('storchastic')} (torch threads {meta.get('torch_threads')}, python "
        f"{meta.get('python')})"
        if meta
        else "torch, pyro-ppl, storchastic: not run (see below)"
    )
    return harness.report_header(
        "Peer benchmarks: jax_scg, hand-written JAX, NumPyro, Pyro, Storchastic",
        quick,
        f"machine: {harness.cpu_model()}, {os.cpu_count()} cores; {platform.platform()}",
        f"JAX platform: {harness.platform_name()} ({device.device_kind})",
        f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, numpyro "
        f"{numpyro.__version__}, python {platform.python_version()}",
        torch_versions,
        f"jax_scg revision: {harness.library_revision()}",
    )


NOTES = """\
Every gradient is with respect to one flat float32 vector θ: of the expected cost (chain,
rollout) or of the ELBO itself (elbo, sbn; Pyro's and NumPyro's losses are −ELBO and their
gradients are negated). Each estimate is a one-sample estimate from its own key (or particle);
statistics are accumulated in float64. **n**: estimates behind the row. **max |z|**: the
largest over coordinates of |mean − exact| / SE (models 1-3; exact gradients by enumeration
or dynamic programming) or, for sbn (no exact gradient), |mean − jax_scg's mean| /
sqrt(SE² + SE_jax_scg²), every JAX system drawing its own keys; the threshold in brackets is
the two-sided Bonferroni bound for a family-wise error of {alpha} over the model's
coordinates. **variance**: the mean over coordinates of the per-coordinate variance of one
estimate. **estimates/s**: JAX systems `jax.jit(jax.vmap(grad, in_axes=(None, 0)))` over
{batch} keys per call ({sbn_batch} for sbn), the JAX systems of a model timed in
interleaved rounds (`harness.time_interleaved`, median of {repeats} rounds); NumPyro is
`vmap` over keys of `jax.grad` of its `TraceGraph_ELBO` loss; the torch systems as described
in their notes.
**speed / jax_scg**: estimates/s over jax_scg's (above 1: faster than jax_scg).
**trace+compile s**: {compile}; for torch rows the first call's overhead ("setup").
**HLO ops**: instructions of the optimised HLO module except parameter, constant, tuple and
get-tuple-element (`harness.hlo_op_count`).
The hand-written surrogates put in each magic box exactly the costs jax_scg credits (see
`benchmarks/peer_models.py`), so their estimates equal jax_scg's key by key (checked). Their
HLO op counts still differ where the two programs are written differently: jax_scg
multiplies each cost summand by its box (⊡·a − ⊡·b) where the hand-written elbo surrogate
factors ⊡·(a − b), and the hand-written rollout forms its reward-to-go boxes after the scan
(`cumsum`, as the specification asks) where jax_scg forms them inside the loop body.
"""


def model_section(result: ModelResult, rows: Sequence[Row]) -> str:
    """One model's table and the torch rows' notes."""
    text = harness.markdown_table(
        MODEL_HEADERS, model_table_rows(rows, result.exact), title=result.model.title
    )
    notes = [f"- {r.system}: {r.note}" for r in sort_rows(rows) if r.note]
    return text + ("\n" + "\n".join(notes) + "\n" if notes else "")


def failures_section(torch: TorchOutcome) -> str:
    """The torch side's status, recorded failures and early stops of its sweeps."""
    result = torch.result
    lines = ["### Torch side", ""]
    if torch.status == "run":
        took = f" in {torch.seconds:.0f} s" if torch.seconds is not None else ""
        lines.append(f"- ran{took}")
    else:
        lines.append(f"- {torch.status}")
    for stop in result.get("meta", {}).get("scaling_stopped", []):
        lines.append(
            f"- scaling sweep of {stop.get('system')} ({stop.get('model')}) stopped at size "
            f"{stop.get('size')}: {stop.get('reason')}"
        )
    failures = result.get("failures", [])
    lines.append("")
    if failures:
        rows = [[f["model"], f["system"], f["error"]] for f in failures]
        lines.append(harness.markdown_table(["model", "system", "error"], rows, "Failures"))
    else:
        lines.append("No failures recorded.\n")
    return "\n".join(lines)


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
