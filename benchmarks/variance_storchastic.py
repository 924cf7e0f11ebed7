"""Storchastic's side of ``variance.py``, and the goals of issue 13 with their verdicts.

Holds :func:`run_storchastic` (``storchastic_rows.py`` in the peers' environment, given the
sigmoid belief net's inputs for :data:`SBN_IMAGES` digits), the ratio helpers the sections
share (:func:`independent_ratio`, :func:`fmt_ratio`, :func:`best`), the unordered set
estimator's exact mean and variance on the Categorical toy by enumeration, in jax_scg's form
and as Storchastic 0.3.7 computes it (:func:`unordered_set_exact`), and the report's
sections: :func:`storchastic_section`, :func:`categorical_goal` and :func:`goals`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess

import harness
import numpy as np
from harness import markdown_table
from models import CAT_TARGET, CATEGORIES

SBN_IMAGES = 64  # digits in the sigmoid belief net's batch, here and in Storchastic's inputs


PEERS_PYTHON = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), ".venv-peers", "bin", "python"
)


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


def best(rows, cost):
    """The lowest-variance row at ``cost`` evaluations per estimate, or None."""
    at = [r for r in rows if r["cost"] == cost]
    return min(at, key=lambda r: r["variance"]) if at else None


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


# jax_scg row and Storchastic row of the same estimator, at the same cost.
SAME_ESTIMATOR = [
    ("score function", "ScoreFunction (plain REINFORCE)"),
    (
        "leave-one-out, 4 samples",
        "ScoreFunction, baseline_factory='batch_average', n_samples=4 (per 4-sample estimate)",
    ),
    ("unordered set, k=4", "UnorderedSetEstimator, k=4"),
]


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
