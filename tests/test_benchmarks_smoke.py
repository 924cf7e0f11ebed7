"""Smoke tests: the benchmarks run end to end at tiny sizes."""

import math
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


def _table(text, header):
    """The rows (lists of cells) of the markdown table whose header line starts ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_rewrite_time_quick_runs(tmp_path):
    text = run_quick("rewrite_time.py", str(tmp_path / "r.md"))
    rows = _table(text, "| program | size | equations |")
    assert [(r[0], r[1]) for r in rows] == [
        ("lm_scan", "layers 1"), ("lm_unrolled", "tokens 2"), ("mlp", "layers 4"),
        ("mlp", "layers 16"),
    ]  # fmt: skip
    eqns = [int(r[2]) for r in rows]
    assert eqns[2] < eqns[3] and all(n > 50 for n in eqns)  # deeper MLP, more equations
    for r in rows:
        for cell in r[5:7]:
            if cell != "= plain":
                assert math.isfinite(float(cell.split()[0])) and float(cell.split()[0]) > 0
    profile = _table(text, "| program | equations | trace program |")
    assert len(profile) == 4 and all(c.endswith("%") for r in profile for c in r[2:])


def test_compile_time_quick_runs(tmp_path):
    text = run_quick("compile_time.py", str(tmp_path / "c.md"))
    rows = _table(text, "| sites | scg compile ms |")
    assert [r[0] for r in rows] == ["10", "25"]
    for r in rows:
        ratio = float(r[3].split()[0])
        assert math.isfinite(ratio) and ratio > 0
        scg_ops, hand_ops = (int(x) for x in r[4].split(" / "))
        assert scg_ops == hand_ops  # the same compiled program size as hand-written DiCE


def test_rewrite_time_baselines_match_scg_grad():
    """The hand-written DiCE of the benchmark's LM gives scg.grad's estimate, key by key."""
    import jax
    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import models_large as m

    key = jax.random.key(3)
    for program, params in [(m.lm_scan, m.lm_params(1, 4)), (m.lm_unrolled, m.lm_params(1, 3))]:
        got = jax.jit(m.program_grad(program, "scg"))(params, key)
        want = jax.jit(m.program_grad(program, "dice"))(params, key)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_sbn_profile_quick_runs(tmp_path):
    """One JAX worker (no torch): timing, a classified profile and the HLO table."""
    out = str(tmp_path / "s.md")
    argv = ["--quick", "--no-torch", "--parts", "speed,profile,hlo", "--out", out]
    script = os.path.join(ROOT, "benchmarks", "sbn_profile.py")
    proc = subprocess.run([sys.executable, script, *argv], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out) as f:
        text = f.read()
    assert _table(text, "| system | compared |") == [
        ["hand-written JAX, vmap(grad)", "per key", "0"]
    ]
    speed = _table(text, "| system | est/s P=16 |")
    assert float(speed[0][1].replace(",", "")) > 0
    profile = dict((r[0], r[1]) for r in _table(text, "| µs per estimate, 1 core |"))
    assert float(profile["matmul"]) > 0 and float(profile["random bits + sampling"]) > 0
    hlo = _table(text, "| system (P=16) | HLO ops |")
    assert int(hlo[0][1]) > 100 and int(hlo[0][3]) == 3  # vmap(grad): 3 batched dots


def test_sbn_forms_quick_runs(tmp_path):
    """The SBN in jax_scg's, hand-written DiCE and score forms and NumPyro's: the same
    gradients key by key where the credit is the same, second derivatives apart."""
    text = run_quick("sbn_forms.py", str(tmp_path / "f.md"))
    rows = {r[0]: r for r in _table(text, "| system | est/s / NumPyro, P=8 [IQR] |")}
    assert list(rows) == [
        "1. jax_scg", "2. hand DiCE, jax_scg's credit", "3. hand DiCE, per-image credit",
        "4. hand score form, jax_scg's credit", "5. hand score form, per-image credit",
        "6. NumPyro TraceGraph_ELBO",
    ]  # fmt: skip
    for r in rows.values():
        assert float(r[1].split()[0]) > 0 and int(r[3]) > 100
    for name, same in [("2.", "1"), ("4.", "1"), ("5.", "3")]:
        row = next(r for k, r in rows.items() if k.startswith(name))
        assert row[4].split()[0] == same and float(row[4].split("(")[1].rstrip(")")) < 1e-5
    for name in ("4.", "5."):  # first order only: Hessian-vector products differ from DiCE's
        row = next(r for k, r in rows.items() if k.startswith(name))
        assert float(row[5].split()[0]) > 1e-3


def test_rewrite_time_takes_sizes(tmp_path):
    out = str(tmp_path / "r.md")
    script = os.path.join(ROOT, "benchmarks", "rewrite_time.py")
    argv = ["--sizes", "mlp=3", "--repeats", "1", "--out", out, "--plot", str(tmp_path / "p.png")]
    proc = subprocess.run([sys.executable, script, *argv], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(out) as f:
        rows = _table(f.read(), "| program | size | equations |")
    assert [(r[0], r[1]) for r in rows] == [("mlp", "layers 3")]


def test_gpu_configuration_reaches_a_million_estimates_per_call():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import peers

    cfg = peers.GPU
    assert cfg.batch["rollout"] >= 10**6
    assert set(cfg.batch) == set(cfg.estimates) == set(peers.peer_models.MODELS)
    assert all(cfg.estimates[m] % cfg.batch[m] == 0 for m in cfg.batch)


def test_gpu_section_replaces_its_part_of_results(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_section

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "gpu_env.txt").write_text(
        "NVIDIA H100 80GB HBM3, 81559 MiB, 580.1\njax 0.11.2 [CudaDevice(id=0)]\npeers exit 0\n"
    )
    (folder / "peers_gpu.md").write_text(
        "# Peer benchmarks\n\npreamble\n\n### 1. chain\n\n"
        "| system | n |\n|---|---|\n| jax_scg | 4 |\n"
    )
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## Loops\n\nkept text\n")
    for _ in range(2):  # a second run replaces the section instead of adding one
        gpu_section.main([str(folder), "--results", str(results)])
    text = results.read_text()
    assert text.count(gpu_section.START) == 1 and text.count(gpu_section.END) == 1
    assert text.startswith("# Results\n\n## Loops\n\nkept text\n")
    assert "## GPU: NVIDIA H100 80GB HBM3" in text and "- peers exit 0" in text
    assert "##### 1. chain\n\n| system | n |" in text and "| jax_scg | 4 |" in text
    assert "preamble" not in text
    assert "Not written: the step failed or ran out of time (`lola_gpu.md` missing)." in text


def _models_cases():
    """(name, jax_scg program, hand-written surrogate, θ): models.py's models and the SBN."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import functools

    import jax
    import jax.numpy as jnp
    import models as m
    import models_elbo

    rollout_theta = jnp.array(m.ROLLOUT_THETA)
    x, flat, unravel = models_elbo.sbn_inputs(4)
    partial = functools.partial
    return [
        ("bits", m.bits_model, m.bits_handwritten, jnp.linspace(-0.5, 0.5, 64)),
        *[
            (f"rollout {hand.__name__}", partial(m.rollout_model, steps=6), partial(hand, steps=6),
             rollout_theta)
            for hand in (m.rollout_handwritten, m.rollout_handwritten_carried,
                         m.rollout_fissioned)
        ],
        ("rollout carried reward", partial(m.rollout_carried, steps=6),
         partial(m.rollout_handwritten, steps=6), rollout_theta),
        ("small sbn", m.small_sbn_model, m.small_sbn_handwritten,
         m.small_sbn_params(jax.random.key(3))),
        *[
            (name, make(5, False), make(5, True), jnp.array([0.2, -0.4]))
            for name, make in m.SCALING_PROGRAMS.items()
        ],
        ("sbn", partial(models_elbo.sbn_elbo, x=x, unravel=unravel),
         partial(models_elbo.sbn_handwritten, x=x, unravel=unravel), flat),
    ]  # fmt: skip


