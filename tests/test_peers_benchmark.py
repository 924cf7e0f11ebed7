"""The peer benchmark suite: its exact gradients, its hand-written surrogates, its report.

``benchmarks/models.py`` and ``benchmarks/models_elbo.py`` define the models,
``benchmarks/peer_models.py`` lists the peer suite's and ``benchmarks/peers.py`` runs them
(its report: ``peers_report.py``); all live outside the package, so the benchmarks
directory goes on ``sys.path`` here.
"""

import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import harness  # noqa: E402
import models  # noqa: E402
import models_elbo  # noqa: E402
import peer_models  # noqa: E402
import peers  # noqa: E402
import peers_report as report  # noqa: E402

import jax_scg as scg  # noqa: E402

# ------------------------------------------------------------------------------------------
# Exact gradients against brute-force enumeration (probabilities written with jax.nn)


def rollout_enumerated(theta, steps):
    """E[Σ_t r_t] of model 3 as a sum over all 2^steps action sequences (one per row)."""
    actions = np.asarray(list(itertools.product((0, 1), repeat=steps)))
    state, prob, cost = np.zeros(len(actions)), 1.0, 0.0
    for t in range(steps):
        p_up = jax.nn.sigmoid(theta[0] + theta[1] * (state / 7.0 - 0.5))
        prob = prob * jnp.where(actions[:, t] == 1, p_up, 1.0 - p_up)
        state = np.clip(state + 2 * actions[:, t] - 1, 0, 7)  # the states follow the actions
        cost = cost + (state / 7.0 - 0.6) ** 2
    return jnp.sum(prob * cost)


@pytest.mark.parametrize("theta", [(0.3, -1.0), (-0.8, 2.0)])
def test_rollout_dynamic_programming_equals_enumeration(theta):
    theta = jnp.asarray(theta, jnp.float32)
    exact = jax.jit(jax.value_and_grad(models.walk_exact), static_argnums=1)(theta, 6)
    enumerated = jax.jit(jax.value_and_grad(rollout_enumerated), static_argnums=1)(theta, 6)
    np.testing.assert_allclose(exact[0], enumerated[0], rtol=1e-5)
    np.testing.assert_allclose(exact[1], enumerated[1], rtol=1e-5, atol=1e-6)


def elbo_enumerated(phi, data):
    """Σ_z q(z) [log p(z) + log p(x | z) − log q(z)] over all 2^N joint values of z."""
    z = jnp.asarray(list(itertools.product((0.0, 1.0), repeat=data.shape[0])))
    q1 = jax.nn.sigmoid(phi)
    q = jnp.where(z == 1.0, q1, 1.0 - q1)
    log_p = jnp.log(0.5) + jax.scipy.stats.norm.logpdf(data, 2.0 * z - 1.0, 1.0)
    integrand = jnp.sum(log_p - jnp.log(q), axis=1)
    return jnp.sum(jnp.prod(q, axis=1) * integrand)


@pytest.mark.parametrize("phi_seed", [None, 3])
def test_elbo_exact_gradient_equals_enumeration(phi_seed):
    model = peer_models.elbo(8)
    data = models_elbo.elbo_data(8)
    phi = model.theta if phi_seed is None else jax.random.normal(jax.random.key(phi_seed), (8,))
    exact = jax.jit(jax.grad(model.objective))(phi)
    enumerated = jax.jit(jax.grad(elbo_enumerated))(phi, data)
    np.testing.assert_allclose(exact, enumerated, rtol=1e-4, atol=1e-5)


def test_elbo_data_for_256_points_is_the_data_of_test_elbo():
    import test_elbo

    np.testing.assert_array_equal(models_elbo.elbo_data(256), test_elbo.DATA)


# ------------------------------------------------------------------------------------------
# Hand-written surrogates against jax_scg, key by key; jax_scg's mean against exact

SMALL = {"chain": None, "elbo": 16, "rollout": 8, "sbn": 4}


#: LLVM optimisation off: compiles the sigmoid belief net in about a second instead of five;
#: the computed values are the same program's.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def batched_jit(fn):
    return jax.jit(jax.vmap(fn, in_axes=(None, 0)), compiler_options=FAST_COMPILE)


@pytest.mark.parametrize("name", peer_models.MODELS)
def test_handwritten_equals_jax_scg_key_by_key(name):
    model = peer_models.make(name, SMALL[name])
    keys = jax.random.split(jax.random.key(5), 16)
    values, grads = batched_jit(scg.value_and_grad(model.scg_loss))(model.theta, keys)
    hand_values, hand_grads = batched_jit(jax.value_and_grad(model.handwritten))(model.theta, keys)
    scale = max(1.0, float(jnp.max(jnp.abs(grads))))
    np.testing.assert_allclose(hand_grads, grads, rtol=0, atol=1e-5 * scale)
    assert float(jnp.max(jnp.abs(grads))) > 0  # not trivially equal
    # The surrogate's value is the loss's value (every magic box is 1).
    np.testing.assert_allclose(hand_values, values, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["chain", "elbo", "rollout"])
