"""Loops: ``scg.sample`` inside ``lax.scan``, differentiated after the loop, at any order.

    python benchmarks/loops.py [--quick] [--out FILE] [--part A|B] [--repeats N] [--steps T]

Part A (cost): gradient, Hessian and look-ahead gradient of a 64-step Bernoulli-policy rollout,
by ``scg`` (its default ``fission="auto"`` and ``fission=True``) and by two hand-written DiCE
surrogates, "naive" (log-probabilities inside the
scan) and "fissioned" (the scan only simulates; scores, ``cumsum`` and magic boxes are
computed after it, vectorised over time). Part B (variance): 16 environments stepped in one
scan, ``scg.grad`` against the per-episode estimator and a hand-written per-element surrogate.
Writes ``benchmarks/results/loops_<platform>.md`` (or ``--out``); PART_A_NOTES and
PART_B_NOTES below say how each column is measured.
"""

from __future__ import annotations

import math
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import hlo_stats  # noqa: E402
from models import (  # noqa: E402
    ROLLOUT_THETA,
    rollout_carried,
    rollout_fissioned,
    rollout_handwritten,
    rollout_model,
)

import jax_scg as scg  # noqa: E402
from jax_scg import distributions as D  # noqa: E402

# ------------------------------------------------------------------------------------------
# Part A: one rollout, three derivatives, scg against two hand-written forms


def derivative(kind: str, fn, fission=None):
    """``(theta, key) -> estimate`` of the gradient, the Hessian or the look-ahead gradient;
    by ``scg`` with that ``fission`` setting, or by ``jax`` of a hand-written ``fn`` (None)."""
    by_scg = fission is not None
    surrogate = scg.surrogate(fn, fission=fission) if by_scg else fn
    grad = scg.grad(fn, fission=fission) if by_scg else jax.grad(fn)
    if kind == "gradient":
        return grad
    if kind == "Hessian":
        return jax.hessian(surrogate)

    def lookahead(theta, key):  # one inner step on k1, the outer objective on k2
        k1, k2 = jax.random.split(key)
        return surrogate(theta - 0.1 * grad(theta, k1), k2)

    return jax.grad(lookahead)


def program_stats(compiled, steps: int) -> dict:
    """HLO while loops (all, and those running ``steps`` iterations), ops and peak memory."""
    text = compiled.as_text()
    trips = [re.search(r'"known_trip_count":\{"n":"(\d+)"', line) for line in text.splitlines()
             if hlo_stats.hlo_opcode(line) == "while"]  # fmt: skip
    m = compiled.memory_analysis()
    peak = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    return {
        "while": len(trips),
        "time loops": sum(1 for m in trips if m and int(m.group(1)) == steps),
        "ops": hlo_stats.hlo_op_count(text),
        "MiB": (peak - m.alias_size_in_bytes) / 2**20,
    }


# jax_scg with its default fission="auto" and with fission=True, then the hand-written forms.
SYSTEMS = ("scg", "scg fission=True", "fissioned", "naive")
FISSION = {"scg": "auto", "scg fission=True": True}
# Equality check: float32 rtol per derivative (the look-ahead gradient's entries reach 1e5 and
# differ by float32 rounding up to ~3e-4; it is also checked in float64 on X64_KEYS keys).
F32_RTOL = {"gradient": 1e-4, "Hessian": 1e-4, "look-ahead gradient": 1e-3}
X64_KEYS = 32


def batched(kind: str, forms: dict) -> dict:
    """Form name -> ``jit(vmap(derivative, in_axes=(None, 0)))``."""
    return {name: jax.jit(jax.vmap(derivative(kind, fn, FISSION.get(name)), (None, 0)))
            for name, fn in forms.items()}  # fmt: skip


def check_equal(fns: dict, args, rtol: float, what: str):
    """Asserts scg's (both settings) and the naive form's estimates equal the fissioned
    form's, key by key."""
    out = {name: np.asarray(fn(*args)) for name, fn in fns.items()}
    ref = out["fissioned"]
    for name in ("scg", "scg fission=True", "naive"):
        atol = 0.1 * rtol * np.abs(ref).max()
        np.testing.assert_allclose(out[name], ref, rtol=rtol, atol=atol, err_msg=f"{what}: {name}")


def _triple(stats, key, fmt="{}"):
    return " / ".join(fmt.format(stats[s][key]) for s in SYSTEMS)


