"""Variance of jax_scg's estimators, in one run: ``python benchmarks/variance.py [--quick]``.

Models: the REBAR toy E[(b - t)²] with b ~ Bernoulli(σ(θ)) for t = 0.45 and 0.499, and a
16-step policy rollout in ``lax.scan`` (with a hand-set and a learned value baseline). For
each estimator (and baseline): the Monte Carlo mean against the exact gradient (bias in
standard errors: the relaxations are biased by design), the variance of one estimate (mean
over coordinates), its ratio to the plain score-function estimator, and the time per
estimate (jit + vmap, median of repeats). The sigmoid belief net on binarised scikit-learn
digits and the comparison with NumPyro's TraceGraph_ELBO (``variance_peers.py``) follow in
the same run and the same file. Writes ``benchmarks/results/variance_<platform>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import variance_peers
from harness import markdown_table
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D


def rebar(t):
    def loss(theta, key, estimator="score_function", baseline=None, name=None):
        dist = D.Bernoulli(logits=theta)
        b = scg.sample(key, dist, estimator=estimator, baseline=baseline, name=name)
        return (b - t) ** 2

    def exact(theta):
        p = jax.nn.sigmoid(theta)
        return p * (1 - t) ** 2 + (1 - p) * t**2

    return loss, exact, jnp.asarray(0.0)


STEPS = 16


def rollout(theta, key, estimator="score_function", baseline=None):
    def body(state, k):
        value = 0.8 * state + 1.0 if baseline == "value" else None
        a = scg.sample(
            k, D.Bernoulli(logits=theta[0] + theta[1] * state), estimator=estimator, baseline=value
        )
        return 0.7 * state + a, (a - 0.5 * state) ** 2

    return lax.scan(body, 0.0, jax.random.split(key, STEPS))[1].sum()


def rollout_exact_gradient(theta, n=200_000):
    """The policy's gradient from a large score-function run with a value baseline."""
    keys = jax.random.split(jax.random.key(12345), n)
    grads = jax.jit(jax.vmap(scg.grad(functools.partial(rollout, baseline="value")), (None, 0)))
    g = np.asarray(grads(theta, keys))
    return g.mean(0), g.std(0) / np.sqrt(n)


def learn_rebar_control(loss, theta, steps):
    """REBAR's (η, log λ) fitted by descending the squared gradient estimate (its variance)."""

    def squared(control, key):
        estimator = scg.estimators.rebar(control[0], jnp.exp(control[1]))
        return scg.grad(functools.partial(loss, estimator=estimator))(theta, key) ** 2

    optimiser = optax.adam(0.1)

    @jax.jit
    def step(control, opt_state, key):
        g = jax.vmap(jax.grad(squared), (None, 0))(control, jax.random.split(key, 256)).mean(0)
        updates, opt_state = optimiser.update(g, opt_state)
        return optax.apply_updates(control, updates), opt_state

    control = jnp.array([1.0, jnp.log(0.5)])
    opt_state = optimiser.init(control)
    for key in jax.random.split(jax.random.key(7), steps):
        control, opt_state = step(control, opt_state, key)
    return scg.estimators.rebar(control[0], jnp.exp(control[1])), control


def learn_critic(theta, steps):
    """A linear value baseline V(s) = ψ0 + ψ1 s fitted with ``critic_argnums``."""
    grads = jax.vmap(scg.grad(rollout_with_critic, critic_argnums=1), (None, None, 0))
    optimiser = optax.adam(0.05)

    @jax.jit
    def step(psi, opt_state, key):
        _, g_critic = grads(theta, psi, jax.random.split(key, 256))
        updates, opt_state = optimiser.update(g_critic.mean(0), opt_state)
        return optax.apply_updates(psi, updates), opt_state

    psi = jnp.zeros(2)
    opt_state = optimiser.init(psi)
    for key in jax.random.split(jax.random.key(8), steps):
        psi, opt_state = step(psi, opt_state, key)
    return psi


def rollout_with_critic(theta, psi, key):
    def body(state, k):
        a = scg.sample(
            k, D.Bernoulli(logits=theta[0] + theta[1] * state), baseline=psi[0] + psi[1] * state
        )
        return 0.7 * state + a, (a - 0.5 * state) ** 2

    return lax.scan(body, 0.0, jax.random.split(key, STEPS))[1].sum()


def estimate(fn, theta, n, seed):
    keys = jax.random.split(jax.random.key(seed), n)
    run = jax.jit(jax.vmap(fn, in_axes=(None, 0)))
    jax.block_until_ready(run(theta, keys))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        out = jax.block_until_ready(run(theta, keys))
        times.append(time.perf_counter() - start)
    return np.asarray(out, np.float64).reshape(n, -1), float(np.median(times)) / n


def rows_for(name, variants, exact, theta, n, seed):
    rows, reference = [], None
    for label, fn in variants:
        g, seconds = estimate(fn, theta, n, seed)
        mean, se = g.mean(0), g.std(0, ddof=1) / np.sqrt(n)
        variance = float(g.var(0, ddof=1).mean())
        reference = variance if reference is None else reference
        # Zero-variance estimators: compare up to float rounding instead of dividing by 0.
        floor = 1e-6 * (1.0 + np.abs(exact))
        bias_z = float(np.max(np.abs(mean - exact) / np.maximum(se, floor)))
        rows.append(
            [
                name,
                label,
                " ".join(f"{m:+.4f}" for m in mean),
                " ".join(f"{e:+.4f}" for e in np.atleast_1d(exact)),
                f"{bias_z:.1f}",
                f"{variance:.3g}",
                f"{variance / reference:.3f}",
                f"{seconds * 1e6:.3f}",
            ]
        )
    return rows