def test_models_handwritten_equals_scg_grad_key_by_key():
    """Every hand-written form in models.py and models_elbo.py gives scg.grad's estimate of
    its model, per key; the SBN's transpose-free and broadcast-product forms give the matmul
    form's."""
    import functools

    import jax
    import numpy as np

    import jax_scg as scg

    keys = jax.random.split(jax.random.key(8), 4)
    for name, program, hand, theta in _models_cases():
        got = jax.jit(jax.vmap(scg.grad(program), (None, 0)))(theta, keys)
        want = jax.jit(jax.vmap(jax.grad(hand), (None, 0)))(theta, keys)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            scale = max(1.0, float(np.max(np.abs(b))))
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale, err_msg=name)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import models_elbo as m

    x, flat, unravel = m.sbn_inputs(4)
    matmul = jax.vmap(scg.grad(functools.partial(m.sbn_elbo, x=x, unravel=unravel)), (None, 0))
    for other in (
        functools.partial(m.sbn_elbo_transpose_free, x=x, unravel=unravel),
        functools.partial(m.sbn_elbo, x=x, unravel=unravel, matmul=False),
    ):
        got = jax.vmap(scg.grad(other), (None, 0))(flat, keys)
        np.testing.assert_allclose(got, matmul(flat, keys), rtol=1e-5, atol=1e-5)
