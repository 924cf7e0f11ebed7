"""Example models (the paper's Figure 1, a small MDP) with exact expectations.

Each model is ``fn(theta, key) -> scalar`` with ``exact(theta) = E[fn(theta, key)]`` computed
independently of jax_scg: by a closed form, or by enumerating the discrete choices with
probabilities written out with ``jax.nn`` (never with the library's own log-probabilities).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D


class Model(NamedTuple):
    name: str
    fn: Callable
    exact: Callable
    theta: jnp.ndarray
    hessian: bool = True  # whether jax.hessian of the surrogate is tested


def _split(key, n):
    return jax.random.split(key, n)


# Figure 1 of Schulman et al. (2015). Costs are smooth functions of the sampled values.


def graph1(theta, key):
    """θ → □x → ○y → f."""
    x = theta[0] * theta[1]
    y = scg.sample(key, D.Bernoulli(logits=x))
    return (y + 0.5) ** 2


def graph1_exact(theta):
    p = jax.nn.sigmoid(theta[0] * theta[1])
    return p * 2.25 + (1 - p) * 0.25


def graph2(theta, key):
    """θ → ○x → □y → f."""
    x = scg.sample(key, D.Bernoulli(logits=theta[0]))
    y = x * theta[1] + 1.0
    return y**2


def graph2_exact(theta):
    p = jax.nn.sigmoid(theta[0])
    return p * (theta[1] + 1.0) ** 2 + (1 - p) * 1.0


def graph3(theta, key):
    """θ → ○x → ○y → f, with a categorical x."""
    k1, k2 = _split(key, 2)
    x = scg.sample(k1, D.Categorical(logits=theta[:3])).astype(theta.dtype)
    y = scg.sample(k2, D.Bernoulli(logits=theta[3] * x - 1.0))
    return (y + x) ** 2


def graph3_exact(theta):
    px = jax.nn.softmax(theta[:3])
    total = 0.0
    for x in range(3):
        py = jax.nn.sigmoid(theta[3] * x - 1.0)
        total += px[x] * (py * (1.0 + x) ** 2 + (1 - py) * x**2)
    return total


def graph4(theta, key):
    """θ → ○x → f and θ → □y → f."""
    x = scg.sample(key, D.Bernoulli(logits=theta[0]))
    y = theta[1] ** 2
    return (x - y) ** 2


def graph4_exact(theta):
    p = jax.nn.sigmoid(theta[0])
    y = theta[1] ** 2
    return p * (1 - y) ** 2 + (1 - p) * y**2


X0 = 0.5


def graph5(theta, key):
    """x0 → ○x1 → ○x2 with θ into both, costs f1(x1) and f2(x2)."""
    k1, k2 = _split(key, 2)
    x1 = scg.sample(k1, D.Bernoulli(logits=theta[0] + X0))
    x2 = scg.sample(k2, D.Bernoulli(logits=theta[1] * x1 + theta[0]))
    f1 = (x1 - 0.2) ** 2
    f2 = (x2 + x1 - 0.5) ** 2
    return f1 + f2


def graph5_exact(theta):
    total = 0.0
    for x1, x2 in itertools.product([0.0, 1.0], repeat=2):
        p1 = jax.nn.sigmoid(theta[0] + X0)
        p2 = jax.nn.sigmoid(theta[1] * x1 + theta[0])
        w = (p1 if x1 else 1 - p1) * (p2 if x2 else 1 - p2)
        total += w * ((x1 - 0.2) ** 2 + (x2 + x1 - 0.5) ** 2)
    return total


def graph5_handwritten(theta, key):
    """The causal DiCE surrogate of graph 5 written by hand: ⊡(x1) f1 + ⊡(x1, x2) f2."""
    k1, k2 = _split(key, 2)
    d1 = D.Bernoulli(logits=theta[0] + X0)
    x1 = lax.stop_gradient(d1.sample(k1))
    d2 = D.Bernoulli(logits=theta[1] * x1 + theta[0])
    x2 = lax.stop_gradient(d2.sample(k2))
    lp1, lp2 = d1.log_prob(x1), d2.log_prob(x2)
    f1 = (x1 - 0.2) ** 2
    f2 = (x2 + x1 - 0.5) ** 2
    return scg.magic_box(lp1) * f1 + scg.magic_box(lp1 + lp2) * f2


def mixed(theta, key):
    """The issue's example: a Bernoulli site, then a pathwise Normal site."""
    k1, k2 = _split(key, 2)
    x = scg.sample(k1, D.Bernoulli(logits=theta[0]))
    y = scg.sample(k2, D.Normal(theta[1] * x, 1.0))
    return (y - 1.0) ** 2 + 3.0 * x


def mixed_exact(theta):
    p = jax.nn.sigmoid(theta[0])
    return p * ((theta[1] - 1.0) ** 2 + 1.0 + 3.0) + (1 - p) * 2.0


