"""Numerically hard inputs real code hits: masked actions (-inf logits), saturated logits,
logits exactly 0, large Poisson rates. Estimates stay finite and unbiased."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import assert_mean_close, mc
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

N = 20_000
MASK = jnp.array([0.0, -jnp.inf, 0.0])
REWARD = jnp.array([1.0, 5.0, -2.0])


def masked_policy(theta, key):
    def body(total, k):
        a = scg.sample(k, D.Categorical(logits=theta + MASK))
        return total + REWARD[a] * (1.0 + theta[0]), None

    return lax.scan(body, 0.0, jax.random.split(key, 3))[0]


def masked_exact(theta):
    p = jax.nn.softmax(jnp.array([theta[0], theta[2]]))
    return 3 * (p[0] * REWARD[0] + p[1] * REWARD[2]) * (1.0 + theta[0])


def test_masked_actions_have_finite_unbiased_gradients_in_a_scan():
    theta = jnp.array([0.3, 0.7, -0.2])
    grads = mc(scg.grad(masked_policy), theta, seed=101, n=N)
    assert np.all(np.isfinite(grads))
    assert_mean_close(grads, jax.grad(masked_exact)(theta))
    hessians = mc(jax.hessian(scg.surrogate(masked_policy)), theta, seed=102, n=N)
    assert np.all(np.isfinite(hessians))
    assert_mean_close(hessians, jax.hessian(masked_exact)(theta))


def test_saturated_and_zero_logits():
    def fn(theta, key):
        x = scg.sample(key, D.Bernoulli(logits=theta))
        return jnp.sum((x - 0.3) ** 2)

    def exact(theta):
        p = jax.nn.sigmoid(theta)
        return jnp.sum(p * 0.49 + (1 - p) * 0.09)

    theta = jnp.array([-50.0, 0.0, 50.0])
    grads = mc(scg.grad(fn), theta, seed=103, n=N)
    assert np.all(np.isfinite(grads))
    assert_mean_close(grads, jax.grad(exact)(theta))
    hessians = mc(jax.hessian(scg.surrogate(fn)), theta, seed=104, n=N)
    assert_mean_close(hessians, jax.hessian(exact)(theta))


def test_large_poisson_rates_give_finite_score_function_gradients():
    def fn(log_rate, key):
        n = scg.sample(key, D.Poisson(jnp.exp(log_rate)))
        return n.astype(jnp.float32) / 1e4

    grads = mc(scg.grad(fn), jnp.log(1e4), seed=105, n=N)
    assert np.all(np.isfinite(grads))
    assert_mean_close(grads, 1.0)  # d/d log λ of E[n]/1e4 = λ/1e4
