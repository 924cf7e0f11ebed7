"""One LOLA-DiCE update on the iterated prisoner's dilemma: jax_scg against hand-written JAX.

Run from the repository root::

    python benchmarks/lola.py            # full run (150 rounds, batch 128), a few minutes
    python benchmarks/lola.py --quick    # smoke test, tiny sizes (< 1 minute)

The update is one step of LOLA-DiCE self-play (Foerster et al. 2018) with a value baseline:
each agent's LOLA gradient (``lookaheads`` anticipated learning steps of the other, each on
fresh episodes, then its own objective on new episodes, differentiated through the
look-ahead), and a gradient-ascent step of both agents. Three systems compute it from the
same keys:

* **jax_scg**: ``jax_scg.examples.lola_dice_grad``: ``scg.grad`` of a function that calls
  ``scg.grad``; the episodes are a ``lax.scan`` with ``scg.sample`` sites and baselines.
* **hand, best**: the best hand-written JAX form: the scan only samples, with stopped
  parameters (``lax.stop_gradient`` of the logits' parameters), and returns the states and
  actions; log-probabilities, magic boxes, cumulative sums, baselines and rewards are formed
  after the loop, vectorised over rounds, so that no derivative of any order passes through
  the scan.
* **hand, naive**: the same surrogate with the log-probabilities computed inside the scan
  body from the live parameters (as one writes a REINFORCE rollout); every derivative then
  runs through the loop.

The script first checks that the three give the same gradients on the same keys (float32,
rtol 1e-4 relative to the largest coordinate; where float32 rounding, amplified by the
nested look-aheads, exceeds that, the check is repeated in float64, where they must agree to
1e-9). It reports the median runtime ratios (interleaved rounds, with the interquartile
range of the per-round ratios), the number of HLO ``while`` loops of each compiled update,
HLO op counts, and the memory XLA assigns (``memory_analysis()``).

Results are printed as markdown and written to ``--out`` (default
``benchmarks/results/lola_<platform>.md``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import hlo_stats  # noqa: E402

import jax_scg as scg  # noqa: E402
from jax_scg import distributions as D  # noqa: E402
from jax_scg import examples as E  # noqa: E402

INNER_LR = 0.3  # the DiCE paper's look-ahead learning rate
OUTER_LR = 0.2  # and its outer one


@dataclasses.dataclass(frozen=True)
class Setting:
    """Sizes of one run."""

    steps: int
    batch: int
    lookaheads: tuple
    repeats: int
    target_s: float


# ------------------------------------------------------------------------------------------
# Hand-written surrogates


def sampled_episodes(theta1, theta2, key, steps, batch):
    """The episodes' states and actions from a scan that only samples (stopped parameters).

    Same keys and probabilities as ``examples.ipd_rollout``, hence the same draws.
    """
    theta1, theta2 = lax.stop_gradient(theta1), lax.stop_gradient(theta2)

    def body(carry, k):
        s1, s2 = carry
        k1, k2 = jax.random.split(k)
        a1 = D.Bernoulli(logits=E.ipd_table(theta1, s1)).sample(k1)
        a2 = D.Bernoulli(logits=E.ipd_table(theta2, s2)).sample(k2)
        return E.ipd_next_states(a1, a2), (s1, s2, a1, a2)

    start = jnp.zeros(batch, jnp.int32)
    return lax.scan(body, (start, start), jax.random.split(key, steps))[1]


def episodes_with_log_probs(theta1, theta2, key, steps, batch):
    """The naive form: log-probabilities computed inside the scan from the live parameters."""

    def body(carry, k):
        s1, s2 = carry
        k1, k2 = jax.random.split(k)
        d1 = D.Bernoulli(logits=E.ipd_table(theta1, s1))
        d2 = D.Bernoulli(logits=E.ipd_table(theta2, s2))
        a1 = lax.stop_gradient(d1.sample(k1))
        a2 = lax.stop_gradient(d2.sample(k2))
        return E.ipd_next_states(a1, a2), (s1, s2, a1, a2, d1.log_prob(a1), d2.log_prob(a2))

    start = jnp.zeros(batch, jnp.int32)
    return lax.scan(body, (start, start), jax.random.split(key, steps))[1]


def dice_surrogate(s1, s2, a1, a2, lp1, lp2, agent, values, batch, ancestors):
    """The agent's DiCE surrogate from per-round arrays ``(steps, batch)``, after the loop.

    ``Σ_t,b ⊡(τ_t,b) γ^t r_t,b / B`` with ``τ_t,b`` the summed log-probabilities of episode
    ``b``'s rounds up to ``t`` (reward-to-go credit, per episode), plus, with ``values``, the
    baseline term of Mao et al. (2019) for both sites of every round,
    ``⊡(ancestors) (1 − ⊡(log p)) γ^t V(s_t) / B``. ``ancestors`` is ``"episode"`` (the
    box of the episode's earlier rounds) or ``"batch"`` (of every episode's earlier rounds:
    the same estimator at first order, different second derivatives).
    """
    steps = s1.shape[0]
    lp = lp1 + lp2
    tau = jnp.cumsum(lp, axis=0)
    rewards = E.ipd_rewards(a1, a2)[agent - 1]
    discounts = (E.IPD_GAMMA ** jnp.arange(steps, dtype=lp.dtype))[:, None]
    surrogate = jnp.sum(scg.magic_box(tau) * discounts * rewards) / batch
    if values is None:
        return surrogate
    baseline = discounts * values[s1 if agent == 1 else s2] / batch
    if ancestors == "episode":
        before = jnp.concatenate([jnp.zeros_like(tau[:1]), tau[:-1]])
    else:
        summed = jnp.cumsum(jnp.sum(lp, axis=1))
        before = jnp.concatenate([jnp.zeros_like(summed[:1]), summed[:-1]])[:, None]
    own = (1 - scg.magic_box(lp1)) + (1 - scg.magic_box(lp2))
    return surrogate + jnp.sum(scg.magic_box(before) * own * baseline)


def best_objective(theta1, theta2, key, agent, values, steps, batch, ancestors):
    """Hand, best: sample in the scan; every log-probability after it, vectorised."""
    s1, s2, a1, a2 = sampled_episodes(theta1, theta2, key, steps, batch)
    lp1 = D.Bernoulli(logits=theta1[s1]).log_prob(a1)
    lp2 = D.Bernoulli(logits=theta2[s2]).log_prob(a2)
    return dice_surrogate(s1, s2, a1, a2, lp1, lp2, agent, values, batch, ancestors)


def naive_objective(theta1, theta2, key, agent, values, steps, batch, ancestors):
    """Hand, naive: log-probabilities inside the scan; the boxes after it."""
    episodes = episodes_with_log_probs(theta1, theta2, key, steps, batch)
    return dice_surrogate(*episodes, agent, values, batch, ancestors)


def hand_lola_grad(objective, theta1, theta2, key, values, *, lookaheads, steps, batch, anc):
    """Agent 1's LOLA-DiCE gradient from a hand-written surrogate (same keys as jax_scg)."""
    values1, values2 = values

    def outer(t1):
        keys = jax.random.split(key, lookaheads + 1)
        t2 = theta2
        for k in keys[:-1]:
            g2 = jax.grad(objective, argnums=1)(t1, t2, k, 2, values2, steps, batch, anc)
            t2 = t2 + INNER_LR * g2
        return objective(t1, t2, keys[-1], 1, values1, steps, batch, anc)

    return jax.grad(outer)(theta1)