def normal_score(theta, key):
    """A continuous site with the score-function estimator: E[y²] = μ² + σ²."""
    y = scg.sample(key, D.Normal(theta[0], jnp.exp(theta[1])), estimator="score_function")
    return y**2


def normal_exact(theta):
    return theta[0] ** 2 + jnp.exp(2 * theta[1])


def normal_pathwise(theta, key):
    y = scg.sample(key, D.Normal(theta[0], jnp.exp(theta[1])))
    return y**2


def gamma_pathwise(theta, key):
    """Implicit reparameterisation: E[y²] = α(α + 1)/β² for y ~ Gamma(α, β)."""
    y = scg.sample(key, D.Gamma(theta[0], theta[1]))
    return y**2


def gamma_exact(theta):
    return theta[0] * (theta[0] + 1.0) / theta[1] ** 2


# A policy-gradient MDP in lax.scan: Bernoulli actions, state carried, rewards per step.

MDP_STEPS = 4


def _mdp_step(theta, state, action):
    reward = (action - 0.3 * state) ** 2 + 0.1 * state * action
    return 0.5 * state + action, reward


def mdp_stacked(theta, key):
    """Rewards stacked by scan and summed outside."""

    def body(state, k):
        a = scg.sample(k, D.Bernoulli(logits=theta[0] + theta[1] * state))
        return _mdp_step(theta, state, a)

    _, rewards = lax.scan(body, 0.0, _split(key, MDP_STEPS))
    return rewards.sum()


def mdp_carried(theta, key):
    """Rewards accumulated in the carry: total = total + r_t."""

    def body(carry, k):
        state, total = carry
        a = scg.sample(k, D.Bernoulli(logits=theta[0] + theta[1] * state))
        state, r = _mdp_step(theta, state, a)
        return (state, total + r), None

    (_, total), _ = lax.scan(body, (0.0, 0.0), _split(key, MDP_STEPS))
    return total


def mdp_exact(theta):
    total = 0.0
    for actions in itertools.product([0.0, 1.0], repeat=MDP_STEPS):
        state, weight, ret = 0.0, 1.0, 0.0
        for a in actions:
            p = jax.nn.sigmoid(theta[0] + theta[1] * state)
            weight = weight * (p if a else 1 - p)
            state, r = _mdp_step(theta, state, a)
            ret = ret + r
        total += weight * ret
    return total


def _mdp_log_probs_and_rewards(theta, key):
    """The MDP's per-step log π(a_t | s_t) (draws held constant) and rewards, by hand."""

    def body(state, k):
        d = D.Bernoulli(logits=theta[0] + theta[1] * state)
        a = lax.stop_gradient(d.sample(k))
        state, r = _mdp_step(theta, state, a)
        return state, (d.log_prob(a), r)

    return lax.scan(body, 0.0, _split(key, MDP_STEPS))[1]


def mdp_reward_to_go(theta, key):
    """Hand-written reward-to-go DiCE surrogate: Σ_t ⊡(log π_1 + … + log π_t) r_t."""
    log_probs, rewards = _mdp_log_probs_and_rewards(theta, key)
    return jnp.sum(scg.magic_box(jnp.cumsum(log_probs)) * rewards)


def mdp_all_rewards(theta, key):
    """Hand-written surrogate without causality: ⊡(all log π) Σ_t r_t (higher variance)."""
    log_probs, rewards = _mdp_log_probs_and_rewards(theta, key)
    return scg.magic_box(jnp.sum(log_probs)) * jnp.sum(rewards)


FIGURE1 = [
    Model("graph1", graph1, graph1_exact, jnp.array([0.4, -0.7])),
    Model("graph2", graph2, graph2_exact, jnp.array([0.3, 0.8])),
    Model("graph3", graph3, graph3_exact, jnp.array([0.2, -0.3, 0.5, 0.7])),
    Model("graph4", graph4, graph4_exact, jnp.array([-0.2, 0.9])),
    Model("graph5", graph5, graph5_exact, jnp.array([0.3, -0.6])),
]

CONTINUOUS = [
    Model("mixed", mixed, mixed_exact, jnp.array([0.3, 0.7])),
    Model("normal_score", normal_score, normal_exact, jnp.array([0.5, -0.3])),
    Model("normal_pathwise", normal_pathwise, normal_exact, jnp.array([0.5, -0.3])),
    Model("gamma_pathwise", gamma_pathwise, gamma_exact, jnp.array([2.0, 1.5])),
]

MDP = [
    Model("mdp_stacked", mdp_stacked, mdp_exact, jnp.array([0.2, -0.4])),
    Model("mdp_carried", mdp_carried, mdp_exact, jnp.array([0.2, -0.4])),
]

ALL = FIGURE1 + CONTINUOUS + MDP