def run_part_a(quick: bool, repeats: int | None = None, steps: int | None = None) -> list[str]:
    default_steps, n_keys = (8, 64) if quick else (64, 1024)
    steps = steps or default_steps
    default_repeats, target_s = (5, 0.005) if quick else (60, 0.05)
    repeats = repeats or default_repeats
    theta = jnp.array(ROLLOUT_THETA)
    args = (theta, jax.random.split(jax.random.key(0), n_keys))
    bind = lambda fn: lambda th, k: fn(th, k, steps)  # noqa: E731
    models = {"stacked (`rewards.sum()`)": rollout_model, "running reward in the carry":
              rollout_carried}  # fmt: skip
    forward = jax.jit(jax.vmap(bind(rollout_model), (None, 0))).lower(*args).compile()
    rows = []
    for model_name, model in list(models.items())[: 1 if quick else 2]:
        forms = {"scg": bind(model), "scg fission=True": bind(model),
                 "fissioned": bind(rollout_fissioned),
                 "naive": bind(rollout_handwritten)}  # fmt: skip
        for kind in ("gradient", "Hessian", "look-ahead gradient"):
            what = f"{model_name}, {kind}"
            print(f"part A: {what} ...", flush=True)
            compiled = {
                name: fn.lower(*args).compile() for name, fn in batched(kind, forms).items()
            }
            check_equal(compiled, args, F32_RTOL[kind], what)
            if kind == "look-ahead gradient":  # float32 rounding reaches ~3e-4: check in x64
                with jax.enable_x64(True):
                    args64 = (jnp.asarray(theta, jnp.float64), args[1][:X64_KEYS])
                    check_equal(batched(kind, forms), args64, 1e-9, f"{what} (float64)")
            times = harness.time_interleaved(compiled, args, repeats=repeats, target_s=target_s)
            vs_fiss = harness.summarize(times, "fissioned")
            stats = {name: program_stats(c, steps) for name, c in compiled.items()}
            rows.append([
                model_name, kind, harness.timing_ratio(vs_fiss["scg"]),
                harness.timing_ratio(harness.summarize(times, "naive")["scg"]),
                harness.timing_ratio(harness.summarize(times, "scg")["scg fission=True"]),
                " / ".join(f"{vs_fiss[s].median_s * 1e3:.2f}" for s in SYSTEMS),
                _triple(stats, "time loops"), _triple(stats, "while"), _triple(stats, "ops"),
                _triple(stats, "MiB", "{:.2f}"),
            ])  # fmt: skip
    fwd = program_stats(forward, steps)["time loops"]
    notes = PART_A_NOTES.format(steps=steps, keys=n_keys, repeats=repeats, fwd=fwd, x64=X64_KEYS)
    headers = ["model", "derivative", "scg / fissioned [IQR]", "scg / naive [IQR]",
               "scg fission=True / scg [IQR]", "median ms scg / scg fission=True / fiss / naive",
               f"{steps}-step while loops (same order)", "all while loops", "HLO ops",
               "peak MiB"]  # fmt: skip
    title = "Part A: derivatives through a rollout, scg vs hand-written (jit + vmap over keys)"
    return [notes, harness.print_table(headers, rows, title=title)]


PART_A_NOTES = """\
Part A: {steps}-step rollout, {keys} keys per call, theta of 3 parameters. Each derivative is
`jax.jit(jax.vmap(d, in_axes=(None, 0)))`: gradient `scg.grad(model)` / `jax.grad(hand)`;
Hessian `jax.hessian(scg.surrogate(model))` / `jax.hessian(hand)`; look-ahead gradient
`jax.grad(lambda th: outer(th - 0.1 * inner_grad(th, k1), k2))` with `inner_grad` the
gradient estimator and `outer` the surrogate (reverse over reverse). "scg": jax_scg's
default `fission="auto"` (on CPU a first-order derivative runs the loop as written and the
fissioned rewrite serves derivatives that are differentiated again; off CPU every derivative
is fissioned); "scg fission=True": every derivative fissioned. "fissioned": the scan
samples with `stop_gradient(theta)` and stacks states, actions and rewards; logits,
log-probabilities, `cumsum` and `magic_box` are computed after it, vectorised over time.
"naive": models.py's `rollout_handwritten` (log-probabilities stacked by the scan, boxes
after it). The same hand forms serve both scg models. The four estimates were checked equal
before timing: for every key in float32 (rtol 1e-4; 1e-3 for the look-ahead gradient, whose
entries reach 1e5 and differ by float32 rounding up to ~3e-4, so it is also checked in
float64 on {x64} keys, rtol 1e-9). Runtime: median seconds per call of the compiled
executable, the four systems timed in {repeats} interleaved rounds; ratios of medians, the
bracket the interquartile range of the per-round ratios. While loops: opcode `while` in the
optimised HLO (`compile().as_text()`); "{steps}-step" counts those whose known trip count is
{steps} (loops over time), "all" also counts the 5-iteration loops of the threefry PRNG hash
(CPU). The forward program `jit(vmap(model))` has {fwd} loop(s) over time; the look-ahead
gradient runs two rollouts (inner and outer). HLO ops: `hlo_stats.hlo_op_count`. Peak memory:
`compiled.memory_analysis()`, temp_size_in_bytes + argument_size_in_bytes +
output_size_in_bytes - alias_size_in_bytes.
"""


