"""Where jax_scg's time goes against NumPyro on the sigmoid belief net (issue 15, item 1).

``python benchmarks/sbn_forms.py [--quick] [--ps 256,1024] [--repeats 15]`` (needs numpyro and
scikit-learn).

The model is ``peer_models.sbn()`` (64 binarised digits, z2 (8) -> z1 (16) -> x (64), 2408
parameters), timed as ``peers.py`` times it: ``jax.jit(jax.vmap(grad, in_axes=(None, 0)))``
over P keys, P one-sample estimates per call. Two things separate jax_scg's program from
NumPyro's ``TraceGraph_ELBO``, and the hand-written forms below take them apart:

- **the credit**: jax_scg gives element j of a site the costs it reaches (per image, per
  element through ``z1 @ W1.T``); NumPyro gives the whole site, per image (its plate);
- **the form of the surrogate**: jax_scg's is DiCE, a sum of ``⊡(τ) · cost`` whose derivatives
  of *every* order are unbiased (the magic box ⊡(τ) = exp(τ − ⊥τ) is 1 in value, but XLA
  does not know it, so the products and their cotangents are computed); NumPyro's is the
  first-order score form ``objective + Σ log q · ⊥(downstream cost)``, whose gradient equals
  DiCE's but whose second derivatives are not an estimator of the Hessian (they lack the
  products of scores). A library that promises Hessians cannot emit the score form as is.

Systems (rows 2 and 4 are checked key by key against row 1, row 5 against row 3: the same
estimator; the "Hessian" column compares Hessian-vector products with DiCE's):

1. ``jax_scg``: ``scg.grad(models_elbo.sbn_elbo)``;
2. hand-written DiCE, jax_scg's credit (``models_elbo.sbn_handwritten``);
3. hand-written DiCE, per-image credit: the costs ``TraceGraph_ELBO`` gives each site (for
   z1 its image's whole ELBO, for z2 log p(z2) + log p(z1 | z2) − log q(z2);
   ``sbn_ablation.py``);
4. hand-written score form, jax_scg's credit (first order only);
5. hand-written score form, per-image credit (first order only: NumPyro's form, written in
   JAX);
6. NumPyro ``TraceGraph_ELBO``.

Timings: ``harness.time_interleaved`` rounds, ratios of medians measured in the same rounds
(est/s of a system over NumPyro's, so above 1 is faster than NumPyro), with the interquartile
range of the per-round ratios; XLA's temporary buffer (``memory_analysis``) and HLO op counts.

XLA:CPU's library ("YNN") fusions of reductions enlarge the temporary buffer of the JAX
forms (by 25-60 MB at P = 1024; NumPyro's by 5 MB);
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce`` turns them off, and the
report's header records the flags it ran with.

Writes ``benchmarks/results/sbn_forms_<platform>.md``.
"""

from __future__ import annotations

import functools
import os

import harness
import hlo_stats
import jax
import jax.numpy as jnp
import models_elbo
import numpy as np
import peer_models
from jax import lax
from models_elbo import Z2

import jax_scg as scg
from jax_scg import distributions as D

stop = lax.stop_gradient


def _draws(p, key, x):
    """The guide's logits and draws, as every form computes them."""
    k1, k2 = jax.random.split(key)
    a = x @ p["V1"].T + p["c1"]
    q1 = D.Bernoulli(logits=a)
    z1 = stop(q1.sample(k1))
    b = z1 @ p["V2"].T + p["c2"]
    q2 = D.Bernoulli(logits=b)
    z2 = stop(q2.sample(k2))
    return a, b, z1, z2, q1.log_prob(z1), q2.log_prob(z2)


def _log_joint_per_image(p, x, z1, z2):
    """(log p(z2) + log p(z1 | z2), log p(x | z1)), each per image."""
    log_p_z = jnp.sum(D.Bernoulli(logits=jnp.zeros(Z2)).log_prob(z2), -1) + jnp.sum(
        D.Bernoulli(logits=z2 @ p["W2"].T + p["b2"]).log_prob(z1), -1
    )
    log_p_x = jnp.sum(D.Bernoulli(logits=z1 @ p["W1"].T + p["b1"]).log_prob(x), -1)
    return log_p_z, log_p_x


