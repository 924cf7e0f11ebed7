"""The JAX models of the benchmarks, each defined once, with its hand-written surrogates.

For every model: its jax_scg program (``scg.grad`` of it is one gradient estimate), the
hand-written DiCE surrogate(s) with the same credit assignment (``jax.grad`` of them gives
the same estimate from the same key), its exact or enumerated reference where there is one,
and its data. The scripts import from here; ``peer_models.py`` is the peer suite's registry.

* **bits** (``core_overhead.py`` model a): 64 Bernoulli bits in one site, one cost.
* **rollout** (``core_overhead.py`` model b, ``loops.py`` part A): a Bernoulli policy in
  ``lax.scan``, a reward per step, reward-to-go credit; hand-written in three forms (cumsum
  after the scan, running sum carried in it, loop-fissioned).
* **small SBN** (``core_overhead.py`` model c): 16 + 8 units, two costs.
* **chains / independent sites** of any length (``core_overhead.py`` part 2,
  ``compile_time.py``).
* **ELBO** with N Bernoulli latents and a data plate (``variance_peers.py`` model A,
  ``peers.py`` model 2), exact gradient, exact variances, NumPyro's ``TraceGraph_ELBO``.
* **SBN** on binarised digits (``variance_peers.py`` model B, ``peers.py`` model 4,
  ``variance.py``, ``sbn_ablation.py``, ``sbn_profile.py``), NumPyro's model and guide.
* **walk**: the T-step random-walk rollout over 8 states (``peers.py`` model 3), exact by
  dynamic programming.
* **toys** of ``variance.py``: the REBAR toy, a 16-step policy rollout, the 10-way
  Categorical toy, each with its exact (or large Monte Carlo) gradient.
* **LM and MLP** programs of growing size (``rewrite_time.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

import jax_scg as scg
from jax_scg import distributions as D
from jax_scg._src.distributions import _softplus  # the softplus of D.Bernoulli.log_prob

# ------------------------------------------------------------------------------------------
# Bits (core_overhead.py model a): one vector Bernoulli site, one cost node.

BITS_WEIGHTS = jnp.linspace(-1.0, 1.0, 64)


def bits_cost(x):
    """A nonlinear function of the whole bit vector: one cost node."""
    return jnp.log1p(jnp.square(jnp.dot(x, BITS_WEIGHTS) - 1.0))


def bits_model(theta, key):
    """64 independent Bernoulli bits drawn in one ``scg.sample`` call."""
    x = scg.sample(key, D.Bernoulli(logits=theta))
    return bits_cost(x)


def bits_handwritten(theta, key):
    """DiCE by hand: ``magic_box(sum of the bits' log-probabilities) * cost``."""
    dist = D.Bernoulli(logits=theta)
    x = lax.stop_gradient(dist.sample(key))
    return scg.magic_box(jnp.sum(dist.log_prob(x))) * bits_cost(x)


# ------------------------------------------------------------------------------------------
# Rollout (core_overhead.py model b, loops.py): a policy in lax.scan, per-step rewards,
# reward-to-go credit.

ROLLOUT_THETA = (0.2, -0.4, 0.3)


def policy_logits(theta, state):
    """Bernoulli policy: logits from the state and theta = (bias, linear, tanh weights)."""
    return theta[0] + theta[1] * state + theta[2] * jnp.tanh(state)


def env_step(state, action):
    """Deterministic dynamics and reward of the toy environment."""
    new_state = 0.9 * state + action - 0.5
    return new_state, jnp.square(new_state - 1.0)


def scan_rollout(logits, step, theta, key, steps):
    """A Bernoulli policy ``logits(theta, state)`` run for ``steps`` steps of
    ``step(state, action) -> (state, cost)`` in ``lax.scan`` from state 0, costs stacked by
    the scan and summed: the jax_scg program of both rollouts (this one and the walk's)."""

    def body(state, k):
        action = scg.sample(k, D.Bernoulli(logits=logits(theta, state)))
        return step(state, action)

    _, costs = lax.scan(body, jnp.zeros((), theta.dtype), jax.random.split(key, steps))
    return costs.sum()


def scan_rollout_handwritten(logits, step, theta, key, steps):
    """Reward-to-go DiCE by hand of :func:`scan_rollout`: Σ_t ⊡(Σ_{u ≤ t} log π(a_u | s_u)) r_t,
    the log-probabilities stacked by the scan and summed after it (``cumsum``)."""

    def body(state, k):
        policy = D.Bernoulli(logits=logits(theta, state))
        action = lax.stop_gradient(policy.sample(k))
        state, cost = step(state, action)
        return state, (policy.log_prob(action), cost)

    init = jnp.zeros((), theta.dtype)
    _, (log_probs, costs) = lax.scan(body, init, jax.random.split(key, steps))
    return jnp.sum(scg.magic_box(jnp.cumsum(log_probs)) * costs)


def rollout_model(theta, key, steps):
    """Rollout of ``steps`` Bernoulli actions; rewards stacked by the scan and summed."""
    return scan_rollout(policy_logits, env_step, theta, key, steps)


def rollout_handwritten(theta, key, steps):
    """Reward-to-go DiCE by hand: ``sum(magic_box(cumsum(log pi)) * rewards)``."""
    return scan_rollout_handwritten(policy_logits, env_step, theta, key, steps)


def rollout_handwritten_carried(theta, key, steps):
    """Reward-to-go DiCE by hand, the running log-probability carried inside the scan."""

    def body(carry, k):
        state, tau = carry
        dist = D.Bernoulli(logits=policy_logits(theta, state))
        action = lax.stop_gradient(dist.sample(k))
        state, reward = env_step(state, action)
        tau = tau + dist.log_prob(action)
        return (state, tau), scg.magic_box(tau) * reward

    init = (jnp.zeros(()), jnp.zeros(()))
    _, boxed_rewards = lax.scan(body, init, jax.random.split(key, steps))
    return jnp.sum(boxed_rewards)


# ------------------------------------------------------------------------------------------
# Small SBN (core_overhead.py model c): two layers, two costs with different influence sets.

SMALL_SBN_INPUT = jax.random.normal(jax.random.key(7), (32,))


def small_sbn_params(key):
    """Parameters of the sigmoid belief net (a dict pytree)."""
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "W1": 0.3 * jax.random.normal(k1, (16, 32)),
        "b1": jnp.zeros(16),
        "W2": 0.3 * jax.random.normal(k2, (8, 16)),
        "b2": jnp.zeros(8),
        "v": jax.random.normal(k3, (8,)),
    }