def scg_lola_grad(theta1, theta2, key, values, *, lookaheads, steps, batch):
    return E.lola_dice_grad(
        theta1, theta2, key, lookaheads=lookaheads, inner_lr=INNER_LR, steps=steps,
        batch=batch, values=values,
    )  # fmt: skip


def both_gradients(lola_grad: Callable) -> Callable:
    """Both agents' LOLA gradients, agent 2's with the roles swapped."""

    def grads(theta1, theta2, values1, values2, key):
        k1, k2 = jax.random.split(key)
        return (
            lola_grad(theta1, theta2, k1, (values1, values2)),
            lola_grad(theta2, theta1, k2, (values2, values1)),
        )

    return grads


def update_from(grads: Callable) -> Callable:
    """One LOLA-DiCE update: both agents' gradients and a gradient-ascent step."""

    def update(theta1, theta2, values1, values2, key):
        g1, g2 = grads(theta1, theta2, values1, values2, key)
        return theta1 + OUTER_LR * g1, theta2 + OUTER_LR * g2

    return update


def systems(lookaheads: int, steps: int, batch: int, ancestors: str) -> dict[str, Callable]:
    """System name -> (un-jitted) function computing both agents' gradients."""
    sizes = dict(lookaheads=lookaheads, steps=steps, batch=batch)
    return {
        "jax_scg": both_gradients(functools.partial(scg_lola_grad, **sizes)),
        "hand, best": both_gradients(
            functools.partial(hand_lola_grad, best_objective, anc=ancestors, **sizes)
        ),
        "hand, naive": both_gradients(
            functools.partial(hand_lola_grad, naive_objective, anc=ancestors, **sizes)
        ),
    }


