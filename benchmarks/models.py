"""The small JAX models of the benchmarks, each defined once, with its hand-written surrogates.

For every model: its jax_scg program (``scg.grad`` of it is one gradient estimate), the
hand-written DiCE surrogate(s) with the same credit assignment (``jax.grad`` of them gives
the same estimate from the same key), its exact or enumerated reference where there is one,
and its data. The scripts import from here; ``peer_models.py`` is the peer suite's registry.
The two ELBO models (N Bernoulli latents, the sigmoid belief net on digits) are in
``models_elbo.py``, the transformer LM and deep MLP programs of ``rewrite_time.py`` in
``models_large.py``.

* **bits** (``core_overhead.py`` model a): 64 Bernoulli bits in one site, one cost.
* **rollout** (``core_overhead.py`` model b, ``loops.py`` part A): a Bernoulli policy in
  ``lax.scan``, a reward per step, reward-to-go credit; hand-written in three forms (cumsum
  after the scan, running sum carried in it, loop-fissioned).
* **small SBN** (``core_overhead.py`` model c): 16 + 8 units, two costs.
* **chains / independent sites** of any length (``core_overhead.py`` part 2,
  ``compile_time.py``).
* **walk**: the T-step random-walk rollout over 8 states (``peers.py`` model 3), exact by
  dynamic programming.
* **toys** of ``variance.py``: the REBAR toy, a 16-step policy rollout, the 10-way
  Categorical toy, each with its exact (or large Monte Carlo) gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

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
