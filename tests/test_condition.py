"""``scg.condition``: plant values at named sites (replay; exact estimator moments)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_scg as scg
from jax_scg import distributions as D

sig = jax.nn.sigmoid


def chain(theta, key):
    k1, k2 = jax.random.split(key)
    x = scg.sample(k1, D.Bernoulli(logits=theta[0]), name="x")
    y = scg.sample(k2, D.Bernoulli(logits=theta[1] + x), name="y")
    return (x + 2.0 * y - 0.5) ** 2 + x * theta[1]


def chain_exact(theta):
    total = 0.0
    for x, y in itertools.product([0.0, 1.0], repeat=2):
        px, py = sig(theta[0]), sig(theta[1] + x)
        w = (px if x else 1 - px) * (py if y else 1 - py)
        total += w * ((x + 2.0 * y - 0.5) ** 2 + x * theta[1])
    return total


THETA = jnp.array([0.4, -0.7])


def exact_moments(fn, theta):
    """Exact mean and variance of scg.grad(fn) by enumerating the planted values."""
    grads, weights = [], []
    for x, y in itertools.product([0.0, 1.0], repeat=2):
        px, py = sig(theta[0]), sig(theta[1] + x)
        weights.append((px if x else 1 - px) * (py if y else 1 - py))
        conditioned = scg.condition(fn, {"x": x, "y": y})
        grads.append(scg.grad(conditioned)(theta, jax.random.key(0)))
    w, g = jnp.array(weights), jnp.stack(grads)
    mean = w @ g
    return mean, w @ (g - mean) ** 2


def test_planted_values_replay_the_program():
    key = jax.random.key(1)
    assert float(scg.condition(chain, {"x": 1.0, "y": 0.0})(THETA, key)) == pytest.approx(
        0.25 + THETA[1]
    )
    # Planting the values a key draws reproduces that key's value and estimate exactly.
    k1, k2 = jax.random.split(key)
    x = D.Bernoulli(logits=THETA[0]).sample(k1)
    y = D.Bernoulli(logits=THETA[1] + x).sample(k2)
    replay = scg.condition(chain, {"x": x, "y": y})
    np.testing.assert_array_equal(replay(THETA, key), chain(THETA, key))
    np.testing.assert_allclose(scg.grad(replay)(THETA, key), scg.grad(chain)(THETA, key))


def test_exact_expectation_of_the_estimator_equals_the_exact_gradient():
    mean, variance = exact_moments(chain, THETA)
    np.testing.assert_allclose(mean, jax.grad(chain_exact)(THETA), rtol=1e-5)
    assert np.all(np.asarray(variance) > 0)


def test_exact_variances_show_what_a_baseline_buys():
    def with_baseline(theta, key):
        k1, k2 = jax.random.split(key)
        x = scg.sample(k1, D.Bernoulli(logits=theta[0]), name="x", baseline=1.5)
        y = scg.sample(k2, D.Bernoulli(logits=theta[1] + x), name="y", baseline=2.0 * x + 1.0)
        return (x + 2.0 * y - 0.5) ** 2 + x * theta[1]

    mean, variance = exact_moments(with_baseline, THETA)
    _, plain_variance = exact_moments(chain, THETA)
    np.testing.assert_allclose(mean, jax.grad(chain_exact)(THETA), rtol=1e-5)
    assert np.all(np.asarray(variance) < np.asarray(plain_variance))


def test_condition_composes_with_jit_vmap_and_nesting():
    values = jnp.array([0.0, 1.0])
    grads = jax.jit(
        jax.vmap(
            lambda v: scg.grad(scg.condition(chain, {"x": v, "y": 1.0}))(THETA, jax.random.key(0))
        )
    )(values)
    for v, g in zip(values, grads):
        eager = scg.grad(scg.condition(scg.condition(chain, {"y": 1.0}), {"x": v}))
        np.testing.assert_allclose(g, eager(THETA, jax.random.key(0)), rtol=1e-6)
    # Only some sites planted: the others are drawn.
    partly = scg.condition(chain, {"x": 1.0})
    assert set(
        np.unique(jax.vmap(partly, (None, 0))(THETA, jax.random.split(jax.random.key(2), 64)))
    ) <= {float((1.0 + 2.0 * y - 0.5) ** 2 + THETA[1]) for y in (0.0, 1.0)}


def test_condition_misuse():
    with pytest.raises(ValueError, match=r"(?s)\['z'\].*no sample call with that name"):
        scg.condition(chain, {"z": 1.0})(THETA, jax.random.key(0))
    with pytest.raises(ValueError, match=r"(?s)'x'.*planted shape \(2,\).*draws shape \(\)"):
        scg.condition(chain, {"x": jnp.zeros(2)})(THETA, jax.random.key(0))

    def branching(theta, key):
        return scg.sample(key, D.Bernoulli(logits=theta[0]), name="b", estimator="enumerate")

    with pytest.raises(scg.SiteError, match=r"(?s)'b'.*evaluates several values"):
        scg.condition(branching, {"b": 1.0})(THETA, jax.random.key(0))
