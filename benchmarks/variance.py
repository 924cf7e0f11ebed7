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
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import subprocess
import tempfile
import time

import harness
import jax
import jax.numpy as jnp
import models
import numpy as np
import optax
import peer_models
import variance_peers
from harness import markdown_table
from jax import lax
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


def mean_of(grad, m):
    """The mean of ``m`` independent estimates (the score function at cost m)."""
    return lambda theta, key: jax.vmap(grad, (None, 0))(theta, jax.random.split(key, m)).mean(0)


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


def _without_replacement(p, members, removed=()):
    """P(the first len(members) draws without replacement from the categories other than
    ``removed`` are ``members``, in any order): a sum over the orderings (float64)."""
    total = 1.0 - sum(p[r] for r in removed)
    out = 0.0
    for order in itertools.permutations(members):
        prob, left = 1.0, total
        for m in order:
            prob *= p[m] / left
            left -= p[m]
        out += prob
    return out


def _quadrature(points=400, power=20):
    """Nodes v and weights dv on (0, 1): Gauss-Legendre in u with v = u^power."""
    nodes, weights = np.polynomial.legendre.leggauss(points)
    u = 0.5 * (nodes + 1.0)
    return u**power, 0.5 * weights * power * u ** (power - 1)


_QUADRATURE = _quadrature()


def _gumbel_integral(p, members, powers):
    """∫_0^1 Π_s (1 − v^{p_s / r})^{powers_s} dv, r = 1 − Σ_s p_s (Gauss-Legendre, v = u^20).

    With every power 1 it is the probability of drawing ``members`` first (Kool et al.'s
    integral form); a member with power 0 is left out of the set, as for the leave-one-out
    ratios. Used here for the ratio Storchastic 0.3.7 computes (one member with power −1).
    """
    v, dv = _QUADRATURE
    r = 1.0 - p[list(members)].sum()
    terms = np.ones_like(v)
    for m, power in zip(members, powers):
        terms = terms * (1.0 - v ** (p[m] / r)) ** power
    return float(terms @ dv)


def unordered_set_exact(k=4):
    """Exact mean and variance of the unordered set estimator on the Categorical toy.

    Sums over all C(10, k) sets with their Gumbel-top-k probabilities (orderings enumerated):
    the estimate of a set S is Σ_s ∇p(s) R(S, s) (f(s) − b(S, s)). Two baselines b:

    - Kool, van Hoof & Welling (2020), eq. of the built-in baseline: b(S, s) = Σ_{s'∈S} p(s')
      R^{D∖s}(S, s') f(s'), R^{D∖s}(S, s') = p^{D∖{s,s'}}(S∖{s,s'}) / p^{D∖s}(S∖{s}) (1 for
      s' = s); what jax_scg's ``unordered_set`` implements;
    - as Storchastic 0.3.7's UnorderedSetEstimator computes it (read off its estimates key by
      key): its second-order ratio for (s, s'), s' ≠ s, removes the integral's factor of s
      twice instead of the factors of s and s' once each, so it does not depend on s'; and the
      baseline of s' weighs f(s) p(s) with the ratio indexed (s, s'): b(S, s') = p(s') f(s')
      + Σ_{s≠s'} p(s) f(s) ρ(S, s), ρ(S, s) = I(S with s's power −1) / I(S∖{s}).

    Returns (exact gradient, {form: (mean, variance summed-over-coordinates / 10)}).
    """
    p = np.exp(np.linspace(-1.0, 1.0, CATEGORIES))
    p /= p.sum()
    f = (np.arange(CATEGORIES) / (CATEGORIES - 1.0) - CAT_TARGET) ** 2
    exact = p * (f - p @ f)
    eye = np.eye(CATEGORIES)
    prob, paper, storch = [], [], []
    worst = 0.0
    for S in itertools.combinations(range(CATEGORIES), k):
        p_set = _without_replacement(p, S)
        leave = {s: _without_replacement(p, [m for m in S if m != s], (s,)) for s in S}
        # Check the integral form against the orderings (it is used for Storchastic's ratio).
        for i, s in enumerate(S):
            integral = _gumbel_integral(p, S, [0 if j == i else 1 for j in range(k)])
            worst = max(worst, abs(integral / _gumbel_integral(p, S, [1] * k) - leave[s] / p_set))
        g_paper, g_storch = np.zeros(CATEGORIES), np.zeros(CATEGORIES)
        rho = {
            s: _gumbel_integral(p, S, [-1 if j == i else 1 for j in range(k)])
            / _gumbel_integral(p, S, [0 if j == i else 1 for j in range(k)])
            for i, s in enumerate(S)
        }
        for s in S:
            ratio = leave[s] / p_set
            b_paper = p[s] * f[s] + sum(
                p[t]
                * f[t]
                * _without_replacement(p, [m for m in S if m not in (s, t)], (s, t))
                / leave[s]
                for t in S
                if t != s
            )
            b_storch = p[s] * f[s] + sum(p[t] * f[t] * rho[t] for t in S if t != s)
            slope = p[s] * (eye[s] - p) * ratio
            g_paper += slope * (f[s] - b_paper)
            g_storch += slope * (f[s] - b_storch)
        prob.append(p_set)
        paper.append(g_paper)
        storch.append(g_storch)
    assert worst < 1e-8, worst  # the quadrature reproduces the exact leave-one-out ratios
    prob = np.asarray(prob)
    assert abs(prob.sum() - 1.0) < 1e-12
    out = {}
    for form, g in (("paper", np.asarray(paper)), ("storchastic", np.asarray(storch))):
        mean = prob @ g
        out[form] = (mean, float((prob @ (g - mean) ** 2).mean()))
    return exact, out


