"""The four PNGs of ``peers.py``'s report, drawn with matplotlib (Agg backend).

:func:`write_plots` writes ``peers_throughput.png`` and ``peers_variance.png`` (bars per model
and system, :func:`grouped_bars`) and ``peers_scaling_T.png`` and ``peers_scaling_N.png``
(seconds per estimate against size, one log-log line per system, :func:`scaling_plot`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from peers_report import REFERENCE, SYSTEM_ORDER, find_row, scaling_series


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