def small_sbn_layer1(theta):
    return D.Bernoulli(logits=theta["W1"] @ SMALL_SBN_INPUT + theta["b1"])


def small_sbn_layer2(theta, z1):
    return D.Bernoulli(logits=theta["W2"] @ z1 + theta["b2"])


def small_sbn_costs(theta, z1, z2):
    """(cost of z1 only, nonlinear cost of z2)."""
    return jnp.square(jnp.mean(z1) - 0.5), jnp.log1p(jnp.square(theta["v"] @ z2 - 1.0))


def small_sbn_model(theta, key):
    """z1 ~ Bernoulli(W1 x + b1) (16 units), z2 ~ Bernoulli(W2 z1 + b2) (8 units)."""
    k1, k2 = jax.random.split(key)
    z1 = scg.sample(k1, small_sbn_layer1(theta))
    z2 = scg.sample(k2, small_sbn_layer2(theta, z1))
    cost1, cost2 = small_sbn_costs(theta, z1, z2)
    return cost1 + cost2


def small_sbn_handwritten(theta, key):
    """DiCE by hand: ``magic_box(lp1) * cost1 + magic_box(lp1 + lp2) * cost2``."""
    k1, k2 = jax.random.split(key)
    d1 = small_sbn_layer1(theta)
    z1 = lax.stop_gradient(d1.sample(k1))
    d2 = small_sbn_layer2(theta, z1)
    z2 = lax.stop_gradient(d2.sample(k2))
    lp1, lp2 = jnp.sum(d1.log_prob(z1)), jnp.sum(d2.log_prob(z2))
    cost1, cost2 = small_sbn_costs(theta, z1, z2)
    return scg.magic_box(lp1) * cost1 + scg.magic_box(lp1 + lp2) * cost2


def rollout_carried(theta, key, steps):
    """The rollout model with the running reward carried by the scan instead of stacked."""

    def body(carry, k):
        state, total = carry
        action = scg.sample(k, D.Bernoulli(logits=policy_logits(theta, state)))
        state, reward = env_step(state, action)
        return (state, total + reward), None

    (_, total), _ = lax.scan(body, (jnp.zeros(()), jnp.zeros(())), jax.random.split(key, steps))
    return total


def rollout_fissioned(theta, key, steps):
    """Reward-to-go DiCE by hand, loop-fissioned: simulate in the scan, score after it."""

    def body(state, k):
        logits = policy_logits(lax.stop_gradient(theta), state)
        action = jax.random.bernoulli(k, jax.nn.sigmoid(logits)).astype(state.dtype)
        new_state, reward = env_step(state, action)
        return new_state, (state, action, reward)

    _, (states, actions, rewards) = lax.scan(body, jnp.zeros(()), jax.random.split(key, steps))
    log_probs = D.Bernoulli(logits=policy_logits(theta, states)).log_prob(actions)
    return jnp.sum(scg.magic_box(jnp.cumsum(log_probs)) * rewards)


# ------------------------------------------------------------------------------------------
# Chains and independent sites of any length (rewrite-time scaling, compile time)


