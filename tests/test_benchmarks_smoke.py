"""Smoke tests: the benchmarks run end to end at tiny sizes."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_core_overhead_quick_runs(tmp_path):
    out = tmp_path / "x.md"
    script = os.path.join(ROOT, "benchmarks", "core_overhead.py")
    proc = subprocess.run(
        [sys.executable, script, "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = out.read_text()
    assert "| model | keys | runtime ratio [IQR] |" in text
    assert "### Part 2" in text


def test_variance_table_quick_runs(tmp_path):
    out = tmp_path / "v.md"
    script = os.path.join(ROOT, "benchmarks", "variance.py")
    proc = subprocess.run(
        [sys.executable, script, "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "| REBAR toy t=0.45 | score function |" in out.read_text()