SBN_IMAGES = 64


MA_DECAYS = (0.9, 0.99)


def moving_average_estimates(loss, flat, decay, warmup_keys, keys):
    """Score-function estimates with ``scg.baselines.moving_average(decay)``, drawn as a
    training loop would: a ``lax.scan`` over keys carrying the baseline state (θ fixed), the
    baseline of step t the bias-corrected average of the downstream costs of steps before t
    (so each estimate is unbiased given the past); ``warmup_keys`` first, their estimates
    dropped. One evaluation of the ELBO's integrand per step (``grad_and_downstream_costs``:
    the gradient and the costs that update the average from the same draws)."""
    average = scg.baselines.moving_average(decay)

    def step(state, key):
        baselines = average.value(state)
        g, costs = scg.grad_and_downstream_costs(functools.partial(loss, baselines=baselines))(
            flat, key
        )
        return average.update(state, costs), g

    @jax.jit
    def run(warmup_keys, keys):
        shapes = jax.eval_shape(scg.downstream_costs(loss), flat, keys[0])
        state = average.init(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes))
        state, _ = lax.scan(lambda s, k: (step(s, k)[0], None), state, warmup_keys)
        return lax.scan(step, state, keys)[1]

    return np.asarray(run(warmup_keys, keys), np.float64)


def _paired_bias_z(g, reference, guide):
    """Two numbers for estimates ``g`` and ``reference`` on the same keys (the same draws):
    over the guide coordinates (where the score terms are), max of |mean(g − reference)| /
    SE, the mean of the baseline's term, 0 for an unbiased baseline; over the model
    coordinates (no score term, so no baseline's term), max |g − reference| / max
    |reference|, float32 rounding of a differently arranged computation."""
    d = g[:, guide] - reference[:, guide]
    se = d.std(0, ddof=1) / np.sqrt(len(d))
    varies = se > 0
    z = float(np.max(np.abs(d.mean(0))[varies] / se[varies])) if varies.any() else 0.0
    model = ~guide
    rounding = np.abs(g[:, model] - reference[:, model]).max() / np.abs(reference[:, model]).max()
    return z, float(rounding)