# ------------------------------------------------------------------------------------------
# Part B: environments batched in one scan; per-episode credit


ENVS, STEPS_B = 16, 16


# (policy(theta, states), move(states, actions)); states of any shape, one per environment.
BERNOULLI = (lambda theta, s: D.Bernoulli(logits=theta[0] + theta[1] * s),
             lambda s, a: 0.8 * s + a - 0.5)  # fmt: skip
CATEGORICAL = (lambda theta, s: D.Categorical(logits=theta[0] + theta[1] * s[..., None]),
               lambda s, a: 0.8 * s + (a.astype(s.dtype) - 1.0) * 0.5)  # fmt: skip


def episodes(env, shape):
    """``loss(theta, key)``: environments with states of ``shape`` stepped in one scan."""
    policy, move = env

    def loss(theta, key):
        def step(s, k):
            s = move(s, scg.sample(k, policy(theta, s)))
            return s, -((s - 1.0) ** 2)

        _, rewards = lax.scan(step, jnp.zeros(shape), jax.random.split(key, STEPS_B))
        return rewards.sum() / math.prod(shape)

    return loss


def bernoulli_vmapped_step(theta, key):
    """The batched Bernoulli program with ``jax.vmap`` of a per-environment step."""

    def step(s, k):
        def step_one(s_i, k_i):
            s_i = BERNOULLI[1](s_i, scg.sample(k_i, BERNOULLI[0](theta, s_i)))
            return s_i, -((s_i - 1.0) ** 2)

        return jax.vmap(step_one)(s, jax.random.split(k, ENVS))

    _, rewards = lax.scan(step, jnp.zeros(ENVS), jax.random.split(key, STEPS_B))
    return rewards.sum() / ENVS


def bernoulli_hand(theta, key, credit="per element"):
    """DiCE by hand of ``episodes(BERNOULLI, (ENVS,))``, same draws; credit: PART_B_NOTES."""

    def step(s, k):
        logits = theta[0] + theta[1] * s
        a = jax.random.bernoulli(k, jax.nn.sigmoid(logits), (ENVS,)).astype(s.dtype)
        s_next = BERNOULLI[1](s, a)
        return s_next, (a * logits - jax.nn.softplus(logits), -((s_next - 1.0) ** 2))

    _, (lp, rewards) = lax.scan(step, jnp.zeros(ENVS), jax.random.split(key, STEPS_B))
    if credit == "per element":
        tau = jnp.cumsum(lp, axis=0)
    else:
        whole = lp.sum(1, keepdims=True)
        tau = jnp.cumsum(whole, axis=0) - whole + lp
    return jnp.sum(scg.magic_box(tau) * rewards) / ENVS


def per_episode(one_episode):
    """The per-episode estimator: ``scg.grad`` of ``ENVS`` single episodes, averaged."""

    def estimate(theta, key):
        keys = jax.random.split(key, ENVS)
        return jax.vmap(scg.grad(one_episode), (None, 0))(theta, keys).mean(0)

    return estimate


def estimates(fn, theta, key, n):
    """``n`` estimates, flattened to ``(n, coordinates)``, as float64 numpy."""
    out = jax.jit(jax.vmap(fn, (None, 0)))(theta, jax.random.split(key, n))
    return np.asarray(out, np.float64).reshape(n, -1)


def variance_ratio(a, b, rng, n_boot):
    """var(a) / var(b) per column, with a 95% percentile-bootstrap interval."""
    boot = np.empty((n_boot, a.shape[1]))
    for i in range(n_boot):
        ia, ib = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
        boot[i] = a[ia].var(0, ddof=1) / b[ib].var(0, ddof=1)
    ratio = a.var(0, ddof=1) / b.var(0, ddof=1)
    return ratio, *np.percentile(boot, [2.5, 97.5], axis=0)