# ------------------------------------------------------------------------------------------
# Checks


def arguments(key, dtype=jnp.float32):
    """(theta1, theta2, values1, values2): a generic point and its exact state values."""
    k1, k2 = jax.random.split(key)
    theta1 = 0.5 * jax.random.normal(k1, (5,), dtype)
    theta2 = 0.5 * jax.random.normal(k2, (5,), dtype)
    values1, values2 = E.ipd_state_values(theta1, theta2)
    return theta1, theta2, values1, values2


def max_deviation(a, b) -> float:
    """max |a − b| over both agents' gradients, relative to the largest |b| (float64)."""
    a = np.concatenate([np.asarray(x, np.float64) for x in a])
    b = np.concatenate([np.asarray(x, np.float64) for x in b])
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))


def deviations(fns: dict, args, check_keys) -> dict[str, float]:
    """The largest relative deviation from jax_scg of each hand-written system over keys."""
    jitted = {name: jax.jit(fn) for name, fn in fns.items()}
    out = {name: 0.0 for name in fns if name != "jax_scg"}
    for key in check_keys:
        reference = jitted["jax_scg"](*args, key)
        for name in out:
            out[name] = max(out[name], max_deviation(jitted[name](*args, key), reference))
    return out


@dataclasses.dataclass(frozen=True)
class Check:
    """The equality check of one look-ahead count."""

    lookaheads: int
    float32: dict  # system -> largest relative deviation from jax_scg, float32
    float64: dict | None  # the same in float64, when float32 was not within tolerance

    def passed(self, rtol32=1e-4, rtol64=1e-9) -> bool:
        if all(d <= rtol32 for d in self.float32.values()):
            return True
        return self.float64 is not None and all(d <= rtol64 for d in self.float64.values())


def check_equal(setting: Setting, lookaheads: int, ancestors: str, n_keys: int) -> Check:
    """Checks jax_scg against both hand-written forms on the same keys (float32, float64)."""
    fns = systems(lookaheads, setting.steps, setting.batch, ancestors)
    check_keys = jax.random.split(jax.random.key(11), n_keys)
    float32 = deviations(fns, arguments(jax.random.key(3)), check_keys)
    float64 = None
    if any(d > 1e-4 for d in float32.values()):
        with jax.enable_x64(True):
            fns = systems(lookaheads, setting.steps, setting.batch, ancestors)
            float64 = deviations(fns, arguments(jax.random.key(3), jnp.float64), check_keys)
    return Check(lookaheads, float32, float64)


def baseline_ancestors(setting: Setting) -> str:
    """Which baseline term jax_scg builds: ``"episode"`` or ``"batch"`` ancestors' boxes.

    Both give the same first derivatives; the look-ahead's second derivatives tell them
    apart (compared in float64 at one look-ahead, on two keys).
    """
    found = []
    with jax.enable_x64(True):
        args = arguments(jax.random.key(3), jnp.float64)
        for ancestors in ("episode", "batch"):
            fns = systems(1, setting.steps, setting.batch, ancestors)
            fns = {name: fns[name] for name in ("jax_scg", "hand, best")}
            dev = deviations(fns, args, jax.random.split(jax.random.key(12), 2))["hand, best"]
            if dev <= 1e-9:
                found.append(ancestors)
    if not found:
        raise AssertionError(
            "jax_scg's LOLA-DiCE gradient matches neither hand-written baseline form"
        )
    return found[0]


