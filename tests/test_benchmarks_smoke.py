"""Smoke tests: the benchmarks run end to end at tiny sizes."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quick(script_name, out):
    """Runs ``benchmarks/<script_name> --quick --out out``; returns the written text."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script_name), "--quick", "--out", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out) as f:
        return f.read()


def test_core_overhead_quick_runs(tmp_path):
    text = run_quick("core_overhead.py", str(tmp_path / "x.md"))
    assert "| model | keys | runtime ratio [IQR] |" in text
    assert "### Part 2" in text


def test_variance_table_quick_runs(tmp_path):
    text = run_quick("variance.py", str(tmp_path / "v.md"))
    assert "| REBAR toy t=0.45 | score function |" in text
    assert "NumPyro TraceGraph_ELBO, plate over points" in text
    assert "B: sigmoid belief net" in text


def test_loops_quick_runs(tmp_path):
    text = run_quick("loops.py", str(tmp_path / "loops.md"))
    assert "| model | derivative | scg / fissioned [IQR] | scg / naive [IQR] |" in text
    assert "| program | coordinate | mean ± SE batched | mean ± SE per-episode |" in text
    assert "| hand-written credit | max rel. diff |" in text


def test_lola_quick_runs(tmp_path):
    text = run_quick("lola.py", str(tmp_path / "lola.md"))
    assert "| look-aheads | jax_scg / hand, best [IQR] |" in text
    assert "### Equality checks" in text


def test_lola_memory_quick_runs(tmp_path):
    """Reads XLA's dumped buffer assignment and live ranges of both compiled updates."""
    text = run_quick("lola_memory.py", str(tmp_path / "m.md"))
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    scg_arrays, hand_arrays = (int(n) for n in cells[4].split(" / "))
    assert scg_arrays > 0 and hand_arrays > 0  # the episodes' arrays were found at the peak
    assert all(float(x) > 0 for x in cells[1].split(" / "))