def sbn_rows(quick, seed=4, chunk=250):
    """jax_scg on the sigmoid belief net (``peer_models.sbn``) at 1, 4 and 16 evaluations of
    the ELBO's integrand per estimate: per-estimate squared deviations for the intervals."""
    model = peer_models.sbn(SBN_IMAGES)
    loss, flat = model.scg_loss, model.theta
    n = 200 if quick else 10_000
    warmup = 200 if quick else 2_000
    ma_warmup = 50 if quick else 500
    baselines = variance_peers.warmup_baselines(loss, flat, warmup, seed=99, chunk=chunk)
    variants = [  # (label, estimator, cost evaluations per estimate)
        ("score function (detach_log_prob=True)", scg.grad(loss), 1),
        ("score function, mean of 4", mean_of(scg.grad(loss), 4), 4),
        ("leave-one-out, 4 copies", scg.baselines.leave_one_out(loss, 4), 4),
        ("leave-one-out, 16 copies", scg.baselines.leave_one_out(loss, 16), 16),
        (
            f"constant baseline per element (mean downstream cost over {warmup} warm-up keys, "
            "seed 99)",
            scg.grad(functools.partial(loss, baselines=baselines)),
            1,
        ),
    ]
    keys = jax.random.split(jax.random.key(seed), n)
    out, plain = {}, None

    def record(label, g, cost, **extra):
        mean = g.mean(0)
        u = ((g - mean) ** 2).mean(1) * n / (n - 1)
        se = g.std(0, ddof=1) / np.sqrt(n)
        out[label] = {"mean": mean, "se": se, "u": u, "cost": cost, **extra}

    for label, fn, cost in variants:
        run = jax.jit(jax.vmap(fn, in_axes=(None, 0)))
        g = np.concatenate(
            [np.asarray(run(flat, keys[i : i + chunk])) for i in range(0, n, chunk)]
        ).astype(np.float64)
        if plain is None:
            plain = g
        record(label, g, cost)
    # The moving average: warm-up keys from seed 98 (no measured row's seed), then the
    # measured keys of the rows above, one after another.
    warmup_keys = jax.random.split(jax.random.key(98), ma_warmup)
    guide = models.sbn_guide_mask()
    assert guide.shape == flat.shape
    for decay in MA_DECAYS:
        start = time.perf_counter()
        g = moving_average_estimates(loss, flat, decay, warmup_keys, keys)
        seconds = time.perf_counter() - start
        record(
            f"moving-average baseline per element (scg.baselines.moving_average({decay}), "
            f"sequential, {ma_warmup} warm-up steps, seed 98)",
            g,
            1,
            warmup=ma_warmup,
            paired=_paired_bias_z(g, plain, guide),
            guide_coordinates=int(guide.sum()),
            seconds=seconds,
        )
    return out, n, warmup


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