# ------------------------------------------------------------------------------------------
# Measurements


@dataclasses.dataclass(frozen=True)
class Result:
    lookaheads: int
    timing: dict
    stats: dict
    memory: dict
    loops: dict


#: ``op_name`` fragments of the loops JAX's random number generator compiles to on CPU
#: (threefry's rounds), which every system has alike.
RNG_LOOP_MARKERS = ("_threefry", "_uniform", "_bernoulli", "random_bits")


def while_loops(jitted, *args) -> tuple[int, int]:
    """``(all, rollout)``: HLO ``while`` instructions in every computation of the optimised
    module, and those that are not the random number generator's own loops."""
    text = jitted.lower(*args).compile().as_text()
    total = rollout = 0
    for line in text.splitlines():
        if hlo_stats.hlo_opcode(line) != "while":
            continue
        total += 1
        match = re.search(r'op_name="([^"]*)"', line)
        name = match.group(1) if match else ""
        rollout += not any(marker in name for marker in RNG_LOOP_MARKERS)
    return total, rollout


def memory_bytes(jitted, *args) -> dict:
    """Bytes from ``compiled.memory_analysis()``: temp + argument + output, and temp alone."""
    stats = jitted.lower(*args).compile().memory_analysis()
    if stats is None:
        return {"total": float("nan"), "temp": float("nan")}
    total = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
    return {"total": total, "temp": stats.temp_size_in_bytes}


def measure(setting: Setting, lookaheads: int, ancestors: str) -> Result:
    fns = systems(lookaheads, setting.steps, setting.batch, ancestors)
    jitted = {name: jax.jit(update_from(fn)) for name, fn in fns.items()}
    args = (*arguments(jax.random.key(3)), jax.random.key(0))
    stats = {name: hlo_stats.compiled_stats(fn, *args) for name, fn in jitted.items()}
    memory = {name: memory_bytes(fn, *args) for name, fn in jitted.items()}
    loops = {name: while_loops(fn, *args) for name, fn in jitted.items()}
    times = harness.time_interleaved(
        jitted, args, repeats=setting.repeats, target_s=setting.target_s
    )
    timing = harness.summarize(times, baseline="hand, best")
    return Result(lookaheads, timing, stats, memory, loops)


def ratio_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        t = r.timing
        rows.append(
            [
                r.lookaheads,
                harness.timing_ratio(t["jax_scg"]),
                harness.timing_ratio(t["hand, naive"]),
                f"{t['jax_scg'].median_s * 1e3:.1f}",
                f"{t['hand, best'].median_s * 1e3:.1f}",
                f"{t['hand, naive'].median_s * 1e3:.1f}",
            ]
        )
    return rows


def program_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        for name in ("jax_scg", "hand, best", "hand, naive"):
            s, m, t = r.stats[name], r.memory[name], r.timing[name]
            rows.append(
                [
                    r.lookaheads,
                    name,
                    f"{r.loops[name][1]} ({r.loops[name][0]})",
                    f"{s.op_count:,}",
                    harness.mib(m["total"]),
                    harness.mib(m["temp"]),
                    f"{t.median_s * 1e3:.1f} ± {t.iqr_s * 1e3:.1f}",
                ]
            )
    return rows


def check_rows(checks: list[Check]) -> list[list[str]]:
    rows = []
    for c in checks:
        for name, dev in c.float32.items():
            dev64 = "" if c.float64 is None else f"{c.float64[name]:.1e}"
            rows.append([c.lookaheads, name, f"{dev:.1e}", dev64])
    return rows


