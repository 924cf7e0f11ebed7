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


def relax_control(t):
    """RELAX's c_φ for the REBAR toy: a scaled relaxed cost plus a small MLP of z."""

    def c(phi, z, logits):
        relaxed = phi["scale"] * (jax.nn.sigmoid(z / jnp.exp(phi["log_temp"])) - t) ** 2
        hidden = jnp.tanh(z[..., None] * phi["w1"] + phi["b1"])
        return relaxed + hidden @ phi["w2"]

    phi = {
        "scale": jnp.asarray(1.0),
        "log_temp": jnp.log(0.5),
        "w1": 0.1 * jax.random.normal(jax.random.key(9), (8,)),
        "b1": jnp.zeros(8),
        "w2": jnp.zeros(8),
    }
    return c, phi


def learn_relax_control(loss, t, theta, steps):
    """RELAX's φ fitted by descending the squared gradient estimate (its variance)."""
    c, phi = relax_control(t)

    def squared(phi, key):
        estimator = scg.estimators.relax(c, phi)
        return scg.grad(functools.partial(loss, estimator=estimator))(theta, key) ** 2

    optimiser = optax.adam(0.02)

    @jax.jit
    def step(phi, opt_state, key):
        g = jax.vmap(jax.grad(squared), (None, 0))(phi, jax.random.split(key, 256))
        updates, opt_state = optimiser.update(jax.tree.map(lambda x: x.mean(0), g), opt_state)
        return optax.apply_updates(phi, updates), opt_state

    opt_state = optimiser.init(phi)
    for key in jax.random.split(jax.random.key(10), steps):
        phi, opt_state = step(phi, opt_state, key)
    return scg.estimators.relax(c, phi)


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


CATEGORIES = 10
CAT_WEIGHTS = jnp.arange(CATEGORIES) / (CATEGORIES - 1.0)
CAT_TARGET = 0.45
CAT_THETA = jnp.linspace(-1.0, 1.0, CATEGORIES)


def categorical_toy(theta, key, estimator="score_function", name=None):
    """E[(x·w − t)²], x ~ OneHotCategorical(logits=θ), 10 categories, w_i = i/9, t = 0.45."""
    x = scg.sample(key, D.OneHotCategorical(logits=theta), estimator=estimator, name=name)
    return (x @ CAT_WEIGHTS - CAT_TARGET) ** 2


def categorical_exact(theta):
    """The exact gradient by enumerating the 10 categories."""
    return jax.grad(lambda t: jax.nn.softmax(t) @ (CAT_WEIGHTS - CAT_TARGET) ** 2)(theta)


def mean_of(grad, m):
    """The mean of ``m`` independent estimates (the score function at cost m)."""
    return lambda theta, key: jax.vmap(grad, (None, 0))(theta, jax.random.split(key, m)).mean(0)


def ratio_interval(u, v, z=1.96):
    """mean(u) / mean(v) and its delta-method 95% interval, u and v paired per estimate."""
    r = u.mean() / v.mean()
    c = np.cov(u, v)
    se = np.sqrt(max(c[0, 0] - 2 * r * c[0, 1] + r * r * c[1, 1], 0.0) / len(u)) / v.mean()
    return r, r - z * se, r + z * se


def categorical_rows(n, seed=3):
    """The 10-way Categorical toy: variance, cost and ratios with 95% intervals."""
    loss = categorical_toy
    k = 4
    variants = [  # (label, estimator, model cost evaluations, control-variate evaluations)
        ("score function", scg.grad(loss), 1, 0),
        (f"score function, mean of {k}", mean_of(scg.grad(loss), k), k, 0),
        (f"score function, mean of {CATEGORIES}", mean_of(scg.grad(loss), CATEGORIES), 10, 0),
        (
            f"leave-one-out, {k} samples",
            scg.baselines.leave_one_out(functools.partial(loss, name="x"), k),
            k,
            0,
        ),
        (
            f"unordered set, k={k}",
            scg.grad(functools.partial(loss, estimator=scg.estimators.unordered_set(k))),
            k,
            0,
        ),
        (
            "IndeCateR",
            scg.grad(functools.partial(loss, estimator=scg.estimators.indecater())),
            CATEGORIES,
            0,
        ),
        (
            "REBAR η=1, λ=0.5 (costs at b and two relaxed points)",
            scg.grad(functools.partial(loss, estimator=scg.estimators.rebar())),
            1,
            2,
        ),
        ("enumerate (exact sum)", scg.grad(functools.partial(loss, estimator="enumerate")), 10, 0),
    ]
    exact = np.asarray(categorical_exact(CAT_THETA), np.float64)
    results = []
    for label, fn, cost, cv in variants:
        g, _ = estimate(fn, CAT_THETA, n, seed)
        u = ((g - g.mean(0)) ** 2).mean(1) * n / (n - 1)  # per estimate: its share of the variance
        se = g.std(0, ddof=1) / np.sqrt(n)
        bias = np.max(np.abs(g.mean(0) - exact) / np.maximum(se, 1e-6 * (1 + np.abs(exact))))
        results.append((label, cost, cv, float(bias), u))
    summary = {label: (u.mean(), u.std(ddof=1) / np.sqrt(len(u))) for label, *_, u in results}
    reference = results[0][4]
    rows = []
    for label, cost, cv, bias, u in results:
        r = ratio_interval(u, reference)
        equal = [cost * x for x in r]  # the score function averaged over `cost` estimates
        rows.append(
            [
                f"{CATEGORIES}-way Categorical toy",
                label,
                str(cost),
                str(cv),
                f"{bias:.1f}",
                f"{u.mean():.3g}",
                f"{r[0]:.3g} [{r[1]:.3g}, {r[2]:.3g}]",
                f"{equal[0]:.3g} [{equal[1]:.3g}, {equal[2]:.3g}]",
            ]
        )
    header = [
        "model",
        "estimator",
        "cost evaluations / estimate",
        "control-variate evaluations",
        "max |bias|/SE",
        "variance",
        "ratio to score function [95%]",
        "ratio to score function at equal cost [95%]",
    ]
    return header, rows, summary


