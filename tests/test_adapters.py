"""NumPyro and distrax distributions passed to ``scg.sample`` directly (``has_rsample`` gives the
reparameterisation), checked against exact gradients and against the built-in distributions.
(Away from logits exactly 0, where NumPyro 0.22's Bernoulli(logits=) log-prob gradient is
wrong.)"""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from helpers import assert_mean_close, keys, mc

import jax_scg as scg
from jax_scg import distributions as D
from jax_scg import examples

MIXED = next(m for m in examples.ALL if m.name == "mixed")


def mixed_numpyro(theta, key, logits=False):
    k1, k2 = jax.random.split(key)
    first = (
        nd.Bernoulli(logits=theta[0]) if logits else nd.Bernoulli(probs=jax.nn.sigmoid(theta[0]))
    )
    x = scg.sample(k1, first).astype(theta.dtype)
    y = scg.sample(k2, nd.Normal(theta[1] * x, 1.0))  # pathwise: has_rsample
    return (y - 1.0) ** 2 + 3.0 * x


def test_numpyro_sites_give_unbiased_gradients_and_hessians():
    for logits in (False, True):
        fn = lambda t, k: mixed_numpyro(t, k, logits)  # noqa: B023, E731
        assert_mean_close(
            mc(scg.grad(fn), MIXED.theta, seed=601 + logits, n=20_000),
            jax.grad(MIXED.exact)(MIXED.theta),
        )
    hessians = mc(jax.hessian(scg.surrogate(mixed_numpyro)), MIXED.theta, seed=603, n=20_000)
    assert_mean_close(hessians, jax.hessian(MIXED.exact)(MIXED.theta))


def test_numpyro_sites_match_the_built_in_ones():
    theta = jnp.array([0.3, -0.4, 1.2])
    pairs = [
        (nd.Normal(theta[0], 2.0), D.Normal(theta[0], 2.0), "pathwise"),
        (nd.Bernoulli(logits=theta[1]), D.Bernoulli(logits=theta[1]), "score_function"),
        (nd.Categorical(logits=theta), D.Categorical(logits=theta), "score_function"),
        (nd.Gamma(2.0, theta[2]), D.Gamma(2.0, theta[2]), "pathwise"),
    ]
    for theirs, ours, estimator in pairs:
        g = scg.graph(lambda t, k, d=theirs: jnp.sum(scg.sample(k, d) * 1.0))(
            theta, jax.random.key(0)
        )
        assert g.sites[0].estimator == estimator, (theirs, g.sites[0])
        value = ours.sample(jax.random.key(1))
        np.testing.assert_allclose(theirs.log_prob(value), ours.log_prob(value), rtol=1e-5)


def test_enumerate_a_numpyro_categorical():
    values = jnp.array([1.0, -2.0, 0.5])

    def fn(theta, key):
        return values[scg.sample(key, nd.Categorical(logits=theta), estimator="enumerate")] ** 2

    theta = jnp.array([0.1, 0.2, -0.3])
    exact = lambda t: jnp.sum(jax.nn.softmax(t) * values**2)  # noqa: E731
    for key in keys(604, 2):
        np.testing.assert_allclose(scg.grad(fn)(theta, key), jax.grad(exact)(theta), rtol=1e-5)


def mixed_distrax(theta, key):
    k1, k2 = jax.random.split(key)
    x = scg.sample(k1, distrax.Bernoulli(logits=theta[0])).astype(theta.dtype)
    y = scg.sample(k2, distrax.Normal(theta[1] * x, 1.0))  # pathwise
    return (y - 1.0) ** 2 + 3.0 * x


def test_distrax_sites_give_unbiased_gradients():
    g = scg.graph(mixed_distrax)(MIXED.theta, jax.random.key(0))
    assert [s.estimator for s in g.sites] == ["score_function", "pathwise"]
    grads = mc(scg.grad(mixed_distrax), MIXED.theta, seed=605, n=20_000)
    assert_mean_close(grads, jax.grad(MIXED.exact)(MIXED.theta))
    value = jnp.asarray(1.0)
    np.testing.assert_allclose(
        distrax.Bernoulli(logits=0.3).log_prob(value), D.Bernoulli(logits=0.3).log_prob(value)
    )