def chain_program(n: int, per_site_costs: bool, handwritten: bool) -> Callable:
    """A fresh function with ``n`` Bernoulli sites in a chain (logits from the previous draw).

    Args:
      n: the number of sites.
      per_site_costs: a cost per site, summed (cost i is influenced by sites 1..i), or only
        one cost of the last draw.
      handwritten: the hand-written DiCE surrogate with the same credit assignment instead.
    """

    def fn(theta, key):
        keys = jax.random.split(key, n)
        x, tau, total = jnp.zeros(()), jnp.zeros(()), jnp.zeros(())
        for i in range(n):
            dist = D.Bernoulli(logits=theta[0] + theta[1] * x)
            if handwritten:
                x = lax.stop_gradient(dist.sample(keys[i]))
                tau = tau + dist.log_prob(x)
            else:
                x = scg.sample(keys[i], dist)
            if per_site_costs:
                cost = jnp.square(x - 0.3)
                total = total + (scg.magic_box(tau) * cost if handwritten else cost)
        if per_site_costs:
            return total
        cost = jnp.square(x - 0.3)
        return scg.magic_box(tau) * cost if handwritten else cost

    return fn


def independent_program(n: int, handwritten: bool) -> Callable:
    """A fresh function with ``n`` independent Bernoulli sites, each with its own summed cost."""

    def fn(theta, key):
        keys = jax.random.split(key, n)
        total = jnp.zeros(())
        for i in range(n):
            dist = D.Bernoulli(logits=theta[0] + theta[1] * (i / n))
            if handwritten:
                x = lax.stop_gradient(dist.sample(keys[i]))
                total = total + scg.magic_box(dist.log_prob(x)) * jnp.square(x - 0.3)
            else:
                total = total + jnp.square(scg.sample(keys[i], dist) - 0.3)
        return total

    return fn


#: Part 2 of core_overhead.py: name -> (sites, handwritten) -> fresh program.
SCALING_PROGRAMS = {
    "chain, one cost (of the last draw)": lambda n, hand: chain_program(n, False, hand),
    "chain, a cost per site (summed)": lambda n, hand: chain_program(n, True, hand),
    "independent, a cost per site (summed)": independent_program,
}

# ------------------------------------------------------------------------------------------
# ELBO: N independent Bernoulli latents with a data plate, exact gradient by enumeration
# (variance_peers.py model A, peers.py model 2)

POINTS = 256
LOG_HALF = math.log(0.5)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def elbo_data(points: int = POINTS) -> jax.Array:
    """x_i = (2 b_i − 1) + ε_i with fixed keys; for 256 points the data of tests/test_elbo.py."""
    signs = 2.0 * jax.random.bernoulli(jax.random.key(2024), 0.5, (points,)) - 1.0
    return signs + jax.random.normal(jax.random.key(2025), (points,))


def elbo_log_joint(data, z):
    """log p(z_i) + log p(x_i | z_i) per point."""
    return LOG_HALF - 0.5 * (data - (2.0 * z - 1.0)) ** 2 - HALF_LOG_2PI


def elbo_loss(phi, key, data, detach=True, one_node=False, estimator="auto"):
    q = D.Bernoulli(logits=phi)
    z, log_q = scg.sample_and_log_prob(key, q, detach_log_prob=detach, estimator=estimator)
    terms = elbo_log_joint(data, z) - log_q
    if one_node:
        # A product with a value every z_i reaches makes each term one cost node that every
        # z_i influences (numerically ×1): the whole ELBO times the score of all of z.
        terms = terms * (1.0 + 0.0 * jnp.sum(z))
    return jnp.sum(terms)


def elbo_exact(phi, data):
    q = jax.nn.sigmoid(phi)
    log_q1, log_q0 = jax.nn.log_sigmoid(phi), jax.nn.log_sigmoid(-phi)
    one, zero = elbo_log_joint(data, 1.0) - log_q1, elbo_log_joint(data, 0.0) - log_q0
    return jnp.sum(q * one + (1 - q) * zero)


