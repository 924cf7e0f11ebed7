"""Gumbel-softmax and straight-through estimators: biased by design, so each is checked
against its *own* exact expectation (computed by quadrature over the uniform noise), and the
straight-through forward values against exact samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_mean_close, keys, mc
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

N = 20_000
TAU = 0.7
TARGET = 0.45
# Midpoint rule over the uniform noise u of a Bernoulli draw: b = 1[u < σ(l)].
U = (np.arange(200_000) + 0.5) / 200_000


def cost(y):
    return (y - TARGET) ** 2


def relaxed_value(logit, u):
    return jax.nn.sigmoid((logit - (jnp.log(u) - jnp.log1p(-u))) / TAU)


def gumbel_softmax_expected_gradient(logit):
    """d/dl E_u[f(relaxed(l, u))]: what the Gumbel-softmax estimator is unbiased for."""
    return jax.grad(lambda lg: jnp.mean(cost(relaxed_value(lg, U))))(logit)


def straight_through_expected_gradient(logit):
    """E_u[f'(hard) d relaxed/dl]: the straight-through estimator's expectation."""
    hard = (U < jax.nn.sigmoid(logit)).astype(jnp.float32)
    slope = jax.vmap(jax.grad(relaxed_value), in_axes=(None, 0))(logit, U)
    return jnp.mean(2 * (hard - TARGET) * slope)


def model(estimator):
    return lambda logit, key: cost(scg.sample(key, D.Bernoulli(logits=logit), estimator=estimator))


LOGIT = jnp.asarray(0.3)


def test_gumbel_softmax_is_unbiased_for_its_relaxed_objective():
    grads = mc(scg.grad(model(scg.estimators.gumbel_softmax(TAU))), LOGIT, seed=81, n=N)
    assert_mean_close(grads, gumbel_softmax_expected_gradient(LOGIT))


def test_straight_through_matches_its_expectation_and_draws_exact_samples():
    estimator = scg.estimators.straight_through(TAU)
    grads = mc(scg.grad(model(estimator)), LOGIT, seed=82, n=N)
    assert_mean_close(grads, straight_through_expected_gradient(LOGIT))
    for key in keys(83, 5):  # forward values are exact samples: the surrogate equals the loss
        plain = model("score_function")(LOGIT, key)
        np.testing.assert_allclose(scg.surrogate(model(estimator))(LOGIT, key), plain, rtol=1e-6)


def test_relaxations_are_biased_and_say_so():
    exact = jax.grad(lambda lg: jax.nn.sigmoid(lg) * cost(1.0) + jax.nn.sigmoid(-lg) * cost(0.0))
    assert abs(float(straight_through_expected_gradient(LOGIT) - exact(LOGIT))) > 0.01
    assert scg.estimators.gumbel_softmax().guarantee == "biased"


def test_relaxations_have_lower_variance_than_score_function_on_many_coupled_bits():
    # The cost couples 16 bits, so each bit's score multiplies the whole noisy cost.
    def fn(estimator):
        def loss(logits, key):
            y = scg.sample(key, D.Bernoulli(logits=logits), estimator=estimator)
            return (jnp.sum(y) - 5.0) ** 2

        return loss

    logits = jnp.linspace(-1.0, 1.0, 16)
    score = mc(scg.grad(fn("score_function")), logits, seed=84, n=N)
    for estimator in ("gumbel_softmax", "straight_through"):
        relaxed = mc(scg.grad(fn(estimator)), logits, seed=84, n=N)
        assert np.var(relaxed, 0).mean() < 0.5 * np.var(score, 0).mean()


def test_one_hot_relaxation_in_a_scan_under_vmap_and_second_order():
    def fn(logits, key):
        def body(total, k):
            y = scg.sample(k, D.OneHotCategorical(logits=logits), estimator="gumbel_softmax")
            return total + jnp.sum(y * jnp.arange(3.0)) ** 2, None

        return lax.scan(body, 0.0, jax.random.split(key, 4))[0]

    logits = jnp.array([0.2, -0.3, 0.5])
    grads = mc(scg.grad(fn), logits, seed=85, n=200)
    hessians = mc(jax.hessian(scg.surrogate(fn)), logits, seed=86, n=50)
    assert np.all(np.isfinite(grads)) and np.all(np.isfinite(hessians))
    y = scg.surrogate(lambda lg, k: jnp.sum(scg.sample(k, D.OneHotCategorical(logits=lg))))
    np.testing.assert_allclose(y(logits, jax.random.key(0)), 1.0, rtol=1e-6)


def test_straight_through_one_hot_draws_exact_samples():
    def fn(logits, key, estimator):
        y = scg.sample(key, D.OneHotCategorical(logits=logits), estimator=estimator)
        return jnp.sum(y * jnp.arange(3.0))

    logits = jnp.array([0.2, -0.3, 0.5])
    for key in keys(87, 5):
        exact = fn(logits, key, "score_function")
        relaxed = scg.surrogate(lambda lg, k: fn(lg, k, "straight_through"))(logits, key)
        np.testing.assert_allclose(relaxed, exact, rtol=1e-6)


def test_relaxation_of_an_unsupported_distribution():
    with pytest.raises(scg.SiteError, match=r"(?s)Categorical at .*OneHotCategorical"):
        scg.sample(
            jax.random.key(0), D.Categorical(logits=jnp.zeros(3)), estimator="gumbel_softmax"
        )
    with pytest.raises(ValueError, match="temperature must be > 0"):
        scg.estimators.gumbel_softmax(0.0)
