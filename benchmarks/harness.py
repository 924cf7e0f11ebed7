"""A small benchmark harness: interleaved timing, compile time, reports.

Every number the benchmarks report is measured in the run that reports it; comparisons are
ratios between systems measured side by side, never against stored numbers.

Conventions:

* **Runtime.** :func:`time_interleaved` warms every system up (compiles it), then times them
  in rounds, one call batch per system per round, so that slow drift (frequency scaling,
  other processes) affects every system alike. The order of the systems rotates from round
  to round (A B, B A, ...) so that no system always runs right after another.
* **Compiled programs** (HLO op counts, FLOPs): ``hlo_stats.py``.

It also holds what every script's report shares: the command line (:func:`arg_parser`), the
header (:func:`report_header`), cell formats (:func:`ratio_cell`, :func:`fmt`, ...), Monte
Carlo moments (:class:`Moments`), and :func:`write_report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# ------------------------------------------------------------------------------------------
# Runtime


def _run_batch(fn: Callable, args: Sequence, inner: int) -> float:
    """Seconds per call of ``fn(*args)``, averaged over ``inner`` calls, blocking at the end."""
    start = time.perf_counter()
    out = None
    for _ in range(inner):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / inner


def calibrate_inner(fn: Callable, args: Sequence, target_s: float = 0.02, cap: int = 1000) -> int:
    """The number of calls per timed batch so that one batch lasts about ``target_s``.

    Args:
      fn: a warmed-up (compiled) function.
      args: its arguments.
      target_s: the wanted duration of one timed batch, in seconds.
      cap: the largest number of calls returned.

    Returns:
      A number of calls, at least 1.
    """
    per_call = min(_run_batch(fn, args, 1) for _ in range(3))
    return int(min(cap, max(1, round(target_s / max(per_call, 1e-9)))))


def time_interleaved(
    fns: Mapping[str, Callable],
    args: Sequence,
    repeats: int = 50,
    inner: int | None = None,
    warmup: int = 2,
    target_s: float = 0.02,
) -> dict[str, np.ndarray]:
    """Times already-jitted functions on the same arguments, interleaving the systems.

    Each function is called ``warmup`` times first (the first call compiles it). Then, for
    each of ``repeats`` rounds, every system runs one batch of ``inner`` calls, timed with
    ``jax.block_until_ready`` on the last output; the order of the systems rotates by one
    position every round. Python's garbage collector is off while timing.

    Args:
      fns: system name -> jitted function taking ``*args``.
      args: the arguments, shared by all systems.
      repeats: the number of rounds (timed batches per system).
      inner: calls per timed batch; ``None`` picks it (the same for every system) so that
        the slowest system's batch lasts about ``target_s``.
      warmup: untimed calls per system before timing.
      target_s: the duration of one batch when ``inner`` is None, in seconds.

    Returns:
      System name -> array of ``repeats`` seconds-per-call, in round order (so that element
      ``r`` of two systems was measured in the same round).
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            jax.block_until_ready(fns[name](*args))
    if inner is None:
        inner = min(calibrate_inner(fns[name], args, target_s) for name in names)
    times = {name: np.empty(repeats) for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: no collection pauses inside a timed batch
    try:
        for r in range(repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                times[name][r] = _run_batch(fns[name], args, inner)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


@dataclasses.dataclass(frozen=True)
class TimingSummary:
    """Summary of one system's times against a baseline measured in the same rounds.

    Attributes:
      median_s: the median seconds per call.
      iqr_s: the interquartile range (75th minus 25th percentile) of seconds per call.
      ratio: median of this system / median of the baseline.
      paired_q25: 25th percentile of the per-round ratios (this system / baseline, round r).
      paired_q75: 75th percentile of the per-round ratios.
    """

    median_s: float
    iqr_s: float
    ratio: float
    paired_q25: float
    paired_q75: float


def summarize(times: Mapping[str, np.ndarray], baseline: str) -> dict[str, TimingSummary]:
    """Medians, interquartile ranges and ratios to ``baseline`` of :func:`time_interleaved` output.

    Args:
      times: system name -> seconds per call, one per round.
      baseline: the system the ratios are relative to.

    Returns:
      System name -> :class:`TimingSummary`.
    """
    base = np.asarray(times[baseline])
    out = {}
    for name, t in times.items():
        t = np.asarray(t)
        q25, q50, q75 = np.percentile(t, [25, 50, 75])
        paired = t / base
        p25, p75 = np.percentile(paired, [25, 75])
        out[name] = TimingSummary(
            median_s=float(q50),
            iqr_s=float(q75 - q25),
            ratio=float(q50 / np.median(base)),
            paired_q25=float(p25),
            paired_q75=float(p75),
        )
    return out


# ------------------------------------------------------------------------------------------
# Trace + compile time


def trace_compile_time(make_fn: Callable[[], Callable], *args, repeats: int = 5) -> float:
    """Median wall time to trace, lower and compile a fresh ``jax.jit`` of ``make_fn()``.

    ``make_fn`` must build a new function object on every call, so that no tracing cache is
    hit; one untimed round runs first so that caches shared by every system (the jitted
    helpers inside ``jax.numpy`` and ``jax.random``) are warm for all alike.

    Args:
      make_fn: returns a new (un-jitted) function on each call.
      *args: example arguments.
      repeats: timed rounds.

    Returns:
      The median seconds of ``jax.jit(make_fn()).lower(*args).compile()``.
    """
    jax.jit(make_fn()).lower(*args).compile()
    times = []
    for _ in range(repeats):
        fn = make_fn()
        start = time.perf_counter()
        jax.jit(fn).lower(*args).compile()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def loglog_slope(sizes: Sequence[float], times: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(size): 1 is linear, 2 quadratic."""
    return float(np.polyfit(np.log(sizes), np.log(times), 1)[0])


# ------------------------------------------------------------------------------------------
# Reporting


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence], title: str | None = None):
    """Renders a markdown table (with an optional ``### title`` line); returns the text.

    Args:
      headers: column names.
      rows: one sequence of cells per row (converted with ``str``).
      title: an optional heading printed above the table.

    Returns:
      The table as markdown text, ending with a newline.
    """
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(_cell(h) for h in headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_table(headers: Sequence[str], rows: Sequence[Sequence], title: str | None = None):
    """Prints :func:`markdown_table` (flushed) and returns its text."""
    text = markdown_table(headers, rows, title)
    print(text, flush=True)
    return text


def platform_name() -> str:
    """``jax.devices()[0].platform``, plus the device kind for GPUs (e.g. ``gpu_NVIDIA_H100``)."""
    device = jax.devices()[0]
    if device.platform != "gpu":
        return device.platform
    kind = "".join(c if c.isalnum() else "_" for c in device.device_kind).strip("_")
    return f"{device.platform}_{kind}"


def results_path(name: str, platform_: str | None = None) -> str:
    """``benchmarks/results/<name>_<platform>.md``, by default with :func:`platform_name`."""
    return os.path.join(HERE, "results", f"{name}_{platform_ or platform_name()}.md")


def arg_parser(doc: str, out_help: str = "markdown output file") -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first line, with the flags ``--quick`` and ``--out``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    parser.add_argument("--out", default=None, help=out_help)
    return parser


def write_report(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` (making its folder) and says so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}", flush=True)


def now() -> str:
    """The local time with its UTC offset, to the second (ISO 8601)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def report_header(title: str, quick: bool, *lines: str) -> str:
    """``# title`` (marked as a smoke run with ``quick``), the date, then one bullet a line."""
    suffix = " (--quick smoke run)" if quick else ""
    return "\n".join([f"# {title}{suffix}", "", f"- date: {now()}", *(f"- {x}" for x in lines), ""])


def environment_lines() -> list[str]:
    """Header lines: versions, the library's revision, the devices, the host."""
    import jax_scg

    device = jax.devices()[0]
    return [
        f"jax {jax.__version__}, jaxlib {jax.lib.__version__}, jax_scg {jax_scg.__version__}",
        f"jax_scg revision: {library_revision()}",
        f"device: {device.platform} / {device.device_kind} ({jax.device_count()} device(s))",
        f"host: {platform.platform()}, python {platform.python_version()}, {os.cpu_count()} CPU(s)",
    ]


def environment_header(title: str, quick: bool) -> str:
    """:func:`report_header` with the :func:`environment_lines`."""
    return report_header(title, quick, *environment_lines())


def device_description() -> str:
    """The first device, as ``platform / device kind``."""
    device = jax.devices()[0]
    return f"{device.platform} / {device.device_kind}"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def library_revision() -> str:
    """The git commit of the checkout that holds jax_scg, and whether jax_scg/ has edits."""
    import jax_scg

    root = os.path.dirname(os.path.dirname(os.path.abspath(jax_scg.__file__)))

    def git(*args):
        return subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout

    try:
        commit = git("log", "-1", "--format=%h %s").strip()
        edited = git("status", "--porcelain", "--", "jax_scg").splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    if not edited:
        return f"{commit} (jax_scg/ unmodified)"
    files = ", ".join(line[3:] for line in edited)
    return f"{commit} + uncommitted edits to {files}"


def ratio_cell(ratio: float, low: float, high: float, spec: str = ".2f") -> str:
    """``ratio [low, high]``, each number formatted with ``spec``."""
    return f"{ratio:{spec}} [{low:{spec}}, {high:{spec}}]"


def timing_ratio(t: TimingSummary, spec: str = ".2f") -> str:
    """A :class:`TimingSummary`'s ratio with the interquartile range of the per-round ratios."""
    return ratio_cell(t.ratio, t.paired_q25, t.paired_q75, spec)


def fmt(value, spec: str = ".3g", missing: str = "–") -> str:
    """``format(value, spec)``, or ``missing`` for None and NaN."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return missing
    return format(value, spec)


def micro(seconds: float | None) -> str:
    """Seconds as microseconds (4 significant digits), or "not run"."""
    return "not run" if seconds is None else f"{seconds * 1e6:.4g}"


def mib(x: float) -> str:
    """Bytes as MiB with two decimals; "n/a" where XLA reports nothing."""
    return "n/a" if not np.isfinite(x) else f"{x / 2**20:.2f}"


def met(ok: bool, yes: str = "met", no: str = "**missed**") -> str:
    """Whether a target is met, in words."""
    return yes if ok else no


# ------------------------------------------------------------------------------------------
# Monte Carlo statistics


class Moments:
    """Running mean and sum of squared deviations per coordinate (Chan et al.'s merge), in
    float64, of batches of estimates (one estimate per row)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, batch):
        batch = np.asarray(batch, np.float64).reshape(batch.shape[0], -1)
        n_b, mean_b = batch.shape[0], batch.mean(0)
        m2_b = ((batch - mean_b) ** 2).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta**2 * self.n * n_b / n
        self.n = n

    @property
    def var(self):
        return self.m2 / (self.n - 1)

    @property
    def se(self):
        return np.sqrt(self.var / self.n)


def estimate(run, params, n, seed, chunk):
    """Moments of ``n`` estimates ``run(params, keys)``, ``chunk`` keys per call."""
    keys = jax.random.split(jax.random.key(seed), n)
    moments = Moments()
    for start in range(0, n, chunk):
        moments.add(jax.block_until_ready(run(params, keys[start : start + chunk])))
    return moments


def ratio_interval(u, v, z=1.96):
    """mean(u) / mean(v) and its delta-method 95% interval, u and v paired per estimate."""
    r = u.mean() / v.mean()
    c = np.cov(u, v)
    se = np.sqrt(max(c[0, 0] - 2 * r * c[0, 1] + r * r * c[1, 1], 0.0) / len(u)) / v.mean()
    return r, r - z * se, r + z * se
