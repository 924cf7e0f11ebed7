"""Many hosts, on one machine: the same estimates from several processes after
``jax.distributed.initialize`` (gloo collectives between forced CPU devices, a coordinator on
localhost) as from one process with as many devices, key by key.

``tests/multihost_worker.py`` runs the program; here it runs as 2 processes of 2 and of 4 CPU
devices, and as one process of 4 and of 8 devices (the reference). Per-key estimates and
Hessians (``jax.jit(jax.vmap(scg.grad))`` over a global key array) agree bitwise for the
discrete models and to float rounding for the one with a Normal site (as in
``test_devices.py``); the
data-parallel program (``scg.grad`` inside ``jax.shard_map``, ``pmean``/``psum`` across the
devices of both processes) agrees to float rounding: gloo sums the devices' values in another
order than one process does. No wall-clock limit short enough to fail a slow machine: the
processes are bounded by the worker's generous ``TIMEOUT`` only so that a hung coordinator
cannot hang the suite, and the others are killed when one fails.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from multihost_worker import KEYS_PER_DEVICE, STEPS, launch

WORKER = str(Path(__file__).with_name("multihost_worker.py"))
ROOT = Path(__file__).resolve().parent.parent
PER_KEY = [
    f"{kind}_{name}"
    for kind in ("estimates", "hessians")
    for name in ("graph5", "mdp_stacked", "mixed")
]
SPANNING = ["step_grads", "steps", "step_hessian"]


def one_process(devices, out):
    """The reference, started now (it runs while the processes of the other run do)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, WORKER, "--processes", "1", "--devices", str(devices), "--out", out]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize("devices", [2, 4])
def test_two_processes_agree_with_one_process_key_by_key(tmp_path, devices):
    processes = 2
    many, one = str(tmp_path / "many.npz"), str(tmp_path / "one.npz")
    reference = one_process(processes * devices, one)
    try:
        outputs = launch(processes, devices, many)
    finally:
        output = reference.communicate()[0]
    assert reference.returncode == 0, output[-4000:]
    assert all(f"process {i} of 2 done" in o for i, o in enumerate(outputs)), outputs
    many, one = np.load(many), np.load(one)
    assert sorted(many.files) == sorted(PER_KEY + SPANNING)
    n_keys = KEYS_PER_DEVICE * processes * devices
    for name in PER_KEY:  # (a) and (c): one estimate per key, keys on every process's devices
        assert many[name].shape[0] == n_keys, (name, many[name].shape)
        if name.endswith("mixed"):  # a Normal draw's transcendentals: equal to float rounding
            np.testing.assert_allclose(many[name], one[name], rtol=1e-6, atol=1e-6, err_msg=name)
        else:  # discrete sites: bitwise
            np.testing.assert_array_equal(many[name], one[name], err_msg=name)
    assert np.all(np.isfinite(many["estimates_mixed"]))
    for name in SPANNING:  # (b) and (c): one estimate spanning the devices of both processes
        np.testing.assert_allclose(many[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    steps = many["steps"]
    assert steps.shape == (STEPS + 1, 4)
    assert np.all(np.abs(np.diff(steps, axis=0)).max(axis=1) > 1e-3)  # every step moved
    hessian = many["step_hessian"]
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-6)
    assert np.abs(hessian[:3, :3] - np.diag(np.diag(hessian[:3, :3]))).max() > 1e-3  # cross terms


def test_multihost_benchmark_quick_runs(tmp_path):
    """``benchmarks/multihost.py``: 2 processes × 2 devices against one process of 4."""
    out = tmp_path / "multihost.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "multihost.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = out.read_text()
    assert "| model | keys | 2 × 2 devices, estimates/s | 1 × 4 devices, estimates/s |" in text
    diffs = [float(d) for d in re.findall(r"\| ([0-9.e+-]+) \|$", text, flags=re.M)]
    assert diffs and max(diffs) == 0.0, text  # per-key estimates: bitwise the same


def test_importing_the_worker_leaves_jax_as_it_was():
    """Pytest imports every file under tests/ for doctests: the worker's CPU devices,
    collectives and ``jax.distributed`` are for its own processes only."""
    before = jax.config.values.get("jax_num_cpu_devices")
    import multihost_worker  # noqa: F401

    assert jax.config.values.get("jax_num_cpu_devices") == before
    assert jax.process_count() == 1
    assert "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")
