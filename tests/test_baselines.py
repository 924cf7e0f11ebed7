"""Baselines passed to ``scg.sample(..., baseline=b)`` (Mao et al. 2019 form).

Unbiased at first and second order, zero variance with the optimal constant baseline, lower
variance than without (first and second order), through scan, cond and vmap.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_mean_close, keys, mc
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

N = 20_000
sig = jax.nn.sigmoid


def two_site(theta, key, use_baseline=True):
    """x1 → x2 chain with costs f1(x1), f2(x1, x2); baselines: a constant and one of x1."""
    k1, k2 = jax.random.split(key)
    b1 = 4.5 if use_baseline else None
    x1 = scg.sample(k1, D.Bernoulli(logits=theta[0]), baseline=b1)
    b2 = (3.0 + 2.0 * x1) if use_baseline else None
    x2 = scg.sample(k2, D.Bernoulli(logits=theta[1] + x1), baseline=b2)
    return 2.0 + x1 + (3.0 + 2.0 * x1 + x2) ** 1.5


def two_site_exact(theta):
    total = 0.0
    for x1, x2 in itertools.product([0.0, 1.0], repeat=2):
        p1, p2 = sig(theta[0]), sig(theta[1] + x1)
        w = (p1 if x1 else 1 - p1) * (p2 if x2 else 1 - p2)
        total += w * (2.0 + x1 + (3.0 + 2.0 * x1 + x2) ** 1.5)
    return total


THETA = jnp.array([0.3, -0.5])


def test_baselines_keep_first_and_second_order_unbiased():
    grads = mc(scg.grad(two_site), THETA, seed=31, n=N)
    assert_mean_close(grads, jax.grad(two_site_exact)(THETA), what="gradient")
    hessians = mc(jax.hessian(scg.surrogate(two_site)), THETA, seed=32, n=N)
    assert_mean_close(hessians, jax.hessian(two_site_exact)(THETA), what="Hessian")


def test_baselines_leave_the_value_unchanged():
    for key in keys(33, 4):
        np.testing.assert_allclose(scg.surrogate(two_site)(THETA, key), two_site(THETA, key))


def test_baselines_lower_variance_at_first_and_second_order():
    without = lambda t, k: two_site(t, k, use_baseline=False)
    g_with = mc(scg.grad(two_site), THETA, seed=34, n=N)
    g_without = mc(scg.grad(without), THETA, seed=34, n=N)
    assert np.all(np.var(g_with, 0) < 0.5 * np.var(g_without, 0))
    h_with = mc(jax.hessian(scg.surrogate(two_site)), THETA, seed=35, n=N)
    h_without = mc(jax.hessian(scg.surrogate(without)), THETA, seed=35, n=N)
    assert np.all(np.var(h_with, 0) < 0.5 * np.var(h_without, 0))


def test_optimal_constant_baseline_gives_zero_variance():
    # One Bernoulli site, f(0) = 1, f(1) = 3, logits 0: the optimal baseline is 2, and then
    # every estimate is exactly dE/dθ = 2 σ'(0) = 0.5.
    def fn(theta, key, baseline=None):
        x = scg.sample(key, D.Bernoulli(logits=theta), baseline=baseline)
        return jnp.where(x > 0.5, 3.0, 1.0)

    optimal = mc(scg.grad(functools.partial(fn, baseline=2.0)), 0.0, seed=36, n=2_000)
    np.testing.assert_allclose(optimal, 0.5, rtol=1e-6)
    assert np.var(mc(scg.grad(fn), 0.0, seed=36, n=2_000)) > 0.5


def test_constant_summands_are_their_own_cost_nodes():
    # Written as 1 + 2x, the constant 1 is a cost no site influences: it gets no score, so
    # the optimal baseline for the remaining cost 2x is E[2x (x-p)²] / E[(x-p)²] = 1.
    fn = lambda t, k: 1.0 + 2.0 * scg.sample(k, D.Bernoulli(logits=t), baseline=1.0)
    np.testing.assert_allclose(mc(scg.grad(fn), 0.0, seed=42, n=2_000), 0.5, rtol=1e-6)


def test_value_baseline_in_a_scan_rollout():
    # V(s) = θ2 s + θ3 depends on parameters: its own gradient does not leak into the estimate.
    def rollout(theta, key, use_baseline=True):
        def body(state, k):
            value = theta[2] * state + theta[3]
            a = scg.sample(
                k,
                D.Bernoulli(logits=theta[0] + theta[1] * state),
                baseline=value if use_baseline else None,
            )
            return 0.5 * state + a, (a - 0.3 * state) ** 2 + 0.5 * a * state

        return lax.scan(body, 0.0, jax.random.split(key, 3))[1].sum()

    def exact(theta):
        total = 0.0
        for actions in itertools.product([0.0, 1.0], repeat=3):
            state, weight, ret = 0.0, 1.0, 0.0
            for a in actions:
                p = sig(theta[0] + theta[1] * state)
                weight = weight * (p if a else 1 - p)
                ret = ret + (a - 0.3 * state) ** 2 + 0.5 * a * state
                state = 0.5 * state + a
            total += weight * ret
        return total

    theta = jnp.array([0.2, -0.4, 0.7, 0.9])
    grads = mc(scg.grad(rollout), theta, seed=37, n=N)
    assert_mean_close(grads, jax.grad(exact)(theta))
    np.testing.assert_allclose(grads[:, 2:], 0.0, atol=1e-6)  # V's parameters get no gradient
    hessians = mc(jax.hessian(scg.surrogate(rollout)), theta, seed=38, n=N)
    assert_mean_close(hessians, jax.hessian(exact)(theta))
    plain = mc(scg.grad(lambda t, k: rollout(t, k, False)), theta, seed=37, n=N)
    assert np.all(np.var(grads[:, :2], 0) < np.var(plain[:, :2], 0))


def test_elementwise_baseline_on_a_vector_site_and_under_vmap():
    c = jnp.array([0.2, 0.9, 0.5])

    def fn(theta, key):
        x = scg.sample(key, D.Bernoulli(logits=theta), baseline=jnp.array([0.1, 0.5, 0.3]))
        return jnp.sum((x - c) ** 2)

    def fn_vmapped(theta, key):
        draw = lambda k, logit, b: scg.sample(k, D.Bernoulli(logits=logit), baseline=b)
        x = jax.vmap(draw)(jax.random.split(key, 3), theta, jnp.array([0.1, 0.5, 0.3]))
        return jnp.sum((x - c) ** 2)

    def exact(theta):
        p = sig(theta)
        return jnp.sum(p * (1 - c) ** 2 + (1 - p) * c**2)

    theta = jnp.array([0.4, -1.0, 0.2])
    for fn_, seed in ((fn, 39), (fn_vmapped, 40)):
        assert_mean_close(mc(scg.grad(fn_), theta, seed=seed, n=N), jax.grad(exact)(theta))
        hess = mc(jax.hessian(scg.surrogate(fn_)), theta, seed=seed + 100, n=N)
        assert_mean_close(hess, jax.hessian(exact)(theta))


def test_baseline_inside_cond_branch():
    def fn(theta, key):
        k1, k2 = jax.random.split(key)
        x = scg.sample(k1, D.Bernoulli(logits=theta[0]))
        inner = lambda k: 2.0 * scg.sample(k, D.Bernoulli(logits=theta[1]), baseline=1.0)
        return lax.cond(x > 0.5, inner, lambda k: 0.5, k2) + x

    def exact(theta):
        p0, p1 = sig(theta[0]), sig(theta[1])
        return p0 * (2.0 * p1 + 1.0) + (1 - p0) * 0.5

    theta = jnp.array([0.3, -0.2])
    assert_mean_close(mc(scg.grad(fn), theta, seed=41, n=N), jax.grad(exact)(theta))


def test_baseline_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"(?s)Bernoulli at test_baselines\.py.*shape \(2,\)"):
        scg.sample(jax.random.key(0), D.Bernoulli(logits=jnp.zeros(3)), baseline=jnp.zeros(2))


def test_baseline_on_a_pathwise_site():
    fn = lambda t, k: scg.sample(k, D.Normal(t, 1.0), baseline=1.0, name="y") ** 2
    with pytest.raises(scg.SiteError, match=r"(?s)'y'.*pathwise or relaxed site"):
        scg.grad(fn)(0.5, jax.random.key(0))


def test_state_value_baselines_match_a_hand_written_actor_critic_estimator():
    # Σ_t ∇ log π(a_t | s_t) (Σ_{t' >= t} r_t' - V(s_t)), written by hand, key by key.
    steps = 4

    def policy(theta, state):
        return D.Bernoulli(logits=theta[0] + theta[1] * state)

    def value(theta, state):
        return theta[2] * state + theta[3]

    def reward(state, a):
        return (a - 0.3 * state) ** 2 + 0.5 * a * state

    def ours(theta, key):
        def body(state, k):
            a = scg.sample(k, policy(theta, state), baseline=value(theta, state))
            return 0.5 * state + a, reward(state, a)

        return lax.scan(body, 0.0, jax.random.split(key, steps))[1].sum()

    def actor_critic(theta, key):
        def body(state, k):
            a = policy(theta, state).sample(k)
            return 0.5 * state + a, (a, state, reward(state, a))

        _, (actions, states, rewards) = lax.scan(body, 0.0, jax.random.split(key, steps))
        to_go = jnp.cumsum(rewards[::-1])[::-1]
        advantages = lax.stop_gradient(to_go - value(theta, states))
        log_probs = jax.vmap(lambda s, a: policy(theta, s).log_prob(a))(states, actions)
        return jnp.sum(log_probs * advantages)

    theta = jnp.array([0.2, -0.4, 0.7, 0.9])
    for key in keys(43, 5):
        np.testing.assert_allclose(
            scg.grad(ours)(theta, key)[:2], jax.grad(actor_critic)(theta, key)[:2], rtol=1e-5
        )
    ours_grads = mc(scg.grad(ours), theta, seed=44, n=N)
    by_hand = mc(jax.grad(actor_critic), theta, seed=44, n=N)
    np.testing.assert_allclose(np.var(ours_grads[:, :2], 0), np.var(by_hand[:, :2], 0), rtol=1e-4)