PEERS_PYTHON = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), ".venv-peers", "bin", "python"
)


# jax_scg row and Storchastic row of the same estimator, at the same cost.
SAME_ESTIMATOR = [
    ("score function", "ScoreFunction (plain REINFORCE)"),
    (
        "leave-one-out, 4 samples",
        "ScoreFunction, baseline_factory='batch_average', n_samples=4 (per 4-sample estimate)",
    ),
    ("unordered set, k=4", "UnorderedSetEstimator, k=4"),
]


def storchastic_section(quick: bool, jax_categorical=None) -> list:
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
    jax_categorical = jax_categorical or {}
    by_name = {(r["model"], r["estimator"]): r for r in result["rows"]}
    for ours, theirs in SAME_ESTIMATOR:
        peer = by_name.get((f"{CATEGORIES}-way Categorical toy", theirs))
        if peer is None or ours not in jax_categorical or "variance_se" not in peer:
            continue
        (a, sa), (b, sb) = jax_categorical[ours], (peer["variance"], peer["variance_se"])
        r = a / b
        half = 1.96 * r * np.sqrt((sa / a) ** 2 + (sb / b) ** 2)  # independent runs
        notes.append(
            f"- {CATEGORIES}-way Categorical toy, same estimator and cost: jax_scg '{ours}' / "
            f"Storchastic '{theirs}' variance ratio {r:.3g} [{r - half:.3g}, {r + half:.3g}] "
            "(95%, delta method, independent runs)"
        )
    return [*notes, "", markdown_table(header, rows)]


def ablation_section(platform: str) -> list:
    """The last ``sbn_ablation.py`` run's table (a separate script: it takes minutes)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    path = os.path.join(path, f"sbn_ablation_{platform}.md")
    if not os.path.exists(path):
        return ["Not run: `python benchmarks/sbn_ablation.py` writes it."]
    with open(path) as f:
        body = f.read().splitlines()[2:]
    return ["From `python benchmarks/sbn_ablation.py` (its own date below):", "", *body]


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
        c, phi = relax_control(t)
        variants.append(
            (
                "RELAX, untrained c_φ (relaxed cost + MLP of z)",
                scg.grad(functools.partial(loss, estimator=scg.estimators.relax(c, phi))),
            )
        )
        relax_learned = learn_relax_control(loss, t, theta, 20 if args.quick else 300)
        variants.append(
            (
                "RELAX learned c_φ (relaxed cost + MLP of z)",
                scg.grad(functools.partial(loss, estimator=relax_learned)),
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
    cat_header, cat_rows, cat_summary = categorical_rows(n)
    lines += [
        "",
        f"## {CATEGORIES}-way Categorical toy",
        "",
        f"E[(x·w − t)²], x ~ OneHotCategorical(logits = linspace(−1, 1, {CATEGORIES})), "
        f"w_i = i/{CATEGORIES - 1}, t = {CAT_TARGET}; exact gradient by enumeration. Cost: "
        "evaluations of the cost function per estimate (control-variate evaluations apart; "
        "REBAR's control variate is the cost at relaxed points). Variance: mean over "
        "coordinates. Intervals: delta method on the per-estimate squared deviations, paired "
        "with the score-function row (same keys); at equal cost the score function's variance "
        "is divided by the row's cost (the mean of that many independent estimates).",
        "",
        markdown_table(cat_header, cat_rows),
    ]
    # The sigmoid belief net on digits and the ELBO model, against NumPyro, in the same run.
    lines += ["", "## Sigmoid belief net on digits, and NumPyro", ""]
    lines += variance_peers.report(args.quick).splitlines()[2:]
    lines += ["", "## Sigmoid belief net: why NumPyro's variance is lower (ablation)", ""]
    lines += ablation_section(device.platform)
    lines += ["", "## Storchastic (PyTorch): the REBAR toy, the Categorical toy, the rollout", ""]
    lines += storchastic_section(args.quick, cat_summary)
    text = "\n".join(lines)
    print(text)
    out = args.out or os.path.join(
        os.path.dirname(__file__), "results", f"variance_{device.platform}.md"
    )
    with open(out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