PEERS_PYTHON = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), ".venv-peers", "bin", "python"
)


def storchastic_section(quick: bool) -> list:
    """Storchastic's rows, run in its own environment (``bash benchmarks/setup_peers.sh``)."""
    if not os.path.exists(PEERS_PYTHON):
        return [
            "Not run: no peers environment. `bash benchmarks/setup_peers.sh` creates "
            "`benchmarks/.venv-peers` (torch 2.13.0 CPU, storchastic 0.3.7); then rerun."
        ]
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "storchastic_rows.py")
    proc = subprocess.run(
        [PEERS_PYTHON, script, *(["--quick"] if quick else [])],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return [f"Storchastic run failed: {proc.stderr[-2000:]}"]
    result = json.loads(proc.stdout)
    header = ["model", "estimator", "mean", "exact", "max |bias|/SE", "variance", "n", "note"]
    rows = [
        [
            r["model"],
            r["estimator"] + (" (patched)" if r.get("patch") else ""),
            " ".join(f"{m:+.4f}" for m in r["mean"]),
            " ".join(f"{e:+.4f}" for e in r.get("exact", [])),
            f"{r.get('max_abs_bias_over_se', float('nan')):.1f}",
            f"{r['variance']:.3g}",
            str(r.get("n", "")),
            (r.get("patch") or r.get("note") or "")[:160],
        ]
        for r in result["rows"]
    ]
    notes = [
        f"- storchastic {result['storchastic']}, torch {result['torch']}; per-sample "
        "estimates from an independent plate of copies of θ (see storchastic_rows.py). "
        "Timings are left out: they varied 10× between identical runs.",
        *(
            f"- failed as shipped: {f['model']} / {f['estimator']}: {f['error'][:120]}"
            for f in result.get("failures", [])
        ),
        *(
            f"- skipped: {k['model']}: {', '.join(k['estimators'])}: {k['reason'][:200]}"
            for k in result.get("skipped", [])
        ),
    ]
    return [*notes, "", markdown_table(header, rows)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    n = 2_000 if args.quick else 100_000
    rows = []
    for t in (0.45, 0.499):
        loss, exact, theta = rebar(t)
        variants = [
            ("score function", scg.grad(loss)),
            ("score function, baseline 0.25", scg.grad(functools.partial(loss, baseline=0.25))),
            (
                "leave-one-out, 4 samples (per 4-sample estimate)",
                scg.baselines.leave_one_out(functools.partial(loss, name="b"), 4),
            ),
            (
                "straight-through (biased)",
                scg.grad(functools.partial(loss, estimator="straight_through")),
            ),
            (
                "Gumbel-softmax τ=1 (biased)",
                scg.grad(functools.partial(loss, estimator="gumbel_softmax")),
            ),
            ("enumerate (exact sum)", scg.grad(functools.partial(loss, estimator="enumerate"))),
            ("ARM (2 evaluations)", scg.grad(functools.partial(loss, estimator="arm"))),
            ("DisARM (2 evaluations)", scg.grad(functools.partial(loss, estimator="disarm"))),
            (
                "REBAR η=1, λ=0.5 (3 evaluations)",
                scg.grad(functools.partial(loss, estimator="rebar")),
            ),
        ]
        learned, control = learn_rebar_control(loss, theta, 20 if args.quick else 300)
        variants.append(
            (
                f"REBAR learned η={float(control[0]):.2f}, λ={float(jnp.exp(control[1])):.2f}",
                scg.grad(functools.partial(loss, estimator=learned)),
            )
        )
        exact_grad = np.atleast_1d(np.asarray(jax.grad(exact)(theta)))
        rows += rows_for(f"REBAR toy t={t}", variants, exact_grad, theta, n, seed=1)
    theta = jnp.array([0.2, -0.5])
    reference, _ = rollout_exact_gradient(theta, n=20_000 if args.quick else 400_000)
    psi = learn_critic(theta, 20 if args.quick else 300)
    variants = [
        ("score function (reward-to-go)", scg.grad(rollout)),
        ("value baseline V(s)", scg.grad(functools.partial(rollout, baseline="value"))),
        (
            "learned value baseline (critic_argnums)",
            scg.grad(lambda t, k: rollout_with_critic(t, psi, k)),
        ),
        (
            "straight-through (biased)",
            scg.grad(functools.partial(rollout, estimator="straight_through")),
        ),
    ]
    rows += rows_for(f"policy rollout, {STEPS} steps", variants, reference, theta, n, seed=2)
    header = [
        "model",
        "estimator",
        "mean",
        "exact",
        "max |bias|/SE",
        "variance",
        "ratio to score function",
        "µs / estimate",
    ]
    device = jax.devices()[0]
    lines = [
        "# jax_scg estimator variance",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- jax {jax.__version__}, device {device.platform} / {device.device_kind}",
        f"- {n} estimates per row; the policy's reference gradient is itself a Monte Carlo mean"
        " (400k estimates with a value baseline), so its bias column has that noise too.",
        "",
        markdown_table(header, rows),
    ]
    # The sigmoid belief net on digits and the ELBO model, against NumPyro, in the same run.
    lines += ["", "## Sigmoid belief net on digits, and NumPyro", ""]
    lines += variance_peers.report(args.quick).splitlines()[2:]
    lines += ["", "## Storchastic (PyTorch), the same REBAR toy and policy rollout", ""]
    lines += storchastic_section(args.quick)
    text = "\n".join(lines)
    print(text)
    out = args.out or os.path.join(
        os.path.dirname(__file__), "results", f"variance_{device.platform}.md"
    )
    with open(out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