def run_part_b(quick: bool) -> list[str]:
    n, n_boot = (200, 200) if quick else (4000, 2000)
    rng = np.random.default_rng(0)
    bern_theta = jnp.array([0.2, -0.3])
    cat_theta = jnp.array([[0.1, -0.2, 0.3], [0.5, 0.0, -0.5]])
    bern_one = episodes(BERNOULLI, ())
    programs = {  # name: (estimator, theta, one episode)
        "Bernoulli, (B,) site": (scg.grad(episodes(BERNOULLI, (ENVS,))), bern_theta, bern_one),
        "Categorical (3 actions), (B,) site": (
            scg.grad(episodes(CATEGORICAL, (ENVS,))), cat_theta, episodes(CATEGORICAL, ())),
        "Bernoulli, vmap(step_one) in the step": (
            scg.grad(bernoulli_vmapped_step), bern_theta, bern_one),
        "hand-written per-element DiCE (Bernoulli)": (
            jax.grad(bernoulli_hand), bern_theta, bern_one),
    }  # fmt: skip
    rows, batched, episodic = [], {}, {}
    for name, (estimator, theta, one) in programs.items():
        print(f"part B: {name} ...", flush=True)
        g = batched[name] = estimates(estimator, theta, jax.random.key(1), n)
        if one not in episodic:
            episodic[one] = estimates(per_episode(one), theta, jax.random.key(2), n)
        e = episodic[one]
        se_g, se_e = g.std(0, ddof=1) / np.sqrt(n), e.std(0, ddof=1) / np.sqrt(n)
        z = np.abs(g.mean(0) - e.mean(0)) / np.sqrt(se_g**2 + se_e**2)
        ratio, lo, hi = variance_ratio(g, e, rng, n_boot)
        for c in range(g.shape[1]):
            coord = ",".join(map(str, np.unravel_index(c, theta.shape)))
            rows.append([
                name, f"theta[{coord}]", f"{g[:, c].mean():+.3f} ± {se_g[c]:.3f}",
                f"{e[:, c].mean():+.3f} ± {se_e[c]:.3f}", f"{z[c]:.1f}",
                "yes" if z[c] <= 5 else "**no**", f"{ratio[c]:.2f} [{lo[c]:.2f}, {hi[c]:.2f}]",
            ])  # fmt: skip
    title = f"Part B: variance of batched environments (B={ENVS}, T={STEPS_B}), {n} keys"
    headers = ["program", "coordinate", "mean ± SE batched", "mean ± SE per-episode",
               "|Δmean| / SE", "<= 5", "variance ratio batched / per-episode [95% CI]"]  # fmt: skip
    text = [PART_B_NOTES.format(n=n, boot=n_boot), harness.print_table(headers, rows, title)]

    g_scg, check_rows = batched["Bernoulli, (B,) site"], []
    whole = lambda th, k: bernoulli_hand(th, k, "whole site before t")  # noqa: E731
    hands = {
        "per element": batched["hand-written per-element DiCE (Bernoulli)"],
        "whole site before t": estimates(jax.grad(whole), bern_theta, jax.random.key(1), n),
    }
    for credit, g_hand in hands.items():
        rel = np.abs(g_scg - g_hand).max(1) / np.abs(g_hand).max(1)
        check_rows.append([credit, f"{rel.max():.2e}", f"{np.median(rel):.2e}",
                           "yes" if rel.max() <= 1e-4 else "no"])  # fmt: skip
    title = "Part B: scg.grad of the (B,) Bernoulli program vs hand-written DiCE, key by key"
    headers = ["hand-written credit", "max rel. diff", "median rel. diff", "equal (<= 1e-4)"]
    text.append(harness.print_table(headers, check_rows, title))
    return text


PART_B_NOTES = """\
Part B: per coordinate of theta, {n} estimates of each estimator (float32, independent
keys per estimator). "batched": the row's estimator on one scan of B environments (loss =
rewards.sum() / B). "per-episode": `jax.vmap(scg.grad(one_episode))` over B episode keys,
averaged over B, with the same dynamics and a scalar state; its variance is what per-element
credit gives. The interval of the variance ratio is a 95% percentile bootstrap ({boot}
resamples of both samples). |Δmean| / SE: difference of the two means over the standard
error of the difference (both estimate the same gradient). The key-by-key check compares
`scg.grad` with `jax.grad` of a hand-written surrogate on the same {n} keys (same draws:
`jax.random.bernoulli(key, sigmoid(logits), (B,))`): "per element" credits reward r[t, i]
with tau[t, i] = sum over t' <= t of log pi(a[t', i]); "whole site before t" credits it with
all environments' actions at t' < t and environment i's own action at t. Relative
difference per key: max |Δ| / max |g_hand| over coordinates.
"""


# ------------------------------------------------------------------------------------------
# Main


def main(argv=None) -> int:
    parser = harness.arg_parser(__doc__)
    parser.add_argument("--part", choices=("A", "B"), default=None, help="run one part only")
    parser.add_argument("--repeats", type=int, default=None, help="part A's timed rounds")
    parser.add_argument("--steps", type=int, default=None, help="part A's rollout length")
    args = parser.parse_args(argv)
    out = args.out or harness.results_path("loops")
    title = "jax_scg loops: derivatives through lax.scan, and batched environments"
    text = [harness.environment_header(title, args.quick)]
    print(text[0], flush=True)
    if args.part in (None, "A"):
        text += run_part_a(args.quick, args.repeats, args.steps)
    if args.part in (None, "B"):
        text += run_part_b(args.quick)
    harness.write_report(out, "\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