def run_storchastic(quick: bool, sbn_inputs: str):
    """Storchastic's rows (``storchastic_rows.py`` in its own environment, made by
    ``bash benchmarks/setup_peers.sh``): its JSON, or a line saying why there is none."""
    if not os.path.exists(PEERS_PYTHON):
        return (
            "Not run: no peers environment. `bash benchmarks/setup_peers.sh` creates "
            "`benchmarks/.venv-peers` (torch 2.13.0 CPU, storchastic 0.3.7); then rerun."
        )
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "storchastic_rows.py")
    proc = subprocess.run(
        [PEERS_PYTHON, script, "--sbn-inputs", sbn_inputs, *(["--quick"] if quick else [])],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return f"Storchastic run failed: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def independent_ratio(a, sa, b, sb, z=1.96):
    """a / b and its 95% delta-method interval, a and b from independent runs (SEs sa, sb)."""
    r = a / b
    half = z * r * np.sqrt((sa / a) ** 2 + (sb / b) ** 2)
    return r, r - half, r + half


def fmt_ratio(r):
    return harness.ratio_cell(*r, ".3g")


def storchastic_section(result, jax_categorical, us_exact) -> list:
    """Storchastic's rows on the toys and the rollout, and same-estimator comparisons."""
    if isinstance(result, str):
        return [result]
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
        if "exact" in r  # the SBN rows (no exact gradient) have their own table below
    ]
    notes = [
        (
            f"- Storchastic run finished {result['date']}, {result['total_seconds']:.0f} s; "
            if "date" in result
            else "- "
        )
        + f"storchastic {result['storchastic']}, torch {result['torch']}; per-sample "
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
    by_name = {(r["model"], r["estimator"]): r for r in result["rows"]}
    for ours, theirs in SAME_ESTIMATOR:
        peer = by_name.get((f"{CATEGORIES}-way Categorical toy", theirs))
        if peer is None or ours not in jax_categorical or "variance_se" not in peer:
            continue
        mine = jax_categorical[ours]
        r = independent_ratio(mine["variance"], mine["se"], peer["variance"], peer["variance_se"])
        notes.append(
            f"- {CATEGORIES}-way Categorical toy, same estimator and cost: jax_scg '{ours}' / "
            f"Storchastic '{theirs}' variance ratio {fmt_ratio(r)} "
            "(95%, delta method, independent runs)"
        )
    exact, forms = us_exact
    (m_paper, v_paper), (m_storch, v_storch) = forms["paper"], forms["storchastic"]
    worst = int(np.argmax(np.abs(m_storch - exact)))
    notes.append(
        f"- Why 'unordered set, k=4' and 'UnorderedSetEstimator, k=4' differ, computed exactly "
        f"(all {math.comb(CATEGORIES, 4)} sets, probabilities from their orderings; "
        "`unordered_set_exact`): Kool, van Hoof & Welling (2020)'s estimator with its built-in "
        f"baseline, which jax_scg implements, has variance {v_paper:.5g} and mean equal to "
        f"the exact gradient (max |difference| {np.abs(m_paper - exact).max():.1e}); "
        "Storchastic 0.3.7's, as it computes it, has variance "
        f"{v_storch:.5g} (ratio {v_paper / v_storch:.4f}) and is biased: coordinate "
        f"{worst} has mean {m_storch[worst]:+.5f} against {exact[worst]:+.5f} (max |bias| "
        f"{np.abs(m_storch - exact).max():.2g}, "
        f"{np.abs(m_storch - exact).max() / abs(exact[worst]):.1%} of that coordinate). Its "
        "second-order leave-one-out ratio for a pair (s, s') removes the factor of s from "
        "the set-probability integral twice instead of removing the factors of s and s', and "
        "its baseline sums with the pair's indices swapped; its first-order ratios R(S, s) "
        "are right. So the 1.06× is Storchastic's biased baseline, not a jax_scg defect: "
        "jax_scg's unordered set has the paper's variance."
    )
    return [*notes, "", markdown_table(header, rows)]


def best(rows, cost):
    """The lowest-variance row at ``cost`` evaluations per estimate, or None."""
    at = [r for r in rows if r["cost"] == cost]
    return min(at, key=lambda r: r["variance"]) if at else None


def categorical_goal(result, jax_categorical, us_exact) -> list:
    """Best jax_scg against best Storchastic per cost, on the Categorical toy."""
    ours = [{"label": k, **v} for k, v in jax_categorical.items() if v["bias"] < 5]
    theirs = [
        {"label": r["estimator"] + (" (patched)" if r.get("patch") else ""), **r}
        for r in result["rows"]
        if r["model"] == f"{CATEGORIES}-way Categorical toy"
        and "cost" in r
        and r["max_abs_bias_over_se"] < 5
    ]
    for r in theirs:
        r["se"] = r["variance_se"]
    lines = []
    for cost in sorted({r["cost"] for r in theirs}):
        a, b = best(ours, cost), best(theirs, cost)
        if a is None or b is None:
            continue
        if b["variance"] == 0:
            status = "met" if a["variance"] == 0 else "not met"
            text = (
                f"  - cost {cost}: jax_scg '{a['label']}' and Storchastic '{b['label']}': "
                f"both exact (zero variance): {status}"
            )
            lines.append((cost, text, status))
            continue
        r = independent_ratio(a["variance"], a["se"], b["variance"], b["se"])
        line = (
            f"  - cost {cost} (+{a['cv']} / +{b['cv']} control-variate evaluations): jax_scg "
            f"'{a['label']}' {a['variance']:.3g} / Storchastic '{b['label']}' "
            f"{b['variance']:.3g} = {fmt_ratio(r)}: " + ("met" if r[0] <= 1 else "not met")
        )
        status = "met" if r[0] <= 1 else "not met"
        if b["estimator"].startswith("UnorderedSetEstimator") and r[0] > 1:
            exact, forms = us_exact
            bias = np.abs(forms["storchastic"][0] - exact).max()
            second = best([t for t in theirs if t is not b], cost)
            r2 = independent_ratio(a["variance"], a["se"], second["variance"], second["se"])
            line += (
                f" against that row, whose estimate is biased (exact max |bias| {bias:.2g}, "
                "above; its Monte Carlo bias/SE stays under 5 only because it has "
                f"{b['n']} estimates); met against Storchastic's best unbiased row at this "
                f"cost, '{second['label']}': {fmt_ratio(r2)}"
            )
            status = "met against unbiased" if r2[0] <= 1 else "not met"
        lines.append((cost, line, status))
    return lines


STORCH_MA_DECAY = 0.95  # MovingAverageBaseline's default decay, as storchastic_rows.py runs it
SBN_SHARP = "leave-one-out, 16 copies"  # jax_scg's lowest-variance SBN row: the sharp reference


def sbn_section(jax_sbn, n, warmup, result) -> list:
    """The SBN at equal cost: jax_scg's rows and Storchastic's, with the goal's ratios."""
    model = f"sigmoid belief net, {SBN_IMAGES} digits"
    reference = jax_sbn["score function (detach_log_prob=True)"]
    sharp = jax_sbn[SBN_SHARP]
    coordinates = len(reference["mean"])

    def agreement(mean, se, ref):
        # Coordinates that never vary (V1's columns of pixels that are 0 in every image) have
        # SE 0 in both and the same mean: left out.
        both = np.sqrt(se**2 + ref["se"] ** 2)
        varies = both > 0
        return np.max(np.abs(mean - ref["mean"])[varies] / both[varies])

    ours = [
        {
            "system": "jax_scg",
            "label": label,
            "cost": r["cost"],
            "n": n,
            "variance": r["u"].mean(),
            "se": r["u"].std(ddof=1) / np.sqrt(n),
            "z": agreement(r["mean"], r["se"], reference),
            "z_sharp": agreement(r["mean"], r["se"], sharp),
            "warmup": r.get("warmup"),
            "paired": r.get("paired"),
            "guide_coordinates": r.get("guide_coordinates"),
            "seconds": r.get("seconds"),
            "biased": None,
        }
        for label, r in jax_sbn.items()
    ]
    theirs = []
    if not isinstance(result, str):
        theirs = [
            {
                "system": "Storchastic",
                "label": r["estimator"],
                "cost": r["cost"],
                "n": r["n"],
                "variance": r["variance"],
                "se": r["variance_se"],
                "z": agreement(np.asarray(r["mean"]), np.asarray(r["se"]), reference),
                "z_sharp": agreement(np.asarray(r["mean"]), np.asarray(r["se"]), sharp),
                "warmup": r.get("warmup"),
                "biased": r.get("biased"),
            }
            for r in result["rows"]
            if r["model"] == model
        ]
    fixed = [r for r in ours if r["label"].startswith("constant baseline")]
    per_estimate = [r for r in ours if r not in fixed]
    unbiased = [r for r in theirs if not r["biased"]]
    rows, goal = [], []
    for r in ours + theirs:
        peer = best(unbiased, r["cost"])
        if peer is None:
            ratio = "–"
        elif peer is r:
            ratio = "1 (this row)"
        else:
            ratio = fmt_ratio(
                independent_ratio(r["variance"], r["se"], peer["variance"], peer["se"])
            )
        cost = str(r["cost"])
        if r in fixed:
            cost += f" (+{warmup} once)"
        elif r["warmup"]:
            cost += f" (+{r['warmup']} warm-up " + ("steps)" if r in ours else "calls)")
        rows.append(
            [
                r["system"],
                r["label"] + (" (biased)" if r["biased"] else ""),
                cost,
                "0",
                str(r["n"]),
                f"{r['variance']:.4g} ± {1.96 * r['se']:.2g}",
                f"{r['z']:.1f}",
                f"{r['z_sharp']:.1f}",
                ratio,
            ]
        )
    for cost in sorted({r["cost"] for r in theirs}):
        a, b = best(per_estimate, cost), best(unbiased, cost)
        if a is None or b is None:
            continue
        r = independent_ratio(a["variance"], a["se"], b["variance"], b["se"])
        status = "met" if r[0] <= 1 else "not met"
        line = (
            f"  - cost {cost}: jax_scg '{a['label']}' {a['variance']:.4g} / Storchastic "
            f"'{b['label']}' {b['variance']:.4g} = {fmt_ratio(r)}: {status}"
        )
        if status == "not met" and cost == 1 and b["label"].startswith("ScoreFunction (plain"):
            line += (
                " (plain score function against plain score function: the difference is in "
                "what multiplies each score, as in the ablation section above)"
            )
        others = [o for o in per_estimate if o["cost"] == cost and o is not a]
        if cost == 1 and others:
            line += "; jax_scg's other cost-1 rows: " + ", ".join(
                f"'{o['label']}' {o['variance']:.4g}" for o in others
            )
        biased = [t for t in theirs if t["biased"] and t["cost"] == cost]
        if biased:
            c = best(biased, cost)
            r2 = independent_ratio(a["variance"], a["se"], c["variance"], c["se"])
            met2 = r2[0] <= 1
            line += (
                f"; excluded as biased: Storchastic {', '.join(repr(t['label']) for t in biased)}"
                f" ({c['biased']}); against the lowest-variance of them, {c['variance']:.4g}, "
                f"the ratio is {fmt_ratio(r2)}: " + ("met" if met2 else "not met")
            )
            if status == "met" and not met2:
                status = "met against unbiased (moving average)"
        goal.append((cost, line, status))
    for r in fixed:
        peer = best(unbiased, 1)
        if peer:
            ratio = independent_ratio(r["variance"], r["se"], peer["variance"], peer["se"])
            goal.append(
                (
                    None,
                    f"  - apart from the equal-cost comparison: jax_scg '{r['label']}' (1 "
                    f"evaluation per estimate after {warmup} warm-up evaluations once): "
                    f"{r['variance']:.4g}, {fmt_ratio(ratio)} × Storchastic '{peer['label']}'",
                    None,
                )
            )
    moving = [r for r in ours if r["warmup"]]
    summed = [t for t in theirs if "images plate summed" in t["label"]]
    plain = [t for t in theirs if t["label"].startswith("ScoreFunction (plain")]
    summed_text = (
        f": variance {summed[0]['variance']:.4g}, "
        f"{summed[0]['variance'] / plain[0]['variance']:.3g}× the plain row's"
        if summed and plain
        else ""
    )
    check = None if isinstance(result, str) else result.get("sbn_check")
    lines = [
        f"jax_scg: {n} estimates per row, keys split from seed 4 (the same for every row), "
        f"the constant baseline's {warmup} warm-up keys from seed 99. Storchastic: the model "
        "of `torch_peers.storch_sbn` (checked: the plain row gives the same numbers from the "
        "same random stream, max |difference| "
        + (f"{check['max_abs_difference_to_torch_peers_storch_sbn']:.2g})" if check else "not run)")
        + ", with Storchastic's methods for z1 and z2; a method with n_samples=k adds a "
        "sample plate of k, and z2's nests in z1's. Cost: evaluations of the ELBO's integrand "
        "log p(x, z1, z2) − log q(z1, z2 | x) per estimate (no control variates). Variance: "
        f"mean over the {coordinates} coordinates of the per-coordinate variance of one estimate, "
        "± its 95% half-width; no exact gradient exists, so the means are compared with "
        f"jax_scg's score-function row and with its '{SBN_SHARP}' row (the lowest variance, "
        "so the sharper test) instead (max over coordinates of |Δmean| / sqrt(SE₁² + "
        f"SE₂²); about 4 by chance over {coordinates} coordinates). Ratio: to Storchastic's "
        "lowest-variance unbiased row at the same cost, delta method, independent runs.",
        "",
        "Baselines learned from past costs, drawn one estimate after another as in training "
        "(θ fixed; the warm-up estimates are dropped and not counted in the cost, as earlier "
        "training steps would supply them):",
        "",
        "- jax_scg: `scg.baselines.moving_average(decay)`, the bias-corrected running mean of "
        "each element's downstream cost, in a `lax.scan` carrying its state; step t's "
        "baseline is computed from the costs of steps before t, so each estimate is unbiased "
        "given the past. One evaluation per step (`scg.grad_and_downstream_costs`: the "
        "gradient and the costs that update the average, from the same draws). Warm-up keys "
        "from seed 98, then the measured keys above (so the draws are the plain row's, key by "
        "key). Unbiasedness, paired with the plain row on the same draws: max over the "
        + (f"{moving[0]['guide_coordinates']} " if moving else "")
        + "guide coordinates of |mean of (estimate − plain estimate)| / its SE, the mean of the "
        "baseline's term (about 4 by chance), and on the model coordinates, which get no score "
        "term, max |difference| / max |plain estimate| (float32 rounding): "
        + "; ".join(
            f"decay {r['label'].split('moving_average(')[1].split(')')[0]}: "
            f"{r['paired'][0]:.1f} and {r['paired'][1]:.1e} (scan of {r['warmup']} + {n} "
            f"steps, with compilation: {r['seconds']:.1f} s)"
            for r in moving
        )
        + ".",
        "- Storchastic: `ScoreFunction(baseline_factory='moving_average')` (its "
        "MovingAverageBaseline, default decay 0.95): one scalar average per (site, cost node) "
        "of `storch.reduce_plates(cost)`, the cost reduced over every plate, updated with the "
        "current call's cost before it is used, so the current draws enter their own "
        "baseline (biased, as on the REBAR toy). Sequential backward calls on one copy of θ "
        "with the same method objects. With the images plate summed (weight 1, as in the "
        f"other Storchastic rows) the average is of the cost summed over the {SBN_IMAGES} "
        f"images, {SBN_IMAGES}× one image's{summed_text}; with the images plate a mean "
        f"(Storchastic's default weight 1/{SBN_IMAGES}, gradient × {SBN_IMAGES}: the same "
        "estimates for the plain method, max |difference| "
        + (
            f"{check['max_abs_difference_mean_images_plate']:.2g}"
            if check and "max_abs_difference_mean_images_plate" in check
            else "not run"
        )
        + ") it is of the mean over images, and an image's own cost enters its baseline with "
        f"weight (1 − {STORCH_MA_DECAY}) / {SBN_IMAGES}: its score terms are scaled by "
        f"{1 - (1 - STORCH_MA_DECAY) / SBN_IMAGES:.5f} in expectation, a bias of "
        f"{(1 - STORCH_MA_DECAY) / SBN_IMAGES:.2%} (the column of max |Δmean|/SE shows whether "
        "its estimates can detect it).",
        "",
        markdown_table(
            [
                "system",
                "estimator",
                "cost evaluations / estimate",
                "control-variate evaluations",
                "n",
                "variance ± 95%",
                "max |Δmean|/SE vs jax_scg score function",
                f"max |Δmean|/SE vs jax_scg {SBN_SHARP}",
                "ratio to Storchastic's best unbiased row at this cost [95%]",
            ],
            rows,
        ),
    ]
    if isinstance(result, str):
        lines += ["", result]
    return lines, goal


def _summary(name, items):
    """One sentence from (cost, line, status) items: where the goal is met and where not."""
    by = {}
    for cost, _, status in items:
        if status is not None:
            by.setdefault(status, []).append(str(cost))
    words = {
        "met": "met at cost {}",
        "not met": "not met at cost {}",
        "met against unbiased": "at cost {} met against Storchastic's unbiased rows, not "
        "against its biased UnorderedSetEstimator",
        "met against unbiased (moving average)": "at cost {} met against Storchastic's "
        "unbiased rows, not against its biased moving-average rows",
    }
    parts = [words[status].format(", ".join(costs)) for status, costs in by.items()]
    every = set(by) == {"met"}
    return f"{name}: " + ("met at every cost compared" if every else "; ".join(parts))


def goals(result, jax_categorical, us_exact, sbn_goal, relax_goal) -> list:
    """The issue's goals, each with this run's numbers and a verdict."""
    lines = []
    if isinstance(result, str):
        lines.append(f"- Storchastic comparisons not available: {result[:200]}")
        cat_goal = []
    else:
        cat_goal = categorical_goal(result, jax_categorical, us_exact)
        lines += [
            f"- {CATEGORIES}-way Categorical toy, best jax_scg against best Storchastic at each "
            "cost (rows with max |bias|/SE < 5), variance ratio [95%, delta method, "
            "independent runs]:",
            *(line for _, line, _ in cat_goal),
            f"- Sigmoid belief net ({SBN_IMAGES} digits), best unbiased jax_scg row against "
            "best unbiased Storchastic row at each cost (the costs Storchastic's rows have; "
            "the baselines learned from past costs count as cost 1, their warm-up apart):",
            *(line for _, line, _ in sbn_goal),
        ]
    lines.append(
        "- RELAX with a learned c_φ against REBAR on the Bernoulli toy (same keys, paired "
        "ratio [95%]):"
    )
    for t, label, a, b, r, below in relax_goal:
        lines.append(
            f"  - t={t}: RELAX learned {a:.3g} / '{label}' {b:.3g} = {fmt_ratio(r)}: "
            + ("met" if below else "not met")
        )
    verdict = []
    if cat_goal:
        verdict.append(_summary(f"{CATEGORIES}-way Categorical toy", cat_goal))
    if sbn_goal:
        verdict.append(_summary("sigmoid belief net", sbn_goal))
    every = all(below for *_, below in relax_goal)
    verdict.append(
        "RELAX learned below REBAR (untrained and learned) on the Bernoulli toy: "
        + ("met for both t" if every else "not met for every t")
    )
    lines += ["", "Verdict: " + "; ".join(verdict) + "."]
    return lines


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