def test_jax_scg_mean_matches_exact(name):
    model = peer_models.make(name, SMALL[name])
    keys = jax.random.split(jax.random.key(17), 20_000)
    grads = np.asarray(batched_jit(scg.grad(model.scg_loss))(model.theta, keys), np.float64)
    exact = model.exact_grad()
    se = grads.std(0, ddof=1) / np.sqrt(len(grads))
    z = np.abs(grads.mean(0) - exact) / se
    # 5 standard errors: a Bonferroni bound far beyond chance for these few coordinates.
    assert z.max() < 5.0, (z.max(), grads.mean(0), exact)


# ------------------------------------------------------------------------------------------
# The whole script, at tiny sizes


def test_quick_run_writes_tables_plots_and_inputs(tmp_path):
    env = dict(os.environ)
    # Compile faster (LLVM optimisation off): the smoke run checks that everything runs.
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    out = tmp_path / "RESULTS.md"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "peers.py"), "--quick",
               "--no-torch", "--out", str(out), "--plots", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = out.read_text()
    for heading in [
        "# Peer benchmarks",
        "- machine: ",
        "- jax_scg revision: ",
        "## Models",
        "### 1. chain (Figure 1, graph 5)",
        "### 2. elbo (256 Bernoulli latents)",
        "### 3. rollout (T = 64)",
        "### 4. sbn (64 digits, 2408 parameters)",
        "| system | n | max \\|z\\| [threshold] | variance | variance / jax_scg |",
        "| jax_scg | 2,048 |",
        "| NumPyro TraceGraph_ELBO |",
        "## Targets",
        "| HLO ops jax_scg == hand-written | chain |",
        "## Scaling",
        "### rollout: µs per estimate vs T",
        "### elbo: µs per estimate vs N",
        "The PyTorch peers were skipped (--no-torch).",
    ]:
        assert heading in text, heading
    for name in ("throughput", "scaling_T", "scaling_N", "variance"):
        path = tmp_path / f"peers_{name}.png"
        assert path.exists() and path.stat().st_size > 1000, path
    with np.load(tmp_path / "peers_inputs.npz") as npz:
        keys = set(npz.files)
    expected = {"chain_theta", "chain_x0", "rollout_theta", "sbn_x", "sbn_theta"}
    expected |= {f"sbn_shape_{n}" for n in ("V1", "V2", "W1", "W2", "b1", "b2", "c1", "c2")}
    expected |= {f"elbo_{k}_{n}" for k in ("x", "phi") for n in (64, 256, 1024, 65536)}
    assert expected <= keys, expected - keys


# ------------------------------------------------------------------------------------------
# Merging the torch side's JSON: the statistics of a fabricated output


def fake_row(system, model, mean, var, n, speed, **extra):
    return {"model": model, "system": system, "n": n, "mean": list(mean), "var": list(var),
            "estimates_per_s": speed, "batch": 256, "seconds_per_call_median": 256 / speed,
            "calls_timed": 5, "setup_s": 0.5, "note": "fabricated", **extra}  # fmt: skip


def fake_torch_output():
    exact = np.array([1.0, -2.0, 0.5])
    var = np.array([4.0, 1.0, 9.0])
    n = 100
    mean = exact.copy()
    mean[1] += 2.0 * np.sqrt(var[1] / n)  # z = 2 on coordinate 1, 0 elsewhere
    scaling = [
        {"axis": "N", "model": "elbo", "system": "Storchastic", "size": size,
         "seconds_per_estimate": 1e-6 * size, "batch": report.batch_for(size)}
        for size in (64, 256, 1024, 4096)
    ]  # fmt: skip
    result = {
        "meta": {"torch": "2.13.0+cpu", "pyro": "1.9.2", "storchastic": "0.3.7",
                 "torch_threads": 2, "python": "3.11",
                 "scaling_stopped": [{"model": "elbo", "system": "Storchastic", "size": 16384,
                                      "reason": "too slow"}]},
        "rows": [fake_row("Pyro TraceGraph_ELBO", "elbo", mean, var, n, 500.0),
                 fake_row("Storchastic", "elbo", exact, 2 * var, n, 2000.0)],
        "scaling": scaling,
        "failures": [{"model": "sbn", "system": "Pyro JitTraceGraph_ELBO",
                      "error": "RuntimeError: boom"}],
    }  # fmt: skip
    return result, exact, var


