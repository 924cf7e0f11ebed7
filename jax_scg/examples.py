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


# ------------------------------------------------------------------------------------------
# The iterated prisoner's dilemma (IPD) and LOLA-DiCE (Foerster et al. 2018, section 5).
#
# Two agents play ``steps`` rounds of the prisoner's dilemma. Each has a memory-one policy:
# five logits, ``sigmoid(theta[s])`` being the probability that it cooperates in state ``s``
# (0: the first round; 1, 2, 3, 4: the previous joint action was CC, CD, DC, DD, the agent's
# own action first). Actions are floats, 1.0 for cooperate (C) and 0.0 for defect (D).
# Agent 2 sees the joint state with the roles swapped: agent 1's CD is agent 2's DC.

#: The discount of the DiCE paper's IPD experiments.
IPD_GAMMA = 0.96
#: The number of states of a memory-one policy (the start and four joint actions).
IPD_STATES = 5
#: Per-round rewards ``(agent 1, agent 2)`` for the joint actions CC, CD, DC, DD (agent 1's
#: action first), as in the DiCE paper.
IPD_PAYOFFS = ((-1.0, -1.0), (-3.0, 0.0), (0.0, -3.0), (-2.0, -2.0))
#: ``IPD_SWAP[s]``: the state that agent 1's state ``s`` is for agent 2 (CD and DC swap).
IPD_SWAP = (0, 1, 3, 2, 4)


class IPDEpisodes(NamedTuple):
    """A batch of IPD episodes; every field has shape ``(steps, batch)``.

    Attributes:
      states1: agent 1's state (0 to 4) before each round.
      states2: agent 2's state before each round (``IPD_SWAP`` of ``states1``).
      actions1: agent 1's actions (1.0 cooperate, 0.0 defect).
      actions2: agent 2's actions.
      rewards1: agent 1's undiscounted rewards.
      rewards2: agent 2's undiscounted rewards.
    """

    states1: jnp.ndarray
    states2: jnp.ndarray
    actions1: jnp.ndarray
    actions2: jnp.ndarray
    rewards1: jnp.ndarray
    rewards2: jnp.ndarray


def ipd_table(table, states):
    """``table[states]``: a per-state table (logits, values) looked up for every episode.

    Examples:
      >>> import jax.numpy as jnp
      >>> ipd_table(jnp.arange(5.0), jnp.array([0, 4, 2])).tolist()
      [0.0, 4.0, 2.0]
    """
    return jnp.asarray(table)[states]


def ipd_rewards(actions1, actions2):
    """The rewards ``(r1, r2)`` of one round, elementwise in the actions (1.0 = cooperate).

    Examples:
      >>> import jax.numpy as jnp
      >>> r1, r2 = ipd_rewards(jnp.array([1.0, 1.0, 0.0, 0.0]), jnp.array([1.0, 0.0, 1.0, 0.0]))
      >>> r1.tolist(), r2.tolist()
      ([-1.0, -3.0, 0.0, -2.0], [-1.0, 0.0, -3.0, -2.0])
    """
    outcomes = (
        actions1 * actions2,
        actions1 * (1 - actions2),
        (1 - actions1) * actions2,
        (1 - actions1) * (1 - actions2),
    )
    r1 = sum(o * payoff[0] for o, payoff in zip(outcomes, IPD_PAYOFFS))
    r2 = sum(o * payoff[1] for o, payoff in zip(outcomes, IPD_PAYOFFS))
    return r1, r2


def ipd_next_states(actions1, actions2):
    """The states ``(s1, s2)`` after a round: 1 + 2·[own action is D] + [other's is D].

    Examples:
      >>> import jax.numpy as jnp
      >>> s1, s2 = ipd_next_states(jnp.array([1.0, 1.0, 0.0]), jnp.array([1.0, 0.0, 0.0]))
      >>> s1.tolist(), s2.tolist()  # CC, CD, DD for agent 1; CC, DC, DD for agent 2
      ([1, 2, 4], [1, 3, 4])
    """
    s1 = (1 + 2 * (1 - actions1) + (1 - actions2)).astype(jnp.int32)
    s2 = (1 + 2 * (1 - actions2) + (1 - actions1)).astype(jnp.int32)
    return s1, s2


