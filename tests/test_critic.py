"""Learned baselines (critics): ``critic_argnums`` returns the gradient that fits them.

The critic's gradient is that of ½ Σ (b − Q̂)² with Q̂ each site's downstream cost: checked key
by key against a hand-written actor-critic update (reward-to-go inside ``lax.scan``), for
per-element baselines, under jit and vmap, and by fitting a constant baseline to its optimum.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_mean_close, keys
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

STEPS = 5


def policy(theta, state):
    return D.Bernoulli(logits=theta[0] + theta[1] * state)


def value(psi, state):
    return psi[0] + psi[1] * state + psi[2] * state**2


def reward(state, a):
    return (a - 0.3 * state) ** 2 + 0.5 * a * state


def rollout(theta, psi, key):
    def body(state, k):
        a = scg.sample(k, policy(theta, state), baseline=value(psi, state))
        return 0.5 * state + a, reward(state, a)

    return lax.scan(body, 0.0, jax.random.split(key, STEPS))[1].sum()


def by_hand(theta, psi, key):
    """Hand-written actor-critic: (policy gradient, critic gradient) for one trajectory."""

    def body(state, k):
        a = policy(theta, state).sample(k)
        return 0.5 * state + a, (a, state, reward(state, a))

    _, (actions, states, rewards) = lax.scan(body, 0.0, jax.random.split(key, STEPS))
    to_go = jnp.cumsum(rewards[::-1])[::-1]

    def actor(theta):
        log_probs = jax.vmap(lambda s, a: policy(theta, s).log_prob(a))(states, actions)
        return jnp.sum(log_probs * (to_go - value(psi, states))) + rewards.sum()

    def critic(psi):
        return 0.5 * jnp.sum((value(psi, states) - to_go) ** 2)

    return jax.grad(actor)(theta), jax.grad(critic)(psi)


THETA = jnp.array([0.2, -0.4])
PSI = jnp.array([0.9, 0.7, -0.1])


@pytest.mark.parametrize("jit", [False, True])
def test_critic_gradient_matches_a_hand_written_actor_critic_key_by_key(jit):
    ours = scg.grad(rollout, critic_argnums=1)
    ours = jax.jit(ours) if jit else ours
    for key in keys(301, 4):
        (g, g_critic), (g_hand, g_critic_hand) = ours(THETA, PSI, key), by_hand(THETA, PSI, key)
        np.testing.assert_allclose(g, g_hand, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g_critic, g_critic_hand, rtol=1e-5, atol=1e-6)


def test_critic_option_leaves_the_policy_gradient_and_value_unchanged():
    key = jax.random.key(302)
    value, (g, _) = scg.value_and_grad(rollout, critic_argnums=1)(THETA, PSI, key)
    plain_value, plain_g = scg.value_and_grad(rollout)(THETA, PSI, key)
    np.testing.assert_array_equal(value, plain_value)
    np.testing.assert_allclose(g, plain_g, rtol=1e-6)
    assert value == rollout(THETA, PSI, key)


def test_critic_gradient_under_vmap_and_with_aux():
    def with_aux(theta, psi, key):
        return rollout(theta, psi, key), {"psi": psi}

    ks = keys(303, 6)
    grads = jax.vmap(scg.grad(with_aux, critic_argnums=1, has_aux=True), (None, None, 0))
    (g, g_critic), aux = grads(THETA, PSI, ks)
    assert g.shape == (6, 2) and g_critic.shape == (6, 3) and aux["psi"].shape == (6, 3)
    for i, key in enumerate(ks):
        g_hand, g_critic_hand = by_hand(THETA, PSI, key)
        np.testing.assert_allclose(g[i], g_hand, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g_critic[i], g_critic_hand, rtol=1e-5, atol=1e-6)


def test_per_element_critic_on_a_vector_site():
    # Three independent components, each with its own cost and its own baseline psi_i.
    def fn(theta, psi, key):
        x = scg.sample(key, D.Bernoulli(logits=theta), baseline=psi)
        return jnp.sum(jnp.array([1.0, 2.0, 3.0]) * x + x * theta)

    theta, psi = jnp.array([0.1, -0.3, 0.5]), jnp.array([0.2, 0.4, -0.6])
    for key in keys(304, 3):
        _, g_critic = scg.grad(fn, critic_argnums=1)(theta, psi, key)
        x = D.Bernoulli(logits=theta).sample(key)
        q_hat = jnp.array([1.0, 2.0, 3.0]) * x + x * theta
        np.testing.assert_allclose(g_critic, psi - q_hat, rtol=1e-6)


def test_fitting_a_constant_baseline_reaches_the_expected_downstream_cost():
    # Cost 1 + 2x, x ~ Bernoulli(1/2): the constant 1 is a cost node no site influences, so
    # Q̂ = 2x and the squared-error fit converges to E[Q̂] = 1, here the zero-variance baseline.
    def fn(theta, psi, key):
        return 1.0 + 2.0 * scg.sample(key, D.Bernoulli(logits=theta), baseline=psi)

    optimiser = optax.sgd(0.05)
    grads = jax.vmap(scg.grad(fn, critic_argnums=1), (None, None, 0))

    @jax.jit
    def step(psi, opt_state, key):
        _, g_critic = grads(0.0, psi, jax.random.split(key, 64))
        updates, opt_state = optimiser.update(g_critic.mean(), opt_state)
        return optax.apply_updates(psi, updates), opt_state

    psi = jnp.asarray(0.0)
    opt_state = optimiser.init(psi)
    for key in keys(305, 300):
        psi, opt_state = step(psi, opt_state, key)
    assert abs(float(psi) - 1.0) < 0.05
    g = jax.vmap(scg.grad(fn, critic_argnums=1), (None, None, 0))(0.0, psi, keys(306, 2000))[0]
    assert float(jnp.var(g)) < 0.01 * 0.25  # Var without a baseline: E[(x − ½)² 4x²] − ¼ = ¼


def test_critic_gradient_is_unbiased_for_the_expected_squared_error():
    # E[critic gradient] = ∇ψ E[½ Σ_t (V(s_t) − G_t)²], by exact enumeration of 5 steps.
    import itertools

    def expected_loss(psi):
        total = 0.0
        for actions in itertools.product([0.0, 1.0], repeat=STEPS):
            state, prob, rewards, states = 0.0, 1.0, [], []
            for a in actions:
                p = jax.nn.sigmoid(THETA[0] + THETA[1] * state)
                prob = prob * (p if a else 1 - p)
                states.append(state)
                rewards.append(reward(state, a))
                state = 0.5 * state + a
            to_go = jnp.cumsum(jnp.array(rewards)[::-1])[::-1]
            total += prob * 0.5 * jnp.sum((value(psi, jnp.array(states)) - to_go) ** 2)
        return total

    critic = lambda psi, key: scg.grad(rollout, critic_argnums=1)(THETA, psi, key)[1]
    samples = jax.jit(jax.vmap(critic, (None, 0)))(PSI, keys(307, 20_000))
    assert_mean_close(samples, jax.grad(expected_loss)(PSI))


def test_critic_misuse():
    with pytest.raises(ValueError, match="share"):
        scg.grad(rollout, argnums=(0, 1), critic_argnums=1)(THETA, PSI, jax.random.key(0))
    plain = lambda theta, psi, key: scg.sample(key, policy(theta, psi[0])) * 1.0
    with pytest.raises(ValueError, match="none of its sample calls has a baseline"):
        scg.grad(plain, critic_argnums=1)(THETA, PSI, jax.random.key(0))