def elbo_exact_variances(data):
    """Exact mean per-coordinate variances at φ = 0 (q = 1/2), by enumerating z_i.

    Coordinate i of a per-point estimator is (z_i - 1/2) (c_i(z_i) + offset), minus the
    direct derivative z_i - 1/2 of log q when it is kept; c_i(z) = -(x_i - (2z - 1))² / 2.
    jax_scg's costs hold only the summands z_i reaches (offset 0); NumPyro's per-point cost
    also holds the constants log p(z_i) - log q(z_i) - ½ log 2π. The one-node estimator is
    (z_i - 1/2) E(z), E the whole ELBO with its constants.
    """
    data = np.asarray(data, np.float64)
    cost = {z: -0.5 * (data - (2.0 * z - 1.0)) ** 2 for z in (0.0, 1.0)}

    def per_point(offset, kept):
        g = {z: (z - 0.5) * (cost[z] + offset - (1.0 if kept else 0.0)) for z in (0.0, 1.0)}
        mean = 0.5 * (g[0.0] + g[1.0])
        return float((0.5 * ((g[0.0] - mean) ** 2 + (g[1.0] - mean) ** 2)).mean())

    constants = LOG_HALF - HALF_LOG_2PI - LOG_HALF  # log p(z) - ½ log 2π - log q(z), at q = ½
    term = {z: cost[z] + constants for z in (0.0, 1.0)}
    mean_term = 0.5 * (term[0.0] + term[1.0])
    total_second_moment = float(
        (0.5 * ((term[0.0] - mean_term) ** 2 + (term[1.0] - mean_term) ** 2)).sum()
        + mean_term.sum() ** 2
    )
    one_node = 0.25 * total_second_moment - (0.25 * (term[1.0] - term[0.0])) ** 2
    return {
        "jax_scg detached": per_point(0.0, False),
        "jax_scg log q kept": per_point(0.0, True),
        "jax_scg / NumPyro one node": float(one_node.mean()),
        "NumPyro plate": per_point(constants, False),
    }


def numpyro_elbo_grad(data, plate=True):
    """The ELBO gradient estimate of NumPyro's TraceGraph_ELBO, plate over points or not."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import TraceGraph_ELBO

    points = data.shape[0]

    def model(x):
        if plate:
            with numpyro.plate("points", points):
                z = numpyro.sample("z", dist.Bernoulli(probs=0.5))
                numpyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=x)
        else:
            z = numpyro.sample("z", dist.Bernoulli(probs=jnp.full(points, 0.5)).to_event(1))
            numpyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0).to_event(1), obs=x)

    def guide(x):
        phi = numpyro.param("phi", jnp.zeros(points))
        # probs=, not logits=: NumPyro 0.22's Bernoulli(logits=) log-prob gradient is wrong
        # at logits exactly 0 (the subgradient of its clip/abs at 0), and φ = 0 here.
        q = dist.Bernoulli(probs=jax.nn.sigmoid(phi))
        if plate:
            with numpyro.plate("points", points):
                numpyro.sample("z", q)
        else:
            numpyro.sample("z", q.to_event(1))

    elbo = TraceGraph_ELBO()

    def grad(phi, key):
        negative = lambda p: elbo.loss(key, {"phi": p}, model, guide, data)
        return -jax.grad(negative)(phi)

    return grad


def elbo_reached(data, z, phi):
    """The summands of log p(x_i, z_i) − log q(z_i) that z_i influences, per point.

    log p(x_i | z_i) = −½ (x_i − (2 z_i − 1))² − ½ log 2π and, with the parameters
    detached, log q(z_i) = z_i φ_i − softplus(φ_i); z_i reaches the first term of each.
    """
    return -0.5 * (data - (2.0 * z - 1.0)) ** 2 - z * lax.stop_gradient(phi)


def elbo_unreached(phi):
    """The summands that no latent influences, per point: log p(z_i) = log ½, −½ log 2π,
    softplus(φ_i) (the latter with no direct derivative, as ``detach_log_prob`` does)."""
    return LOG_HALF - HALF_LOG_2PI + jax.nn.softplus(lax.stop_gradient(phi))


def elbo_handwritten(phi, key, data):
    """Per-point DiCE: Σ_i ⊡(log q_i)·(reached_i) + Σ_i unreached_i (see the module text)."""
    q = D.Bernoulli(logits=phi)
    z = lax.stop_gradient(q.sample(key))
    boxed = scg.magic_box(q.log_prob(z)) * elbo_reached(data, z, phi)
    return jnp.sum(boxed + elbo_unreached(phi))


# ------------------------------------------------------------------------------------------
# SBN: a two-layer sigmoid belief net on binarised digits, no closed form (variance_peers.py
# model B, peers.py model 4)
#: The flat order of θ: ``ravel_pytree`` of a dict flattens its sorted keys.
SBN_NAMES = ("V1", "V2", "W1", "W2", "b1", "b2", "c1", "c2")

Z1, Z2, PIXELS = 16, 8, 64


def digits(count):
    """The first ``count`` scikit-learn digits, 8×8, binarised at pixel > 7."""
    from sklearn.datasets import load_digits

    return jnp.asarray(load_digits().data[:count] > 7, jnp.float32)


def sbn_params():
    """Fixed initial parameters, Normal(0, 0.1²): guide (V1, c1, V2, c2), model (W2, b2, W1, b1)."""
    shapes = {
        "V1": (Z1, PIXELS), "c1": (Z1,), "V2": (Z2, Z1), "c2": (Z2,),
        "W2": (Z1, Z2), "b2": (Z1,), "W1": (PIXELS, Z1), "b1": (PIXELS,),
    }  # fmt: skip
    keys = jax.random.split(jax.random.key(31), len(shapes))
    return {
        name: 0.1 * jax.random.normal(k, shape) for k, (name, shape) in zip(keys, shapes.items())
    }


def sbn_affine(z, w, b, matmul):
    """z @ w.T + b, or the same as a broadcast product summed over the input axis; in both
    forms jax_scg's per-element credit follows the image axis (as a plate would)."""
    if matmul:
        return z @ w.T + b
    return jnp.sum(z[:, None, :] * w, axis=-1) + b


