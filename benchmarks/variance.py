"""Variance of jax_scg's estimators, in one run: ``python benchmarks/variance.py [--quick]``.

Models: the REBAR toy E[(b - t)²] with b ~ Bernoulli(σ(θ)) for t = 0.45 and 0.499, and a
16-step policy rollout in ``lax.scan`` (with a hand-set and a learned value baseline). For
each estimator (and baseline): the Monte Carlo mean against the exact gradient (bias in
standard errors: the relaxations are biased by design), the variance of one estimate (mean
over coordinates), its ratio to the plain score-function estimator, and the time per
estimate (jit + vmap, median of repeats). Then, in the same run and the same file: the
10-way Categorical toy with costs per estimate and 95% intervals (RELAX with an untrained and
a learned c_φ among its rows) and the unordered set estimator's exact variance by
enumeration; the sigmoid belief net on binarised scikit-learn digits against NumPyro's
TraceGraph_ELBO (``variance_peers.py``); Storchastic's rows (``storchastic_rows.py``, run in
the peers' environment); the sigmoid belief net at equal cost against Storchastic; and the
goals of issue 13 with their verdicts. Writes ``benchmarks/results/variance_<platform>.md``.

This file is the runner: the command line, :func:`main`, the measuring of the toys and the
rollout (the learned controls and critic, :func:`estimate`, :func:`rows_for`,
:func:`categorical_rows`) and :func:`ablation_section` (reads ``sbn_ablation.py``'s table).
The sigmoid belief net's rows and its section against Storchastic are in
``variance_sbn.py``; running Storchastic, the unordered set's exact variance, and the
Storchastic and goals sections are in ``variance_storchastic.py``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import time

import harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
import peer_models
import variance_peers
from harness import markdown_table
from models import (
    CAT_TARGET,
    CAT_THETA,
    CAT_WEIGHTS,
    CATEGORIES,
    POLICY_STEPS,
    POLICY_THETA,
    REBAR_TARGETS,
    categorical_exact,
    categorical_toy,
    policy_rollout,
    policy_rollout_reference,
    policy_rollout_with_critic,
    rebar_toy,
)
from variance_sbn import mean_of, sbn_rows, sbn_section
from variance_storchastic import (
    SBN_IMAGES,
    goals,
    run_storchastic,
    storchastic_section,
    unordered_set_exact,
)

import jax_scg as scg


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


def learn_relax_control(loss, c, phi, theta, steps, seed=10):
    """RELAX's φ fitted by descending the squared gradient estimate E[|ĝ|²] (its variance),
    on keys from ``seed`` (not a seed of the measured rows)."""

    def squared(phi, key):
        estimator = scg.estimators.relax(c, phi)
        return jnp.sum(scg.grad(functools.partial(loss, estimator=estimator))(theta, key) ** 2)

    optimiser = optax.adam(0.02)

    @jax.jit
    def step(phi, opt_state, key):
        g = jax.vmap(jax.grad(squared), (None, 0))(phi, jax.random.split(key, 256))
        updates, opt_state = optimiser.update(jax.tree.map(lambda x: x.mean(0), g), opt_state)
        return optax.apply_updates(phi, updates), opt_state

    opt_state = optimiser.init(phi)
    for key in jax.random.split(jax.random.key(seed), steps):
        phi, opt_state = step(phi, opt_state, key)
    return scg.estimators.relax(c, phi)


def learn_critic(theta, steps):
    """A linear value baseline V(s) = ψ0 + ψ1 s fitted with ``critic_argnums``."""
    grads = jax.vmap(scg.grad(policy_rollout_with_critic, critic_argnums=1), (None, None, 0))
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


def rows_for(name, variants, exact, theta, n, seed, deviations=None):
    """Table rows; ``deviations`` (a dict), if given, receives each row's per-estimate squared
    deviation (mean over coordinates), for paired intervals on variance ratios."""
    rows, reference = [], None
    for label, fn in variants:
        g, seconds = estimate(fn, theta, n, seed)
        mean, se = g.mean(0), g.std(0, ddof=1) / np.sqrt(n)
        if deviations is not None:
            deviations[label] = ((g - mean) ** 2).mean(1) * n / (n - 1)
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


def categorical_relax_control():
    """RELAX's c_φ for the Categorical toy: a scaled relaxed cost plus a small MLP of z.

    ``z`` is the Gumbel-perturbed logit vector (10,); the relaxed cost is the toy's cost at
    softmax(z / λ); the MLP (10 → 8 → 1, tanh) starts at zero output.
    """

    def c(phi, z, logits):
        soft = jax.nn.softmax(z / jnp.exp(phi["log_temp"]), axis=-1)
        relaxed = phi["scale"] * (soft @ CAT_WEIGHTS - CAT_TARGET) ** 2
        hidden = jnp.tanh(z @ phi["w1"] + phi["b1"])
        return relaxed + hidden @ phi["w2"]

    phi = {
        "scale": jnp.asarray(1.0),
        "log_temp": jnp.log(0.5),
        "w1": 0.1 * jax.random.normal(jax.random.key(11), (CATEGORIES, 8)),
        "b1": jnp.zeros(8),
        "w2": jnp.zeros(8),
    }
    return c, phi


def categorical_rows(n, seed=3, relax_steps=1000):
    """The 10-way Categorical toy: variance, cost and ratios with 95% intervals."""
    loss = categorical_toy
    k = 4
    c, phi = categorical_relax_control()
    # φ learned on keys from seed 13, apart from the measured rows' keys (seed 3).
    relax_learned = learn_relax_control(loss, c, phi, CAT_THETA, relax_steps, seed=13)
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
        (
            "RELAX, untrained c_φ (relaxed cost + MLP of z; c_φ at z and z̃)",
            scg.grad(functools.partial(loss, estimator=scg.estimators.relax(c, phi))),
            1,
            2,
        ),
        (
            f"RELAX learned c_φ ({relax_steps} Adam steps on E[|ĝ|²], keys apart)",
            scg.grad(functools.partial(loss, estimator=relax_learned)),
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
    summary = {
        label: {
            "variance": u.mean(),
            "se": u.std(ddof=1) / np.sqrt(len(u)),
            "cost": cost,
            "cv": cv,
            "bias": bias,
        }
        for label, cost, cv, bias, u in results
    }
    reference = results[0][4]
    rows = []
    for label, cost, cv, bias, u in results:
        r = harness.ratio_interval(u, reference)
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
    parser = harness.arg_parser(__doc__)
    parser.add_argument(
        "--storchastic-json",
        default=None,
        help="the JSON of an earlier `storchastic_rows.py --sbn-inputs` run (its date is "
        "reported) instead of running it here",
    )
    args = parser.parse_args(argv)
    n = 2_000 if args.quick else 100_000
    rows = []
    relax_goal = []
    for t in REBAR_TARGETS:
        loss, exact, theta = rebar_toy(t)
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
        rebar_learned = (
            f"REBAR learned η={float(control[0]):.2f}, λ={float(jnp.exp(control[1])):.2f}"
        )
        variants.append((rebar_learned, scg.grad(functools.partial(loss, estimator=learned))))
        c, phi = relax_control(t)
        variants.append(
            (
                "RELAX, untrained c_φ (relaxed cost + MLP of z)",
                scg.grad(functools.partial(loss, estimator=scg.estimators.relax(c, phi))),
            )
        )
        relax_learned = learn_relax_control(
            loss, *relax_control(t), theta, 20 if args.quick else 300
        )
        variants.append(
            (
                "RELAX learned c_φ (relaxed cost + MLP of z)",
                scg.grad(functools.partial(loss, estimator=relax_learned)),
            )
        )
        exact_grad = np.atleast_1d(np.asarray(jax.grad(exact)(theta)))
        u = {}
        rows += rows_for(f"REBAR toy t={t}", variants, exact_grad, theta, n, seed=1, deviations=u)
        relax = u["RELAX learned c_φ (relaxed cost + MLP of z)"]
        for rebar_label in ("REBAR η=1, λ=0.5 (3 evaluations)", rebar_learned):
            r = harness.ratio_interval(relax, u[rebar_label])
            relax_goal.append((t, rebar_label, relax.mean(), u[rebar_label].mean(), r, r[2] < 1))
    theta = jnp.array(POLICY_THETA)
    reference, _ = policy_rollout_reference(theta, n=20_000 if args.quick else 400_000)
    psi = learn_critic(theta, 20 if args.quick else 300)
    variants = [
        ("score function (reward-to-go)", scg.grad(policy_rollout)),
        ("value baseline V(s)", scg.grad(functools.partial(policy_rollout, baseline="value"))),
        (
            "learned value baseline (critic_argnums)",
            scg.grad(lambda t, k: policy_rollout_with_critic(t, psi, k)),
        ),
        (
            "straight-through (biased)",
            scg.grad(functools.partial(policy_rollout, estimator="straight_through")),
        ),
    ]
    rows += rows_for(f"policy rollout, {POLICY_STEPS} steps", variants, reference, theta, n, seed=2)
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
        harness.report_header(
            "jax_scg estimator variance",
            False,
            f"jax {jax.__version__}, device {harness.device_description()}",
            f"{n} estimates per row; the policy's reference gradient is itself a Monte Carlo mean"
            " (400k estimates with a value baseline), so its bias column has that noise too.",
        ),
        markdown_table(header, rows),
    ]
    cat_header, cat_rows, cat_summary = categorical_rows(n, relax_steps=50 if args.quick else 1000)
    us_exact = unordered_set_exact(4)
    lines += [
        "",
        f"## {CATEGORIES}-way Categorical toy",
        "",
        f"E[(x·w − t)²], x ~ OneHotCategorical(logits = linspace(−1, 1, {CATEGORIES})), "
        f"w_i = i/{CATEGORIES - 1}, t = {CAT_TARGET}; exact gradient by enumeration. Cost: "
        "evaluations of the cost function per estimate (control-variate evaluations apart; "
        "REBAR's control variate is the cost at relaxed points, RELAX's c_φ is evaluated at z "
        "and z̃ while the cost runs at the sample only). Variance: mean over "
        "coordinates. Intervals: delta method on the per-estimate squared deviations, paired "
        "with the score-function row (same keys); at equal cost the score function's variance "
        "is divided by the row's cost (the mean of that many independent estimates). RELAX's "
        "c_φ: a scaled relaxed cost (softmax(z/λ)) plus a 10→8→1 tanh MLP of z; the learned "
        "φ descends E[|ĝ|²] on 256 keys per Adam step, keys split from seed 13 (the measured "
        "rows use seed 3). The unordered set's exact variance (all "
        f"{math.comb(CATEGORIES, 4)} sets of 4): {us_exact[1]['paper'][1]:.5g}.",
        "",
        markdown_table(cat_header, cat_rows),
    ]
    # The sigmoid belief net on digits and the ELBO model, against NumPyro, in the same run.
    lines += ["", "## Sigmoid belief net on digits, and NumPyro", ""]
    lines += variance_peers.report(args.quick).splitlines()[2:]
    lines += ["", "## Sigmoid belief net: why NumPyro's variance is lower (ablation)", ""]
    lines += ablation_section(device.platform)
    jax_sbn, sbn_n, sbn_warmup = sbn_rows(args.quick)
    if args.storchastic_json:
        with open(args.storchastic_json) as f:
            result = json.load(f)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            inputs = os.path.join(tmp, "sbn_inputs.npz")
            np.savez(inputs, **peer_models.torch_inputs([], SBN_IMAGES))
            result = run_storchastic(args.quick, inputs)
    lines += ["", "## Storchastic (PyTorch): the REBAR toy, the Categorical toy, the rollout", ""]
    lines += storchastic_section(result, cat_summary, us_exact)
    sbn_lines, sbn_goal = sbn_section(jax_sbn, sbn_n, sbn_warmup, result)
    lines += ["", "## Sigmoid belief net at equal cost: jax_scg and Storchastic", ""]
    lines += sbn_lines
    lines += ["", "## Goals of issue 13, measured in this run", ""]
    lines += goals(result, cat_summary, us_exact, sbn_goal, relax_goal)
    text = "\n".join(lines)
    print(text)
    harness.write_report(args.out or harness.results_path("variance", device.platform), text + "\n")


if __name__ == "__main__":
    main()
