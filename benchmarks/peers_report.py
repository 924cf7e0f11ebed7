"""The report of ``peers.py``: its rows, their statistics, its tables and its targets.

A :class:`Row` is one system's results on one model: a JAX system measured by ``peers.py``,
or a torch system read from ``torch_peers.py``'s JSON object (:func:`rows_from_torch`).
:func:`row_stats` gives a row's unbiasedness (max |z| against a Bonferroni threshold) and its
variance and speed against jax_scg's row, :func:`model_table_rows` the cells of a model's
table. :class:`ModelResult` and :class:`TorchOutcome` hold what the JAX side and the torch side
of a run return. Then the scaling tables (:func:`scaling_table`, log-log slopes by
:func:`fitted_slope`), the specification's targets (:func:`target_rows`) and the sections of
the report (:func:`header`, :data:`NOTES`, :func:`model_section`, :func:`failures_section`),
which ``peers.py``'s ``build_report`` puts together.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Sequence
from statistics import NormalDist

import harness
import jax
import numpy as np
import peer_models
from harness import fmt, met, micro

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
# What the two sides of a run return


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


@dataclasses.dataclass
class TorchOutcome:
    """The torch side's JSON object (empty if not run) and what happened."""

    result: dict
    status: str
    seconds: float | None = None


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
get-tuple-element (`hlo_stats.hlo_op_count`).
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