NOTES = """\
One LOLA-DiCE update = both agents' LOLA-DiCE gradients (agent 2's with the roles swapped)
and a gradient-ascent step of both (lr {outer}; look-ahead lr {inner}); IPD with the DiCE
paper's payoffs, discount 0.96, {steps} rounds, {batch} episodes per estimate, a value
baseline (each agent's exact state values at the evaluation point) in every objective; one
key per update, split as `lola_dice_grad` splits it, so every system draws the same episodes.

Runtime: median seconds per update (jitted), the systems timed in interleaved rounds
(`harness.time_interleaved`, {repeats} rounds); ratios are medians over `hand, best`'s, the
bracket the interquartile range of the per-round ratios. `while`: HLO instructions with
opcode `while` in the optimised module (`jax.jit(f).lower(...).compile().as_text()`, every
computation); "rollout" counts the loops of the episodes and of their derivatives, "all"
adds the loops of JAX's random number generator (on CPU, threefry's rounds are a loop in
every draw, alike in every system). HLO ops: `hlo_stats.hlo_op_count` (every instruction
except parameter, constant, tuple, get-tuple-element). Memory: `compiled.memory_analysis()`;
"temp + args + out" is `temp_size_in_bytes + argument_size_in_bytes +
output_size_in_bytes` (no aliasing here), "temp" the first alone (`peak_memory_in_bytes` is
not used: on CPU it reports a few hundred bytes).
"""


def main(argv=None) -> int:
    args = harness.arg_parser(__doc__).parse_args(argv)
    out = args.out or harness.results_path("lola")
    if args.quick:
        setting = Setting(steps=8, batch=4, lookaheads=(1,), repeats=3, target_s=0.005)
    else:
        setting = Setting(steps=150, batch=128, lookaheads=(1, 2, 3), repeats=40, target_s=0.1)

    text = [harness.environment_header("jax_scg LOLA-DiCE update", args.quick)]
    print(text[0], flush=True)

    ancestors = baseline_ancestors(setting)
    print(f"jax_scg's baseline term boxes the ancestors of the {ancestors}\n", flush=True)
    checks = []
    for n in setting.lookaheads:
        checks.append(check_equal(setting, n, ancestors, n_keys=2 if args.quick else 3))
        print(f"checked {n} look-ahead(s): {checks[-1]}", flush=True)
        assert checks[-1].passed(), checks[-1]

    results = []
    for n in setting.lookaheads:
        print(f"timing {n} look-ahead(s) ...", flush=True)
        results.append(measure(setting, n, ancestors))

    text.append(
        NOTES.format(
            outer=OUTER_LR, inner=INNER_LR, steps=setting.steps, batch=setting.batch,
            repeats=setting.repeats,
        )
    )  # fmt: skip
    text.append(
        harness.print_table(
            ["look-aheads", "jax_scg / hand, best [IQR]", "hand, naive / hand, best [IQR]",
             "jax_scg ms", "hand, best ms", "hand, naive ms"],
            ratio_rows(results),
            title="Runtime of one LOLA-DiCE update (both agents), ratios to the best hand-written",
        )
    )  # fmt: skip
    text.append(
        harness.print_table(
            ["look-aheads", "system", "while loops: rollout (all)", "HLO ops",
             "temp + args + out MiB", "temp MiB", "median ± IQR ms"],
            program_rows(results),
            title="Compiled programs",
        )
    )  # fmt: skip
    text.append(
        "The gradients of both agents were checked equal on the same keys before timing: the "
        "largest |difference| from jax_scg's, relative to the largest coordinate (float32; "
        "float64 where float32 rounding, amplified by the look-aheads, exceeded 1e-4). "
        f"jax_scg's baseline term boxes the ancestors of the **{ancestors}** (the hand-written "
        "forms were written the same way"
        + (
            "; the per-episode box, which Mao et al.'s form calls for, gives the same first "
            "derivatives and second derivatives of far lower variance)."
            if ancestors == "batch"
            else ")."
        )
        + "\n"
    )
    text.append(
        harness.print_table(
            ["look-aheads", "system", "max rel. deviation, float32", "float64"],
            check_rows(checks),
            title="Equality checks",
        )
    )
    harness.write_report(out, "\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