def sbn_elbo(flat, key, x, unravel, matmul=True, baselines=None, estimator="auto"):
    """The ELBO of images ``x`` as a jax_scg program (θ flat; ``baselines`` per site name)."""
    p = unravel(flat)
    baselines = baselines or {}
    k1, k2 = jax.random.split(key)
    z1, log_q1 = scg.sample_and_log_prob(
        k1,
        D.Bernoulli(logits=x @ p["V1"].T + p["c1"]),
        detach_log_prob=True,
        estimator=estimator,
        baseline=baselines.get("z1"),
        name="z1",
    )
    z2, log_q2 = scg.sample_and_log_prob(
        k2,
        D.Bernoulli(logits=sbn_affine(z1, p["V2"], p["c2"], matmul)),
        detach_log_prob=True,
        estimator=estimator,
        baseline=baselines.get("z2"),
        name="z2",
    )
    log_p = (
        jnp.sum(D.Bernoulli(logits=jnp.zeros(Z2)).log_prob(z2))
        + jnp.sum(D.Bernoulli(logits=sbn_affine(z2, p["W2"], p["b2"], matmul)).log_prob(z1))
        + jnp.sum(D.Bernoulli(logits=sbn_affine(z1, p["W1"], p["b1"], matmul)).log_prob(x))
    )
    return log_p - jnp.sum(log_q1) - jnp.sum(log_q2)


def sbn_elbo_transpose_free(flat, key, x, unravel):
    """:func:`sbn_elbo` with every ``z @ w.T`` written as one ``dot_general`` contracting w's
    dimension 1: no transpose of w (``sbn_profile.py``'s "scg-nt")."""

    def affine(z, w, b):
        return jax.lax.dot_general(z, w, (((z.ndim - 1,), (1,)), ((), ()))) + b

    p, (k1, k2) = unravel(flat), jax.random.split(key)

    def site(k, logits, name):
        return scg.sample_and_log_prob(
            k, D.Bernoulli(logits=logits), detach_log_prob=True, name=name
        )

    z1, log_q1 = site(k1, affine(x, p["V1"], p["c1"]), "z1")
    z2, log_q2 = site(k2, affine(z1, p["V2"], p["c2"]), "z2")
    log_p = (
        jnp.sum(D.Bernoulli(logits=jnp.zeros(z2.shape[-1])).log_prob(z2))
        + jnp.sum(D.Bernoulli(logits=affine(z2, p["W2"], p["b2"])).log_prob(z1))
        + jnp.sum(D.Bernoulli(logits=affine(z1, p["W1"], p["b1"])).log_prob(x))
    )
    return log_p - jnp.sum(log_q1) - jnp.sum(log_q2)


def sbn_guide_mask() -> np.ndarray:
    """True at the guide's coordinates (V1, c1, V2, c2) of the flat θ."""
    is_guide = {k: jnp.full(v.shape, k[0] in "Vc", bool) for k, v in sbn_params().items()}
    return np.asarray(ravel_pytree(is_guide)[0])


def numpyro_sbn_model(x):
    """The sigmoid belief net as a NumPyro model, plate over images."""
    import numpyro
    import numpyro.distributions as dist

    images = x.shape[0]
    init = sbn_params()  # start values only: the loss substitutes the flat vector's

    def model(x):
        w2, b2 = numpyro.param("W2", init["W2"]), numpyro.param("b2", init["b2"])
        w1, b1 = numpyro.param("W1", init["W1"]), numpyro.param("b1", init["b1"])
        with numpyro.plate("images", images):
            z2 = numpyro.sample("z2", dist.Bernoulli(probs=jnp.full(Z2, 0.5)).to_event(1))
            z1 = numpyro.sample("z1", dist.Bernoulli(logits=z2 @ w2.T + b2).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=z1 @ w1.T + b1).to_event(1), obs=x)

    return model


def numpyro_sbn_guide(x):
    """The guide q(z1 | x) q(z2 | z1) as a NumPyro guide, plate over images."""
    import numpyro
    import numpyro.distributions as dist

    images = x.shape[0]
    init = sbn_params()

    def guide(x):
        v1, c1 = numpyro.param("V1", init["V1"]), numpyro.param("c1", init["c1"])
        v2, c2 = numpyro.param("V2", init["V2"]), numpyro.param("c2", init["c2"])
        with numpyro.plate("images", images):
            z1 = numpyro.sample("z1", dist.Bernoulli(logits=x @ v1.T + c1).to_event(1))
            numpyro.sample("z2", dist.Bernoulli(logits=z1 @ v2.T + c2).to_event(1))

    return guide