def ipd_rollout(theta1, theta2, key, *, steps, batch, gamma=IPD_GAMMA, values=None, agent=1):
    """Plays ``batch`` IPD episodes of ``steps`` rounds; a program that samples.

    A ``lax.scan`` over rounds, the ``batch`` episodes in parallel inside it; each round draws
    both agents' actions with ``scg.sample(k, D.Bernoulli(logits=...))``, one ``(batch,)``
    site per agent. Called normally it just plays; inside a loss given to ``scg.grad`` (see
    :func:`ipd_objective`) the draws are score-function sites, and each action is credited
    with the rewards of its own episode from its round on.

    Args:
      theta1: agent 1's five logits (probability of cooperating in each state).
      theta2: agent 2's five logits, in agent 2's own states.
      key: a PRNG key (split into one key per round, then one per agent).
      steps: rounds per episode.
      batch: episodes played in parallel.
      gamma: the discount, used only by the baseline.
      values: optional five state values of ``agent`` (its expected discounted return from
        each of its states). Both sites of round ``t`` then get the baseline
        ``gamma**t * values[s_t] / batch``: the objective discounts from round 0 and averages
        over the batch, so that is the part of the objective that the round's actions
        influence, as the value predicts it.
      agent: whose values ``values`` are (1 or 2).

    Returns:
      An :class:`IPDEpisodes`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> episodes = ipd_rollout(jnp.zeros(5), jnp.zeros(5), jax.random.key(0), steps=3, batch=2)
      >>> episodes.rewards1.shape, episodes.states1[0].tolist()
      ((3, 2), [0, 0])
    """
    if agent not in (1, 2):
        raise ValueError(f"agent must be 1 or 2, got {agent!r}")

    def body(carry, inputs):
        s1, s2 = carry
        k, t = inputs
        k1, k2 = jax.random.split(k)
        b = None
        if values is not None:
            b = gamma**t * ipd_table(values, s1 if agent == 1 else s2) / batch
        a1 = scg.sample(k1, D.Bernoulli(logits=ipd_table(theta1, s1)), baseline=b)
        a2 = scg.sample(k2, D.Bernoulli(logits=ipd_table(theta2, s2)), baseline=b)
        r1, r2 = ipd_rewards(a1, a2)
        return ipd_next_states(a1, a2), IPDEpisodes(s1, s2, a1, a2, r1, r2)

    start = jnp.zeros(batch, jnp.int32)
    rounds = (jax.random.split(key, steps), jnp.arange(steps))
    return lax.scan(body, (start, start), rounds)[1]


def ipd_objective(theta1, theta2, key, *, agent=1, steps, batch, gamma=IPD_GAMMA, values=None):
    """One agent's discounted return, averaged over a batch of episodes (a DiCE objective).

    The sign is that of a **return** (higher is better; the rewards are negative): the value
    is an unbiased estimate of ``E[R]``, ``R = Σ_t gamma**t r_t``, and ``scg.grad`` of this
    function is an unbiased estimate of the gradient of ``E[R]``, the direction of ascent
    (derivatives of every order are unbiased too). To descend with an optimiser, negate it.

    Args:
      theta1: agent 1's logits.
      theta2: agent 2's logits.
      key: a PRNG key.
      agent: whose return (1 or 2).
      steps: rounds per episode.
      batch: episodes.
      gamma: the discount.
      values: optional state values of ``agent``, a baseline (see :func:`ipd_rollout`);
        they change the variance of the estimates, not their mean nor the value.

    Returns:
      A scalar: the mean over the batch of the agent's discounted return.

    Examples:
      >>> import jax, jax.numpy as jnp, jax_scg as scg
      >>> objective = lambda t1, t2, key: ipd_objective(t1, t2, key, steps=3, batch=2)
      >>> g = scg.grad(objective)(jnp.zeros(5), jnp.zeros(5), jax.random.key(0))
      >>> g.shape
      (5,)
    """
    episodes = ipd_rollout(
        theta1, theta2, key, steps=steps, batch=batch, gamma=gamma, values=values, agent=agent
    )
    rewards = episodes.rewards1 if agent == 1 else episodes.rewards2
    discounts = gamma ** jnp.arange(steps, dtype=rewards.dtype)
    return jnp.mean(jnp.sum(discounts[:, None] * rewards, axis=0))


