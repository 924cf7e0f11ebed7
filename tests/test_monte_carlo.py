"""scg.monte_carlo: statistics equal NumPy's on the same estimates, chunked or not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import keys

import jax_scg as scg
from jax_scg import distributions as D


def estimator(key):
    """A pytree estimate with a tuple inside, an integer leaf and a constant coordinate."""
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (3,)) * jnp.array([1.0, 2.0, 0.0]) + 1.0
    return {"a": (x, jax.random.bernoulli(k2).astype(jnp.int32)), "b": jnp.sum(x)}


def numpy_statistics(samples):
    samples = np.asarray(samples, np.float64)
    n = samples.shape[0]
    return samples.mean(0), samples.var(0, ddof=1), samples.std(0, ddof=1) / np.sqrt(n)


@pytest.mark.parametrize("chunk_size", [None, 64, 37, 1])
def test_statistics_equal_numpy_on_the_same_estimates(chunk_size):
    ks = keys(15000, 300)
    samples = jax.vmap(estimator)(ks)
    result = scg.monte_carlo(estimator, ks, chunk_size=chunk_size)
    assert result.count == 300
    for got_mean, got_var, got_se, s in zip(
        jax.tree.leaves(result.mean),
        jax.tree.leaves(result.variance),
        jax.tree.leaves(result.standard_error),
        jax.tree.leaves(samples),
    ):
        mean, var, se = numpy_statistics(s)
        np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_var, var, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got_se, se, rtol=1e-4, atol=1e-7)
    assert jax.tree.structure(result.mean) == jax.tree.structure(samples)


def test_uneven_chunks_compile_once():
    traces = []

    def counted(key):
        traces.append(None)
        return jax.random.normal(key)

    scg.monte_carlo(counted, keys(15001, 100), chunk_size=30)  # chunks of 30, 30, 30, 10
    assert len(traces) == 1


def test_z_scores_against_exact():
    ks = keys(15002, 500)
    result = scg.monte_carlo(estimator, ks, exact={"a": (1.0, 0.5), "b": 3.0})
    samples = np.asarray(jax.vmap(estimator)(ks)["a"][0], np.float64)
    mean, _, se = numpy_statistics(samples)
    z = result.z["a"][0]
    np.testing.assert_allclose(z[:2], (mean[:2] - 1.0) / se[:2], rtol=1e-4)
    assert z[2] == 0.0  # zero variance and equal to exact
    wrong = scg.monte_carlo(estimator, ks, exact={"a": (2.0, 0.5), "b": 3.0})
    assert wrong.z["a"][0][2] == -np.inf  # zero variance but wrong: infinitely many SE
    assert wrong.max_abs_z == np.inf
    with pytest.raises(ValueError, match="exact="):
        _ = scg.monte_carlo(estimator, ks).max_abs_z


def test_gradient_estimate_against_enumeration():
    def loss(theta, key):
        k1, k2 = jax.random.split(key)
        x = scg.sample(k1, D.Bernoulli(logits=theta[0]))
        y = scg.sample(k2, D.Bernoulli(logits=theta[1] * x))
        return (x + 2 * y - 1.5) ** 2

    def exact_expectation(theta):
        total = 0.0
        for x in (0.0, 1.0):
            for y in (0.0, 1.0):
                p = D.Bernoulli(logits=theta[0]).log_prob(x)
                p = p + D.Bernoulli(logits=theta[1] * x).log_prob(y)
                total = total + jnp.exp(p) * (x + 2 * y - 1.5) ** 2
        return total

    theta = jnp.array([0.3, -0.7])
    exact = jax.grad(exact_expectation)(theta)
    result = scg.monte_carlo(
        lambda k: scg.grad(loss)(theta, k), keys(15003, 20_000), chunk_size=5000, exact=exact
    )
    assert result.max_abs_z < 5.5
    assert np.all(result.standard_error > 0)


def test_legacy_uint32_keys():
    ks = jax.random.split(jax.random.PRNGKey(15004), 50)
    result = scg.monte_carlo(lambda k: jax.random.uniform(k), ks, chunk_size=20)
    samples = np.asarray(jax.vmap(lambda k: jax.random.uniform(k))(ks), np.float64)
    np.testing.assert_allclose(result.mean, samples.mean(), rtol=1e-6)


def test_progress_line(capsys):
    scg.monte_carlo(lambda k: jax.random.uniform(k), keys(15005, 10), chunk_size=4, progress=True)
    err = capsys.readouterr().err
    assert "4/10" in err and "10/10" in err


@pytest.mark.parametrize(
    "n, chunk_size, message", [(1, None, "at least two keys"), (10, 0, "chunk_size")]
)
def test_errors(n, chunk_size, message):
    with pytest.raises(ValueError, match=message):
        scg.monte_carlo(lambda k: jax.random.uniform(k), keys(15006, n), chunk_size=chunk_size)