def numpyro_sbn_grad(x, unravel):
    """The ELBO gradient estimate of NumPyro's TraceGraph_ELBO for model B, plate over images."""
    from numpyro.infer import TraceGraph_ELBO

    model, guide = numpyro_sbn_model(x), numpyro_sbn_guide(x)
    elbo = TraceGraph_ELBO()

    def grad(flat, key):
        negative = lambda f: elbo.loss(key, unravel(f), model, guide, x)
        return -jax.grad(negative)(flat)

    return grad


def sbn_handwritten(flat, key, x, unravel):
    """DiCE by hand with jax_scg's credit: per image, and within an image per element.

    In image i, with logits a = x V1ᵀ + c1 of q(z1), b = z1 V2ᵀ + c2 of q(z2),
    l2 = z2 W2ᵀ + b2 of p(z1 | z2), l1 = z1 W1ᵀ + b1 of p(x | z1):

    - log p(z1 | z2) is reached by all of z1 and z2: box ⊡(τ1 + τ2), τ the row's log q sums;
    - log p(x | z1) = Σ_p x_p (Σ_j z1_j W1_pj + b1_p) − softplus(l1_p): the product
      x_p z1_j W1_pj is reached by z1_j alone (jax_scg follows the linear matmul per
      element), x_p b1_p by nothing, softplus(l1) by all of z1 (box ⊡(τ1));
    - −log q(z1) = −z1_j a_j + softplus(a_j), parameters detached: z1_j a_j is reached by z1_j
      (box ⊡(log q(z1_j))), softplus(a) by nothing;
    - −log q(z2) = −z2_k b_k + softplus(b_k): z2_k b_k by z1 and z2_k (box ⊡(τ1 + log q(z2_k))),
      softplus(b) by z1 (box ⊡(τ1));
    - log p(z2) = z2·0 − log 2 under the Bernoulli(½) prior: a constant.
    """
    p = unravel(flat)
    k1, k2 = jax.random.split(key)
    a = x @ p["V1"].T + p["c1"]
    q1 = D.Bernoulli(logits=a)
    z1 = lax.stop_gradient(q1.sample(k1))
    b = z1 @ p["V2"].T + p["c2"]
    q2 = D.Bernoulli(logits=b)
    z2 = lax.stop_gradient(q2.sample(k2))
    lq1, lq2 = q1.log_prob(z1), q2.log_prob(z2)  # (images, Z1), (images, Z2)
    box1 = scg.magic_box(lq1)
    tau1 = jnp.sum(lq1, -1, keepdims=True)
    tau2 = jnp.sum(lq2, -1, keepdims=True)
    a, b = lax.stop_gradient(a), lax.stop_gradient(b)
    log_p_z1 = D.Bernoulli(logits=z2 @ p["W2"].T + p["b2"]).log_prob(z1)
    x_dot_l1 = x * ((box1 * z1) @ p["W1"].T)  # each z1_j's own products only
    softplus_l1 = jnp.sum(_softplus(z1 @ p["W1"].T + p["b1"]), -1, keepdims=True)
    boxed = (
        scg.magic_box(tau1 + tau2) * jnp.sum(log_p_z1, -1, keepdims=True)
        - scg.magic_box(tau1) * (softplus_l1 - jnp.sum(_softplus(b), -1, keepdims=True))
        - jnp.sum(box1 * z1 * a, -1, keepdims=True)
        - jnp.sum(scg.magic_box(tau1 + lq2) * z2 * b, -1, keepdims=True)
    )
    unreached = jnp.sum(x * p["b1"]) + jnp.sum(_softplus(a)) + x.shape[0] * Z2 * LOG_HALF
    return jnp.sum(boxed) + jnp.sum(x_dot_l1) + unreached


def sbn_inputs(images: int = 64):
    """(binarised digits, flat float32 θ of :func:`sbn_params`, unravel)."""
    flat, unravel = ravel_pytree(sbn_params())
    return digits(images), jnp.asarray(flat, jnp.float32), unravel


# ------------------------------------------------------------------------------------------
# Walk: a T-step random-walk policy rollout in lax.scan (peers.py model 3)

WALK_THETA = (0.3, -1.0)
WALK_TOP_STATE = 7.0  # states 0, 1, ..., 7


def walk_logits(theta, state):
    """Logit of action 1 in ``state`` (a float in 0..7)."""
    return theta[0] + theta[1] * (state / WALK_TOP_STATE - 0.5)


def walk_step(state, action):
    """s' = clip(s + 2a − 1, 0, 7) and its cost r = (s'/7 − 0.6)²."""
    new_state = jnp.clip(state + 2.0 * action - 1.0, 0.0, WALK_TOP_STATE)
    return new_state, (new_state / WALK_TOP_STATE - 0.6) ** 2