def _ipd_chain(theta1, theta2):
    """The joint-action distribution of the first round, and the transition matrix.

    Joint actions and states are in agent 1's order (CC, CD, DC, DD); row ``i`` of the
    transition matrix is the distribution of the next joint action after joint action ``i``.
    """
    p1 = jax.nn.sigmoid(jnp.asarray(theta1))  # P(agent 1 cooperates | its state)
    p2 = jax.nn.sigmoid(jnp.asarray(theta2))[jnp.array(IPD_SWAP)]  # agent 2's, by agent 1's state

    def outcome(q1, q2):
        return jnp.stack([q1 * q2, q1 * (1 - q2), (1 - q1) * q2, (1 - q1) * (1 - q2)], -1)

    return outcome(p1[0], p2[0]), outcome(p1[1:], p2[1:])


def ipd_exact_return(theta1, theta2, steps, gamma=IPD_GAMMA):
    """The exact expected discounted returns ``(E[R1], E[R2])`` of ``steps`` rounds.

    Propagates the distribution of the joint state (the start, then the four joint actions)
    through the rounds, with probabilities written with ``jax.nn.sigmoid``; no sampling and
    nothing from ``jax_scg``. Differentiable: ``jax.grad`` and mixed second derivatives of it
    are the references for the estimates of :func:`ipd_objective`.

    Args:
      theta1: agent 1's logits.
      theta2: agent 2's logits.
      steps: rounds.
      gamma: the discount.

    Returns:
      An array of shape ``(2,)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> ipd_exact_return(jnp.full(5, 30.0), jnp.full(5, 30.0), 2, gamma=0.5).tolist()
      [-1.5, -1.5]
    """
    first, transition = _ipd_chain(theta1, theta2)
    payoffs = jnp.asarray(IPD_PAYOFFS, first.dtype)

    def body(joint, _):
        return joint @ transition, joint @ payoffs

    _, expected = lax.scan(body, first, None, length=steps)  # (steps, 2)
    return (gamma ** jnp.arange(steps, dtype=first.dtype)) @ expected


def ipd_state_values(theta1, theta2, gamma=IPD_GAMMA, steps=None):
    """Each agent's exact expected discounted return from each of its states.

    Over ``steps`` rounds from the state on, or forever (``steps=None``: ``V = (I - gamma
    P)^-1 P r`` over the four joint states, and the start's value from the first round's
    distribution). A baseline for :func:`ipd_objective` (over 150 rounds with ``gamma =
    0.96`` the infinite horizon is close: ``0.96**150 ≈ 0.002``).

    Args:
      theta1: agent 1's logits.
      theta2: agent 2's logits.
      gamma: the discount.
      steps: the horizon in rounds, or None for an infinite one.

    Returns:
      ``(values1, values2)``, five values each, each in the agent's own states.

    Examples:
      >>> import jax.numpy as jnp
      >>> v1, v2 = ipd_state_values(jnp.full(5, -30.0), jnp.full(5, -30.0), gamma=0.5)
      >>> v1.tolist()  # both always defect: -2 per round, summed with discount 1/2
      [-4.0, -4.0, -4.0, -4.0, -4.0]
      >>> ipd_state_values(jnp.full(5, -30.0), jnp.full(5, -30.0), 0.5, steps=2)[1].tolist()
      [-3.0, -3.0, -3.0, -3.0, -3.0]
    """
    first, transition = _ipd_chain(theta1, theta2)
    payoffs = jnp.asarray(IPD_PAYOFFS, first.dtype)
    if steps is None:
        eye = jnp.eye(4, dtype=first.dtype)
        later = jnp.linalg.solve(eye - gamma * transition, transition @ payoffs)  # (4, 2)
        start = first @ (payoffs + gamma * later)  # (2,)
    else:
        # h rounds to go: V_h = P (r + gamma V_{h-1}), V_0 = 0; the start's from V_{steps-1}
        step = lambda v, _: (transition @ (payoffs + gamma * v), None)
        before = lax.scan(step, jnp.zeros_like(payoffs), None, length=steps - 1)[0]
        later = transition @ (payoffs + gamma * before)
        start = first @ (payoffs + gamma * before)
    joint = jnp.concatenate([start[None], later])  # (5, 2), agent 1's states
    return joint[:, 0], joint[jnp.array(IPD_SWAP), 1]