def test_torch_json_merges_into_the_model_table():
    result, exact, var = fake_torch_output()
    parsed = peers.parse_torch_output("progress line\n" + json.dumps(result) + "\n")
    torch_rows = report.rows_from_torch(parsed)
    reference = report.Row("elbo", "jax_scg", 1000, exact.copy(), var / 2, 1000.0, 1024, 0.4,
                          None, 215)  # fmt: skip
    table = report.model_table_rows([torch_rows[1], torch_rows[0], reference], exact)
    assert [row[0] for row in table] == ["jax_scg", "Pyro TraceGraph_ELBO", "Storchastic"]
    threshold = report.bonferroni_threshold(3)
    assert table[0] == ["jax_scg", "1,000", f"0.00 [{threshold:.2f}]", "2.333", "1.000",
                        "1,000", "1", "0.40", "215"]  # fmt: skip
    assert table[1] == ["Pyro TraceGraph_ELBO", "100", f"2.00 [{threshold:.2f}]", "4.667",
                        "2.000", "500", "0.5", "setup 0.50", "–"]  # fmt: skip
    assert table[2][2] == f"0.00 [{threshold:.2f}]" and table[2][4] == "4.000"
    assert 2.93 < threshold < 2.94  # two-sided, alpha 0.01 over 3 coordinates
    biased = report.Row("elbo", "Storchastic", 100, exact + 0.1 * np.sqrt(var), var, None)
    assert report.model_table_rows([biased], exact)[0][2] == f"1.00 [{threshold:.2f}]"
    biased.mean = exact + 0.3 * np.sqrt(var)
    cell = report.model_table_rows([biased], exact)[0][2]
    assert cell == f"3.00 **biased?** [{threshold:.2f}]"


def test_torch_json_merges_into_scaling_failures_and_targets():
    result, exact, var = fake_torch_output()
    outcome = report.TorchOutcome(result, "run", 12.0)
    jax_points = [
        {"axis": "N", "model": "elbo", "system": "jax_scg", "size": size,
         "seconds_per_estimate": 2e-9 * size, "batch": report.batch_for(size)}
        for size in (64, 256, 1024)
    ]  # fmt: skip
    headers, table = report.scaling_table(jax_points + result["scaling"], "N")
    assert headers == ["N", "keys per call B", "jax_scg µs/estimate", "Storchastic µs/estimate"]
    assert table[0] == [64, 1024, "0.128", "64"]
    assert table[3] == [4096, 256, "not run", "4096"]
    assert table[-1] == ["log-log slope (sizes)", "", "1.00 (256–1024)", "1.00 (256–4096)"]
    section = report.failures_section(outcome)
    assert "| sbn | Pyro JitTraceGraph_ELBO | RuntimeError: boom |" in section
    assert "stopped at size 16384: too slow" in section

    model = peer_models.elbo(3)
    rows = [
        report.Row("elbo", report.HAND, 1000, exact, var, 990.0, 1024, 0.4, None, 214),
        report.Row("elbo", "jax_scg", 1000, exact, var, 1000.0, 1024, 0.4, None, 215),
        report.Row("elbo", report.NUMPYRO, 1000, exact, 2 * var, 1250.0, 1024, 0.4, None, 562),
    ]
    times = {report.HAND: np.full(5, 1.0), "jax_scg": np.full(5, 1.01), report.NUMPYRO: np.ones(5)}
    timing = harness.summarize(times, baseline=report.HAND)
    results = [report.ModelResult(model, rows, exact, timing, 0.0)]
    all_rows = {"elbo": rows + report.rows_from_torch(result)}
    targets = {
        (t[0], t[1]): t[2:]
        for t in report.target_rows(results, all_rows, jax_points + result["scaling"])
    }
    assert targets[("HLO ops jax_scg == hand-written", "elbo")] == ["215 / 214", "**missed**"]
    assert targets[("median runtime jax_scg / hand-written ≤ 1.02", "elbo")][1] == "met"
    assert targets[("estimates/s jax_scg ≥ NumPyro", "elbo")] == ["ratio 0.800", "**missed**"]
    assert targets[("variance jax_scg ≤ NumPyro", "elbo")] == ["ratio 0.500", "met"]
    unbiased = targets[("unbiased: every system's max |z| vs exact ≤ threshold", "elbo")]
    assert unbiased[0].startswith("worst 2.00 (Pyro TraceGraph_ELBO") and unbiased[1] == "met"
    slope = targets[("time per estimate vs N: slope ≈ 1 (±0.15)", "elbo, Storchastic")]
    assert slope == ["1.00 over 256–4096", "met"]


def test_missing_torch_environment_says_how_to_make_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(peers, "TORCH_PYTHON", str(tmp_path / "no-venv" / "python"))
    outcome = peers.run_torch(str(tmp_path / "inputs.npz"), quick=True, timeout_s=10)
    assert outcome.result["rows"] == [] and outcome.status == peers.MISSING_VENV
    assert "bash benchmarks/setup_peers.sh" in capsys.readouterr().out
    assert "bash benchmarks/setup_peers.sh" in report.failures_section(outcome)