def walk_loss(theta, key, steps):
    """The jax_scg program: per-step costs stacked by the scan and summed (reward-to-go)."""
    return scan_rollout(walk_logits, walk_step, theta, key, steps)


def walk_handwritten(theta, key, steps):
    """Reward-to-go DiCE by hand: Σ_t ⊡(Σ_{u ≤ t} log π(a_u | s_u)) r_t."""
    return scan_rollout_handwritten(walk_logits, walk_step, theta, key, steps)


def walk_exact(theta, steps):
    """E[Σ_t r_t] by forward dynamic programming over the distribution p_t(s) of the state."""
    states = jnp.arange(8, dtype=jnp.float32)
    up, up_cost = walk_step(states, 1.0)
    down, down_cost = walk_step(states, 0.0)
    p_up = jax.nn.sigmoid(walk_logits(theta, states))
    expected_cost = p_up * up_cost + (1.0 - p_up) * down_cost  # per state
    transition = p_up[:, None] * jax.nn.one_hot(up.astype(jnp.int32), 8) + (1.0 - p_up)[
        :, None
    ] * jax.nn.one_hot(down.astype(jnp.int32), 8)

    def body(p, _):
        return p @ transition, p @ expected_cost

    _, costs = lax.scan(body, jax.nn.one_hot(0, 8), None, length=steps)
    return costs.sum()


# ------------------------------------------------------------------------------------------
# Toys of variance.py (and, in torch, storchastic_rows.py): the REBAR toy, a 16-step policy
# rollout with value baselines, the 10-way Categorical toy. storchastic_rows.py (torch, no JAX)
# repeats these constants.

REBAR_TARGETS = (0.45, 0.499)
POLICY_THETA = (0.2, -0.5)


def rebar_toy(t):
    """(loss, exact objective, θ = 0) of E[(b − t)²], b ~ Bernoulli(σ(θ)) (Tucker et al.'s toy)."""

    def loss(theta, key, estimator="score_function", baseline=None, name=None):
        dist = D.Bernoulli(logits=theta)
        b = scg.sample(key, dist, estimator=estimator, baseline=baseline, name=name)
        return (b - t) ** 2

    def exact(theta):
        p = jax.nn.sigmoid(theta)
        return p * (1 - t) ** 2 + (1 - p) * t**2

    return loss, exact, jnp.asarray(0.0)


POLICY_STEPS = 16


def policy_rollout(theta, key, estimator="score_function", baseline=None):
    """16 Bernoulli actions in ``lax.scan``, cost (a − s/2)² per step; ``baseline="value"``:
    the hand-set value baseline V(s) = 0.8 s + 1."""

    def body(state, k):
        value = 0.8 * state + 1.0 if baseline == "value" else None
        a = scg.sample(
            k, D.Bernoulli(logits=theta[0] + theta[1] * state), estimator=estimator, baseline=value
        )
        return 0.7 * state + a, (a - 0.5 * state) ** 2

    return lax.scan(body, 0.0, jax.random.split(key, POLICY_STEPS))[1].sum()


def policy_rollout_reference(theta, n=200_000):
    """The policy's gradient from a large score-function run with a value baseline."""
    keys = jax.random.split(jax.random.key(12345), n)
    grads = jax.jit(
        jax.vmap(scg.grad(functools.partial(policy_rollout, baseline="value")), (None, 0))
    )
    g = np.asarray(grads(theta, keys))
    return g.mean(0), g.std(0) / np.sqrt(n)


def policy_rollout_with_critic(theta, psi, key):
    """:func:`policy_rollout` with the linear value baseline ψ0 + ψ1 s (``critic_argnums=1``)."""

    def body(state, k):
        a = scg.sample(
            k, D.Bernoulli(logits=theta[0] + theta[1] * state), baseline=psi[0] + psi[1] * state
        )
        return 0.7 * state + a, (a - 0.5 * state) ** 2

    return lax.scan(body, 0.0, jax.random.split(key, POLICY_STEPS))[1].sum()


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


# ------------------------------------------------------------------------------------------
# Language models and a deep MLP (rewrite_time.py)

VOCAB, WIDTH, HEADS, TOKENS = 16, 32, 2, 64
REWARD = np.linspace(-1.0, 1.0, VOCAB).astype(np.float32)
ENTROPY_BONUS = 0.01
MLP_WIDTH, MLP_NOISE = 16, 0.1


# Each program takes ``draw(key, logits_or_mean, kind)``: the site, or a baseline's draw.


def lm_params(layers: int, tokens: int) -> dict:
    keys = iter(jax.random.split(jax.random.key(0), 2 + 6 * layers))
    init = lambda shape: 0.3 * jax.random.normal(next(keys), shape) / np.sqrt(shape[0])
    blocks = [
        {
            n: init(s)
            for n, s in [
                ("q", (WIDTH, WIDTH)),
                ("k", (WIDTH, WIDTH)),
                ("v", (WIDTH, WIDTH)),
                ("o", (WIDTH, WIDTH)),
                ("up", (WIDTH, 4 * WIDTH)),
                ("down", (4 * WIDTH, WIDTH)),
            ]
        }
        for _ in range(layers)
    ]
    return {"embed": init((VOCAB, WIDTH)), "pos": init((tokens + 1, WIDTH)), "blocks": blocks}