def lola_dice_grad(
    theta1,
    theta2,
    key,
    *,
    lookaheads=1,
    inner_lr=0.3,
    steps,
    batch,
    gamma=IPD_GAMMA,
    values=None,
):
    """Agent 1's LOLA-DiCE gradient: an estimate of ``d/dθ1 E[R1](θ1, θ2'(θ1))``.

    Agent 1 anticipates ``lookaheads`` naive learning steps of agent 2,
    ``θ2 ← θ2 + inner_lr · ĝ2`` with ``ĝ2 = scg.grad`` of agent 2's :func:`ipd_objective`
    with respect to ``θ2``, each on fresh episodes; then differentiates its own objective at
    ``(θ1, θ2')``, on new episodes, with respect to ``θ1``, through ``θ2'``. The whole
    computation is one ``scg.grad`` of a function that calls ``scg.grad``: the derivative
    through the look-ahead is the inner estimate's derivative in ``θ1``, an unbiased
    estimate of ``∂²E[R2]/∂θ1∂θ2``, which is what makes DiCE necessary here (Foerster et al.
    2018). The estimate is in the direction of ascent of ``E[R1]``. With ``lookaheads=0`` it
    is agent 1's naive gradient.

    It is **not** unbiased for the exact LOLA gradient (:func:`lola_exact_grad`): ``θ2'`` is
    a random variable, and the outer objective's gradient is not linear in it.

    Agent 2's LOLA gradient is ``lola_dice_grad(theta2, theta1, ...)`` (the game is symmetric
    once the roles are swapped; ``values`` swapped too).

    Args:
      theta1: agent 1's logits (differentiated).
      theta2: agent 2's logits.
      key: a PRNG key (split into one key per look-ahead and one for the outer objective).
      lookaheads: the number of anticipated learning steps of agent 2.
      inner_lr: agent 2's anticipated learning rate.
      steps: rounds per episode.
      batch: episodes per estimate.
      gamma: the discount.
      values: optional ``(values1, values2)``, each agent's state values, used as baselines
        (agent 2's in the look-ahead, agent 1's in the outer objective); either may be None.

    Returns:
      An array like ``theta1``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> g = lola_dice_grad(jnp.zeros(5), jnp.zeros(5), jax.random.key(0), steps=3, batch=2)
      >>> g.shape
      (5,)
    """
    values1, values2 = (None, None) if values is None else values
    common = dict(steps=steps, batch=batch, gamma=gamma)
    inner = scg.grad(
        lambda t1, t2, k: ipd_objective(t1, t2, k, agent=2, values=values2, **common),
        argnums=1,
    )

    def outer(t1, key):
        keys = jax.random.split(key, lookaheads + 1)
        t2 = theta2
        for k in keys[:-1]:
            t2 = t2 + inner_lr * inner(t1, t2, k)
        return ipd_objective(t1, t2, keys[-1], agent=1, values=values1, **common)

    return scg.grad(outer)(theta1, key)


def lola_exact_grad(theta1, theta2, *, lookaheads=1, inner_lr=0.3, steps, gamma=IPD_GAMMA):
    """The exact LOLA gradient that :func:`lola_dice_grad` estimates (with bias).

    The same look-ahead with exact gradients of :func:`ipd_exact_return`:
    ``θ2' = θ2 + inner_lr · ∂E[R2]/∂θ2`` (``lookaheads`` times), then
    ``d/dθ1 E[R1](θ1, θ2'(θ1))``.

    Examples:
      >>> import jax.numpy as jnp
      >>> naive = lola_exact_grad(jnp.zeros(5), jnp.zeros(5), lookaheads=0, steps=3)
      >>> bool(jnp.allclose(naive, jax.grad(lambda t: ipd_exact_return(t, jnp.zeros(5), 3)[0])(
      ...     jnp.zeros(5))))
      True
    """

    def outer(t1):
        t2 = theta2
        for _ in range(lookaheads):
            t2 = t2 + inner_lr * jax.grad(lambda b: ipd_exact_return(t1, b, steps, gamma)[1])(t2)
        return ipd_exact_return(t1, t2, steps, gamma)[0]

    return jax.grad(outer)(theta1)