def _per_image_dice(p, x, draws):
    """DiCE with per-image credit: z1's score multiplies everything in its image, z2's the
    terms z2 reaches (log p(z2), log p(z1 | z2), its own log q); log q's are detached costs."""
    _, _, z1, z2, lq1, lq2 = draws
    tau1, tau2 = jnp.sum(lq1, -1), jnp.sum(lq2, -1)
    log_p_z, log_p_x = _log_joint_per_image(p, x, z1, z2)
    both, first = scg.magic_box(tau1 + tau2), scg.magic_box(tau1)
    return jnp.sum(both * (log_p_z - stop(tau2)) + first * (log_p_x - stop(tau1)))


def per_image_dice(flat, key, x, unravel):
    """System 3."""
    p = unravel(flat)
    return _per_image_dice(p, x, _draws(p, key, x))


def _score_form(plain, dice_of_stopped):
    """``plain + S − ⊥S``: the value of ``plain``, the gradient of DiCE (``plain``'s pathwise
    gradient, plus each score times its stopped cost from ``S``), not its second
    derivatives."""
    return plain + dice_of_stopped - stop(dice_of_stopped)


def _plain_objective(p, x, draws):
    """The ELBO of the drawn values, log q's detached: its gradient is the pathwise part."""
    _, _, z1, z2, lq1, lq2 = draws
    log_p_z, log_p_x = _log_joint_per_image(p, x, z1, z2)
    return jnp.sum(log_p_z + log_p_x) - jnp.sum(stop(lq1)) - jnp.sum(stop(lq2))


def per_image_score(flat, key, x, unravel):
    """System 5: NumPyro's form with per-image credit."""
    p = unravel(flat)
    draws = _draws(p, key, x)
    return _score_form(
        _plain_objective(p, x, draws), _per_image_dice(models_elbo.sbn_stop_model(p), x, draws)
    )


def element_score(flat, key, x, unravel):
    """System 4: the score form with jax_scg's credit (``models_elbo.sbn_handwritten`` on
    stopped costs)."""
    p = unravel(flat)
    dice = models_elbo.sbn_handwritten(flat, key, x, unravel, stop_model=True)
    return _score_form(_plain_objective(p, x, _draws(p, key, x)), dice)


SYSTEMS = (
    "jax_scg",
    "hand DiCE, jax_scg's credit",
    "hand DiCE, per-image credit",
    "hand score form, jax_scg's credit",
    "hand score form, per-image credit",
    "NumPyro TraceGraph_ELBO",
)
# Rows that are the same estimator (first derivatives equal key by key) as another row.
SAME_AS = {
    "hand DiCE, jax_scg's credit": "jax_scg",
    "hand score form, jax_scg's credit": "jax_scg",
    "hand score form, per-image credit": "hand DiCE, per-image credit",
}


def gradient_functions(model):
    """System name -> per-key gradient ``(θ, key) -> (2408,)`` and -> surrogate (JAX rows)."""
    x, _, unravel = models_elbo.sbn_inputs(model.size)
    forms = {
        "hand DiCE, jax_scg's credit": model.handwritten,
        "hand DiCE, per-image credit": functools.partial(per_image_dice, x=x, unravel=unravel),
        "hand score form, jax_scg's credit": functools.partial(element_score, x=x, unravel=unravel),
        "hand score form, per-image credit": functools.partial(
            per_image_score, x=x, unravel=unravel
        ),
    }
    grads = {"jax_scg": scg.grad(model.scg_loss)}
    grads.update({name: jax.grad(f) for name, f in forms.items()})
    grads["NumPyro TraceGraph_ELBO"] = model.numpyro_factory()
    return grads, forms


def checks(grads, forms, theta, keys):
    """Per row: max |g − g_same| / max |g_same| over the keys, and for the hand-written forms
    the same for Hessian-vector products against the DiCE form of their credit."""
    batched = {n: jax.jit(jax.vmap(g, in_axes=(None, 0))) for n, g in grads.items()}
    out = {n: batched[n](theta, keys) for n in SAME_AS.keys() | set(SAME_AS.values())}
    rel = lambda u, v: float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v)))
    gradient = {n: rel(out[n], out[ref]) for n, ref in SAME_AS.items()}
    direction = jax.random.normal(jax.random.key(5), theta.shape, theta.dtype)

    def hvp(f):
        g = jax.grad(f)
        per_key = lambda k: jax.jvp(lambda t: g(t, k), (theta,), (direction,))[1]
        return jax.jit(jax.vmap(per_key))(keys)

    dice_of = {
        "hand score form, jax_scg's credit": "hand DiCE, jax_scg's credit",
        "hand score form, per-image credit": "hand DiCE, per-image credit",
    }
    hessian = {n: rel(hvp(forms[n]), hvp(forms[d])) for n, d in dice_of.items()}
    return gradient, hessian