def _norm(x):
    x = x - x.mean(-1, keepdims=True)
    return x * lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-5)


def lm_logits(params, buffer, t):
    """Next-token logits at position ``t`` of the token buffer (causal attention)."""
    n = buffer.shape[0]
    x = params["embed"][buffer] + params["pos"]
    causal = jnp.tril(jnp.ones((n, n), bool))
    for block in params["blocks"]:
        h = _norm(x)
        q, k, v = (jnp.reshape(h @ block[w], (n, HEADS, -1)) for w in "qkv")
        scores = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(WIDTH // HEADS)
        attention = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        x = x + jnp.reshape(jnp.einsum("hqk,khd->qhd", attention, v), (n, WIDTH)) @ block["o"]
        x = x + jax.nn.gelu(_norm(x) @ block["up"]) @ block["down"]
    h = lax.dynamic_index_in_dim(_norm(x), t, keepdims=False)
    return h @ params["embed"].T


def _token_step(params, buffer, t, key, draw):
    """One sampling step: the token at ``t + 1``, its cost, and its log-probability."""
    logits = lm_logits(params, buffer, t)
    token = draw(key, logits, "categorical")
    log_p = jax.nn.log_softmax(logits)
    entropy = -jnp.sum(jnp.exp(log_p) * log_p)
    buffer = lax.dynamic_update_index_in_dim(buffer, token, t + 1, 0)
    return buffer, (jnp.asarray(REWARD)[token], -ENTROPY_BONUS * entropy), log_p[token]


def _dice_cost(tau_before, tau, reward, bonus, dice: bool):
    """The step's cost; hand-written DiCE boxes the reward with every token up to this one,
    the entropy bonus (computed before this token is drawn) with the earlier ones."""
    if not dice:
        return reward + bonus
    return scg.magic_box(tau) * reward + scg.magic_box(tau_before) * bonus


def lm_scan(params, key, draw, dice: bool = False):
    tokens = params["pos"].shape[0] - 1

    def step(carry, xs):
        buffer, tau = carry
        buffer, (reward, bonus), lp = _token_step(params, buffer, xs[0], xs[1], draw)
        return (buffer, tau + lp), _dice_cost(tau, tau + lp, reward, bonus, dice)

    init = (jnp.zeros(tokens + 1, jnp.int32), jnp.zeros(()))
    _, costs = lax.scan(step, init, (jnp.arange(tokens), jax.random.split(key, tokens)))
    return costs.sum()


def lm_unrolled(params, key, draw, dice: bool = False):
    tokens = params["pos"].shape[0] - 1
    keys = jax.random.split(key, tokens)
    buffer, tau, total = jnp.zeros(tokens + 1, jnp.int32), jnp.zeros(()), jnp.zeros(())
    for t in range(tokens):
        buffer, (reward, bonus), lp = _token_step(params, buffer, t, keys[t], draw)
        total = total + _dice_cost(tau, tau + lp, reward, bonus, dice)
        tau = tau + lp
    return total


def mlp_params(depth: int) -> dict:
    keys = jax.random.split(jax.random.key(1), depth)
    return {
        "w": [jax.random.normal(k, (MLP_WIDTH, MLP_WIDTH)) / np.sqrt(MLP_WIDTH) for k in keys],
        "b": [jnp.zeros(MLP_WIDTH) for _ in keys],
    }


def mlp(params, key, draw, dice: bool = False):
    del dice  # pathwise sites: the hand-written surrogate is the plain program
    keys = jax.random.split(key, len(params["w"]))
    x = jnp.linspace(-1.0, 1.0, MLP_WIDTH)
    for w, b, k in zip(params["w"], params["b"], keys):
        x = draw(k, jnp.tanh(x @ w + b), "normal")
    return jnp.sum(jnp.square(x - 0.5))


def _dist(param, kind):
    return D.Categorical(logits=param) if kind == "categorical" else D.Normal(param, MLP_NOISE)


def scg_draw(key, param, kind):
    return scg.sample(key, _dist(param, kind))


def plain_draw(key, param, kind):
    x = _dist(param, kind).sample(key)
    return lax.stop_gradient(x) if kind == "categorical" else x


def program_grad(program: Callable, system: str) -> Callable:
    """A new, un-jitted gradient function of ``(params, key)`` for ``system``."""
    if system == "scg":
        return scg.grad(lambda params, key: program(params, key, scg_draw))
    dice = system == "dice"
    return jax.grad(lambda params, key: program(params, key, plain_draw, dice))