def time_forms(grads, theta, ps, repeats, target_s):
    """P -> system -> (est/s over NumPyro's, its IQR bounds, temp MB, HLO ops)."""
    table = {}
    for p in ps:
        keys = jax.random.split(jax.random.key(p), p)
        fns, stats = {}, {}
        for name, g in grads.items():
            fn = jax.jit(jax.vmap(g, in_axes=(None, 0)))
            compiled = fn.lower(theta, keys).compile()
            memory = compiled.memory_analysis()
            temp = None if memory is None else memory.temp_size_in_bytes / 1e6
            stats[name] = (temp, hlo_stats.hlo_op_count(compiled.as_text()))
            fns[name] = fn
        times = harness.time_interleaved(fns, (theta, keys), repeats=repeats, target_s=target_s)
        base = times["NumPyro TraceGraph_ELBO"]
        table[p] = {}
        for name in grads:
            paired = base / times[name]  # est/s ratio per round
            q25, q75 = np.percentile(paired, [25, 75])
            speed = float(np.median(base) / np.median(times[name]))
            table[p][name] = (speed, float(q25), float(q75), *stats[name])
    return table


def report(quick: bool, ps, repeats: int) -> str:
    model = peer_models.sbn(16 if quick else 64)
    grads, forms = gradient_functions(model)
    theta = model.theta
    gradient, hessian = checks(grads, forms, theta, jax.random.split(jax.random.key(3), 64))
    table = time_forms(grads, theta, ps, repeats, 0.005 if quick else 0.2)
    header = ["system", *(f"est/s / NumPyro, P={p} [IQR]" for p in ps)]
    header += [f"temp MB, P={ps[-1]}", "HLO ops", "gradient = row", "Hessian-vector vs DiCE"]
    rows = []
    for name in grads:
        cells = [harness.ratio_cell(*table[p][name][:3]) for p in ps]
        temp, ops = table[ps[-1]][name][3:]
        same = SAME_AS.get(name)
        check = "–" if same is None else f"{SYSTEMS.index(same) + 1} ({gradient[name]:.1e})"
        hv = f"{hessian[name]:.2g} apart" if name in hessian else "–"
        rows.append([f"{SYSTEMS.index(name) + 1}. {name}", *cells, harness.fmt(temp, ".1f"), ops])
        rows[-1] += [check, hv]
    lines = [
        harness.environment_header(
            "Sigmoid belief net: jax_scg and NumPyro's surrogate forms (issue 15, item 1)", quick
        ).rstrip("\n"),
        f"- XLA_FLAGS: `{os.environ.get('XLA_FLAGS') or '(none)'}`",
        f"- {model.title}; `jit(vmap(grad))` over P keys; {repeats} interleaved rounds; "
        "est/s / NumPyro: the median of NumPyro's time over the system's (above 1: faster).",
        "- gradient = row: max |difference| / max |row's gradient| over 64 keys, key by key; "
        "Hessian-vector vs DiCE: the same for products with one random direction, against "
        "the DiCE form of the same credit (not 0: the score form's second derivatives are "
        "not DiCE's, so it cannot stand in for jax_scg's surrogate).",
        "",
        harness.markdown_table(header, rows),
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = harness.arg_parser(__doc__, "markdown output file (--quick: none by default)")
    parser.add_argument("--ps", default=None, help="comma-separated keys per call")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds")
    args = parser.parse_args(argv)
    ps = [int(p) for p in args.ps.split(",")] if args.ps else ([8] if args.quick else [256, 1024])
    repeats = args.repeats or (3 if args.quick else 15)
    text = report(args.quick, ps, repeats)
    print(text)
    if args.quick and not args.out:
        return
    harness.write_report(
        args.out or harness.results_path("sbn_forms", jax.devices()[0].platform), text + "\n"
    )


if __name__ == "__main__":
    main()
